# Raw mode (`isolation = "none"`): like raw_exec, no namespaces and no private root (the task
# sees the host's processes and files, and host paths in NOMAD_*_DIR), but still the task's
# user (root when unset, as in raw_exec; `nobody` here) and the task's cgroup with its limits.
# Refused unless the operator sets `allow_unisolated = true` in the plugin config (the demo
# agent does).
#
# expect: complete exit_code=0
# expect-stdout: uid=65534(nobody)
# expect-stdout: host processes visible:

locals {
  script = <<-EOT
    echo "== id"
    id
    echo "== host processes visible: $(ps -e --no-headers | wc -l)"
    echo "== ls / (the host's root)"
    echo $(ls /)
    echo "== NOMAD_ALLOC_DIR=$NOMAD_ALLOC_DIR"
    echo "== cgroups of this shell (v1 memory, cpu, cpuset; v2 unified)"
    grep -E ":(memory|cpu|cpuset):|^0::" /proc/self/cgroup
  EOT
}

job "raw-mode" {
  type = "batch"

  group "raw" {
    restart {
      attempts = 0
      mode     = "fail"
    }

    reschedule {
      attempts  = 0
      unlimited = false
    }

    task "raw" {
      driver = "bpfexec"
      user   = "nobody"

      config {
        command   = "/bin/sh"
        args      = ["-c", local.script]
        isolation = "none"
      }

      resources {
        cpu    = 100
        memory = 64
      }
    }
  }
}
