# A small process tree, as the probes see it and as the trace draws it: the task's shell starts
# two workers in the background, each runs a few commands, and the shell waits for both. The
# task's trace has one span per process, parented by lineage (sh -> sh -> sleep / date), with
# each exec as a span event; while it runs, GET /v1/tree on the driver's http_addr shows the
# live tree, and bpfexec_task_execs_total / bpfexec_task_forks_total count them.
#
# expect: complete exit_code=0
# expect-stdout: worker a done
# expect-stdout: worker b done

job "process-tree" {
  type = "batch"

  group "tree" {
    restart {
      attempts = 0
      mode     = "fail"
    }

    task "tree" {
      driver = "bpfexec"

      config {
        command = "/bin/sh"
        args = ["-c", <<-EOT
          worker() { date +"worker $1 started at %T"; sleep 2; echo "worker $1 done"; }
          worker a &
          worker b &
          wait
        EOT
        ]
      }

      resources {
        cpu    = 100
        memory = 32
      }
    }
  }
}
