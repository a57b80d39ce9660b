# A task killed from outside, and the killer named. Two tasks share the group: "worker" waits,
# "reaper" (with the host's pid namespace, so it can see the worker) kills it with pkill after
# two seconds. Nomad alone reports "Exit Code: 0, Signal: 15"; bpfexec names the sender: pid,
# command, uid, and that it is a process of task "reaper" in this allocation. The same goes to
# bpfexec_task_signal_kills_total{victim="main", sender_class="other_allocation"} and to the
# worker's trace (status Error, error.type=signaled, bpfexec.killed_by.* attributes).
#
# expect: failed
# expect-stdout: worker waiting
# expect-stdout: reaper sending SIGTERM
# expect-event: Killed by SIGTERM from pid
# expect-event: a process of task "reaper" in allocation

job "killed-from-outside" {
  type = "batch"

  group "pair" {
    restart {
      attempts = 0
      mode     = "fail"
    }

    # The failure is the point: Nomad must not place the pair again (a batch job's default is
    # one reschedule after 5 s).
    reschedule {
      attempts  = 0
      unlimited = false
    }

    task "worker" {
      driver = "bpfexec"

      config {
        command = "/bin/sh"
        # The loop runs under a name unique to this allocation, for the reaper to find.
        args = ["-c", "echo worker waiting; exec /bin/sh -c 'while true; do sleep 1; done' worker-$NOMAD_ALLOC_ID"]
      }

      resources {
        cpu    = 100
        memory = 32
      }
    }

    task "reaper" {
      driver = "bpfexec"

      config {
        command  = "/bin/sh"
        args     = ["-c", "sleep 2; echo 'reaper sending SIGTERM'; pkill -TERM -f \"worker-$NOMAD_ALLOC_ID\""]
        pid_mode = "host"
      }

      resources {
        cpu    = 100
        memory = 32
      }
    }
  }
}
