# Hello world: a batch task that writes one line to stdout and one to stderr, then exits 0.
# Read them back with `nomad alloc logs <alloc-id>` and `nomad alloc logs -stderr <alloc-id>`.
#
# expect: complete exit_code=0
# expect-stdout: Hello from bpfexec
# expect-stderr: this line went to stderr

job "hello" {
  type = "batch"

  group "hello" {
    # Fail fast: the demo wants to see the task's own exit, not a retry.
    restart {
      attempts = 0
      mode     = "fail"
    }

    reschedule {
      attempts  = 0
      unlimited = false
    }

    task "hello" {
      driver = "bpfexec"

      config {
        command = "/bin/sh"
        args    = ["-c", "echo \"Hello from bpfexec: task $NOMAD_TASK_NAME of job $NOMAD_JOB_NAME\"; echo 'this line went to stderr' >&2"]
      }

      resources {
        cpu    = 100
        memory = 64
      }
    }
  }
}
