# What an isolated task sees (the default, `isolation = "full"`): it runs as `nobody`, in private
# pid and ipc namespaces (ps shows only its own processes; pid 1 is the task's bpfexec
# supervisor), on a read-only root assembled from bind mounts of the `chroot_env` paths plus
# /alloc, /local, /secrets and /tmp (nothing is copied or hard-linked), with exec's default
# capability set and no_new_privs. The script comes from a Nomad template rendered into local/.
#
# expect: complete exit_code=0
# expect-stdout: uid=65534(nobody)
# expect-stdout: CapEff:
# expect-stdout: NOMAD_ALLOC_DIR=/alloc
# expect-stdout: written by look-around

job "isolation" {
  type = "batch"

  group "isolation" {
    restart {
      attempts = 0
      mode     = "fail"
    }

    reschedule {
      attempts  = 0
      unlimited = false
    }

    task "look-around" {
      driver = "bpfexec"

      template {
        destination = "local/look-around.sh"
        data        = <<-EOT
          echo "== id"
          id
          echo "== ps -ef (private pid namespace: only this task's processes)"
          ps -ef
          echo "== ls / (the task's root)"
          echo $(ls /)
          echo "== capabilities and no_new_privs of this shell"
          grep -E '^(CapEff|NoNewPrivs)' /proc/self/status
          echo "== environment"
          echo "NOMAD_ALLOC_DIR=$NOMAD_ALLOC_DIR NOMAD_TASK_DIR=$NOMAD_TASK_DIR"
          echo "== the root is read-only; /alloc is shared with the group's other tasks"
          touch /cannot-write-here 2>&1 || true
          echo "written by $NOMAD_TASK_NAME" > /alloc/note.txt && cat /alloc/note.txt
        EOT
      }

      config {
        command = "/bin/sh"
        args    = ["${NOMAD_TASK_DIR}/look-around.sh"]
      }

      resources {
        cpu    = 100
        memory = 64
      }
    }
  }
}
