//! The exit-reason taxonomy of a task (issue 4) and its mapping onto Nomad: `ExitResult.oom_killed`
//! plus a task event with a one-line message and annotations (`nomad alloc status` shows both).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::memcg::OomScope;
use super::signals::{code_description, signal_name};

/// How the task's main process ended, as its supervisor saw it (wait status).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MainExit {
    /// Exit code; for a signal death `128 + signal` (the supervisor's convention).
    pub exit_code: i32,
    /// Terminating signal, 0 when the process exited.
    pub signal: i32,
    pub core_dumped: bool,
    /// Set by a launcher that knows the exec itself failed (e.g. `ENOENT`), with its message.
    pub exec_error: Option<String>,
}

impl MainExit {
    #[must_use]
    pub fn new(exit_code: i32, signal: i32, core_dumped: bool) -> Self {
        Self {
            exit_code,
            signal,
            core_dumped,
            exec_error: None,
        }
    }
}

/// Who sent a signal, relative to the task that received it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "class", rename_all = "snake_case")]
pub enum SenderClass {
    /// The receiving process itself (`raise`, `abort`, `kill(getpid())`).
    SameProcess,
    /// Another process of the same task.
    SameTask,
    /// The bpfexec plugin or the task's supervisor (task stop, `kill_timeout` escalation).
    Driver,
    /// A process of another Nomad task.
    OtherAllocation { alloc_id: String, task_name: String },
    /// A process on the host that belongs to no task.
    Host,
    /// The kernel itself: faults, OOM killer, timers, resource limits.
    Kernel,
}

impl SenderClass {
    /// Snake-case name used in annotations.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Self::SameProcess => "same_process",
            Self::SameTask => "same_task",
            Self::Driver => "driver",
            Self::OtherAllocation { .. } => "other_allocation",
            Self::Host => "host",
            Self::Kernel => "kernel",
        }
    }
}

/// The sender of a signal as the probes saw it (`signal_generate` runs in the sender's context).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sender {
    pub pid: u32,
    pub comm: String,
    pub uid: Option<u32>,
    pub class: SenderClass,
    /// `si_code` of the signal.
    pub code: i32,
}

/// Why a task ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum ExitReason {
    /// The main process called `exit`.
    Exited { code: i32 },
    /// The main process died of a signal.
    Signaled {
        signal: i32,
        /// `None` when the generation of the signal was not observed.
        sender: Option<Sender>,
        core_dumped: bool,
        /// SIGKILL from the driver after an earlier stop signal from the driver: the
        /// `kill_timeout` escalation.
        escalation_after: Option<i32>,
    },
    /// The task ended because of an OOM kill.
    OomKilled {
        scope: OomScope,
        victim_pid: u32,
        victim_comm: String,
        /// Resident memory of the victim at the kill (anon + file + shmem), KiB.
        rss_kb: u64,
        /// The victim was the main process (otherwise the main process ended right after one
        /// of its processes was OOM-killed).
        main_process: bool,
        exit_code: i32,
        signal: i32,
    },
    /// The main process never ran the task's program: exec failed.
    ExecFailed {
        exit_code: i32,
        detail: Option<String>,
    },
    /// The task's helper (its supervisor, or the init of its pid namespace) ended before it
    /// could record the main process's status; what is known comes from the probes.
    HelperDied {
        helper_pid: u32,
        /// The last signal that reached the helper, if the probes saw one.
        helper_signal: Option<i32>,
        helper_sender: Option<Sender>,
        /// How the main process ended, when the probes saw enough to tell.
        task_end: Option<Box<ExitReason>>,
    },
}

fn mib(kb: u64) -> String {
    if kb >= 10 * 1024 {
        format!("{} MiB", kb / 1024)
    } else {
        format!("{kb} KiB")
    }
}

/// "pid 4242 (kill-bot, uid 0)".
fn who(s: &Sender) -> String {
    match s.uid {
        Some(uid) => format!("pid {} ({}, uid {uid})", s.pid, s.comm),
        None => format!("pid {} ({})", s.pid, s.comm),
    }
}

/// How a sender is described after the signal name, e.g. "from pid 1 (x, uid 0), a host process".
pub(crate) fn describe_sender(sig: i32, s: &Sender) -> String {
    match &s.class {
        SenderClass::SameProcess => format!("raised by the process itself ({})", who(s)),
        SenderClass::SameTask => format!("from {}, another process of this task", who(s)),
        SenderClass::Driver => format!("from the bpfexec driver ({})", who(s)),
        SenderClass::OtherAllocation {
            alloc_id,
            task_name,
        } => format!(
            "from {}, a process of task \"{task_name}\" in allocation {alloc_id}",
            who(s)
        ),
        SenderClass::Host => format!("from {}, a host process", who(s)),
        // A positive si_code is a fault raised in the faulting process's own context; for
        // SI_KERNEL the current task is just whoever was running (e.g. the allocating task of
        // an OOM kill), so it is not named.
        SenderClass::Kernel => match code_description(sig, s.code) {
            Some(what) if s.code > 0 => {
                format!("from the kernel ({what}) in pid {} ({})", s.pid, s.comm)
            }
            Some(what) => format!("from the kernel ({what})"),
            None => "from the kernel".to_owned(),
        },
    }
}

impl ExitReason {
    /// The reason without kernel observation: what the wait status alone says.
    #[must_use]
    pub fn from_wait_status(exit: &MainExit) -> Self {
        if let Some(detail) = &exit.exec_error {
            return Self::ExecFailed {
                exit_code: exit.exit_code,
                detail: Some(detail.clone()),
            };
        }
        if exit.signal != 0 {
            Self::Signaled {
                signal: exit.signal,
                sender: None,
                core_dumped: exit.core_dumped,
                escalation_after: None,
            }
        } else {
            Self::Exited {
                code: exit.exit_code,
            }
        }
    }

    /// Snake-case name of the reason (the `reason` annotation).
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Self::Exited { .. } => "exited",
            Self::Signaled { .. } => "signaled",
            Self::OomKilled { .. } => "oom_killed",
            Self::ExecFailed { .. } => "exec_failed",
            Self::HelperDied {
                helper_signal: Some(_),
                ..
            } => "helper_killed",
            Self::HelperDied { .. } => "helper_died",
        }
    }

    /// What Nomad gets: `ExitResult.oom_killed`, and the task event's message and annotations.
    #[must_use]
    pub fn to_nomad(&self) -> (bool, String, BTreeMap<String, String>) {
        let mut a = BTreeMap::new();
        a.insert("reason".to_owned(), self.name().to_owned());
        let message = match self {
            Self::Exited { code } => {
                a.insert("exit_code".into(), code.to_string());
                if *code == 0 {
                    "Exited normally (code 0)".to_owned()
                } else {
                    format!("Exited with code {code}")
                }
            }
            Self::Signaled {
                signal,
                sender,
                core_dumped,
                escalation_after,
            } => signaled_text(
                &mut a,
                *signal,
                sender.as_ref(),
                *core_dumped,
                *escalation_after,
            ),
            Self::OomKilled {
                scope,
                victim_pid,
                victim_comm,
                rss_kb,
                main_process,
                exit_code,
                signal,
            } => {
                a.insert("victim_pid".into(), victim_pid.to_string());
                a.insert("victim_comm".into(), victim_comm.clone());
                a.insert("victim_rss_kb".into(), rss_kb.to_string());
                a.insert("victim_is_main".into(), main_process.to_string());
                a.insert("exit_code".into(), exit_code.to_string());
                if *signal != 0 {
                    a.insert("signal".into(), signal_name(*signal));
                }
                let cause = scope_text(&mut a, scope);
                let victim = format!("pid {victim_pid} ({victim_comm}, {} RSS)", mib(*rss_kb));
                if *main_process {
                    format!("OOM-killed: {cause}; victim {victim} was the main process")
                } else {
                    let end = if *signal != 0 {
                        format!("died of {}", signal_name(*signal))
                    } else {
                        format!("exited with code {exit_code}")
                    };
                    format!(
                        "OOM-killed: {cause}; victim {victim} was a child process, and the main \
                         process then {end}"
                    )
                }
            }
            Self::HelperDied {
                helper_pid,
                helper_signal,
                helper_sender,
                task_end,
            } => helper_text(
                &mut a,
                *helper_pid,
                *helper_signal,
                helper_sender.as_ref(),
                task_end.as_deref(),
            ),
            Self::ExecFailed { exit_code, detail } => {
                a.insert("exit_code".into(), exit_code.to_string());
                match detail {
                    Some(d) => {
                        a.insert("exec_error".into(), d.clone());
                        format!("Exec failed before the task's program ran: {d}")
                    }
                    None => format!(
                        "Exec failed before the task's program ran (exit code {exit_code}); \
                         check that the command exists and is executable"
                    ),
                }
            }
        };
        (matches!(self, Self::OomKilled { .. }), message, a)
    }
}

fn signaled_text(
    a: &mut BTreeMap<String, String>,
    signal: i32,
    sender: Option<&Sender>,
    core_dumped: bool,
    escalation_after: Option<i32>,
) -> String {
    let name = signal_name(signal);
    a.insert("signal".into(), name.clone());
    a.insert("exit_code".into(), (128 + signal).to_string());
    a.insert("core_dumped".into(), core_dumped.to_string());
    let mut m = match sender {
        Some(s) => {
            insert_sender(a, s);
            format!("Killed by {name} {}", describe_sender(signal, s))
        }
        None => format!("Killed by {name} (sender not observed)"),
    };
    if let Some(first) = escalation_after {
        let first = signal_name(first);
        a.insert("escalation_after".into(), first.clone());
        m.push_str(": kill_timeout escalation after ");
        m.push_str(&first);
        m.push_str(" did not stop the task");
    }
    if core_dumped {
        m.push_str("; core dumped");
    }
    m
}

/// The message and annotations of [`ExitReason::HelperDied`].
fn helper_text(
    a: &mut BTreeMap<String, String>,
    helper_pid: u32,
    helper_signal: Option<i32>,
    helper_sender: Option<&Sender>,
    task_end: Option<&ExitReason>,
) -> String {
    let how_helper_ended = match (helper_signal, helper_sender) {
        (Some(sig), Some(s)) => {
            let name = signal_name(sig);
            a.insert("helper_signal".into(), name.clone());
            a.insert("helper_sender_pid".into(), s.pid.to_string());
            a.insert("helper_sender_comm".into(), s.comm.clone());
            if let Some(uid) = s.uid {
                a.insert("helper_sender_uid".into(), uid.to_string());
            }
            a.insert("helper_sender_class".into(), s.class.name().to_owned());
            format!("was killed by {name} {}", describe_sender(sig, s))
        }
        _ => "ended without recording the task's exit status (no signal to it was seen; see its supervisor.log)".to_owned(),
    };
    a.insert("helper_pid".into(), helper_pid.to_string());
    let helper = format!(
        "the task's helper (pid {helper_pid}, which waits for the task and records its exit) {how_helper_ended}"
    );
    match task_end {
        Some(ExitReason::Signaled { signal, sender, .. })
            if sender.as_ref().is_some_and(|s| s.pid == helper_pid) =>
        {
            let name = signal_name(*signal);
            a.insert("signal".into(), name.clone());
            a.insert("exit_code".into(), (128 + signal).to_string());
            format!(
                "Killed by {name}: {helper}, and the kernel then killed every process of the task's pid namespace"
            )
        }
        Some(end) => {
            let (_, message, more) = end.to_nomad();
            for (k, v) in more {
                if k != "reason" {
                    a.entry(k).or_insert(v);
                }
            }
            format!("{message}; {helper}")
        }
        None => format!(
            "The task's exit status is unknown: {helper}, and the probes did not see how its main process ended"
        ),
    }
}

/// The cause of an OOM kill, with the `oom_scope` / `oom_cgroup` annotations.
pub(crate) fn scope_text(a: &mut BTreeMap<String, String>, scope: &OomScope) -> String {
    match scope {
        OomScope::Cgroup { cgroup } => {
            a.insert("oom_scope".into(), "cgroup".into());
            a.insert("oom_cgroup".into(), cgroup.clone());
            format!("memory limit of cgroup {cgroup}")
        }
        OomScope::System => {
            a.insert("oom_scope".into(), "system".into());
            "the host ran out of memory (system-wide OOM)".to_owned()
        }
        OomScope::Unknown => {
            a.insert("oom_scope".into(), "unknown".into());
            "memory limit or host memory (scope unknown)".to_owned()
        }
    }
}

/// Adds the `sender_*` annotations.
pub(crate) fn insert_sender(a: &mut BTreeMap<String, String>, s: &Sender) {
    a.insert("sender_pid".into(), s.pid.to_string());
    a.insert("sender_comm".into(), s.comm.clone());
    if let Some(uid) = s.uid {
        a.insert("sender_uid".into(), uid.to_string());
    }
    a.insert("sender_class".into(), s.class.name().to_owned());
    if let SenderClass::OtherAllocation {
        alloc_id,
        task_name,
    } = &s.class
    {
        a.insert("sender_alloc_id".into(), alloc_id.clone());
        a.insert("sender_task".into(), task_name.clone());
    }
}
