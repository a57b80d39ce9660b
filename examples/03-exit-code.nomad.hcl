# A task that fails with exit code 3: Nomad reports the allocation failed and the Terminated
# event carries the exact exit code.
#
# expect: failed exit_code=3
# expect-stderr: giving up with exit code 3

job "exit-code" {
  type = "batch"

  group "exit-code" {
    restart {
      attempts = 0
      mode     = "fail"
    }

    reschedule {
      attempts  = 0
      unlimited = false
    }

    task "fail" {
      driver = "bpfexec"

      config {
        command = "/bin/sh"
        args    = ["-c", "echo 'working...'; echo 'giving up with exit code 3' >&2; exit 3"]
      }

      resources {
        cpu    = 100
        memory = 64
      }
    }
  }
}
