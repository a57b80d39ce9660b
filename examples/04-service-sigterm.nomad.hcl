# A long-running service that traps SIGTERM. `nomad job stop` makes the driver send the task's
# kill_signal (SIGTERM here) to the task's process group; the trap cleans up and exits 0 well
# within kill_timeout, after which everything left would be SIGKILLed.
# The demo shows it running, then stops it.
#
# expect: running
# expect-stdout: service up
# expect-stdout: caught SIGTERM, cleaning up

locals {
  script = <<-EOT
    trap 'echo "caught SIGTERM, cleaning up"; sleep 1; echo "bye"; exit 0' TERM
    echo "service up (pid $$)"
    while true; do
      sleep 1 &
      wait $!
    done
  EOT
}

job "service-sigterm" {
  type = "service"

  group "service" {
    restart {
      attempts = 0
      mode     = "fail"
    }

    task "server" {
      driver       = "bpfexec"
      kill_signal  = "SIGTERM"
      kill_timeout = "10s"

      config {
        command = "/bin/sh"
        args    = ["-c", local.script]
      }

      resources {
        cpu    = 100
        memory = 64
      }
    }
  }
}
