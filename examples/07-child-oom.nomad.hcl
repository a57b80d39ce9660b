# A child process is OOM-killed while the task goes on. The task has 32 MB; its shell starts a
# perl that tries to allocate 200 MiB, the kernel's OOM killer picks perl, and the shell carries
# on and exits 0. Nomad alone would only see a clean exit: bpfexec reports the child's OOM kill
# as a task event while the task runs (victim pid, command, RSS, and that it was the cgroup's
# memory limit), counts it in bpfexec_task_oom_kills_total{victim="child"}, and marks the perl
# span of the task's trace as OOM-killed.
#
# expect: complete exit_code=0
# expect-stdout: perl ended with status 137
# expect-stdout: the task carries on
# expect-event: was OOM-killed (memory limit of cgroup

job "child-oom" {
  type = "batch"

  group "child-oom" {
    restart {
      attempts = 0
      mode     = "fail"
    }

    task "worker" {
      driver = "bpfexec"

      config {
        command = "/bin/sh"
        args = ["-c", <<-EOT
          /usr/bin/perl -e '$x = "a" x (200*1024*1024); print "survived\n"'
          echo "perl ended with status $?"
          sleep 1
          echo "the task carries on and exits 0"
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
