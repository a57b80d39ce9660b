# `signal_all_processes = true`: stop and `nomad alloc signal` reach every process of the task,
# not only the main process group. Here the main shell starts a daemon in its own session
# (setsid), which a process-group signal would miss; on `nomad job stop` both trap SIGTERM and
# report it. The demo shows it running, then stops it.
#
# expect: running
# expect-stdout: main pid
# expect-stdout: daemon (own session) caught SIGTERM
# expect-stdout: main caught SIGTERM

locals {
  script = <<-EOT
    setsid sh -c 'trap "echo \"daemon (own session) caught SIGTERM\"; exit 0" TERM; while true; do sleep 1 & wait $!; done' &
    trap 'echo "main caught SIGTERM"; wait; exit 0' TERM
    echo "main pid $$ started a daemon in its own session"
    while true; do
      sleep 1 &
      wait $!
    done
  EOT
}

job "signal-all" {
  type = "service"

  group "signal-all" {
    restart {
      attempts = 0
      mode     = "fail"
    }

    task "tree" {
      driver       = "bpfexec"
      kill_signal  = "SIGTERM"
      kill_timeout = "10s"

      config {
        command              = "/bin/sh"
        args                 = ["-c", local.script]
        signal_all_processes = true
      }

      resources {
        cpu    = 100
        memory = 64
      }
    }
  }
}
