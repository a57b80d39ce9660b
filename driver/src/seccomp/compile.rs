//! From a [`Profile`] to classic-BPF seccomp programs (seccompiler builds each one). A filter
//! has one match and one mismatch action, so a profile becomes one filter per action: the
//! kernel runs them all and the most restrictive answer wins (seccomp(2)). Exactly one filter,
//! the *listener* filter, is installed with `SECCOMP_FILTER_FLAG_NEW_LISTENER`: every refusal
//! that is to be reported (EPERM) goes through it as `SECCOMP_RET_USER_NOTIF`, which the task's
//! helper answers with EPERM and records. That filter also refuses calls of a foreign ABI (32-bit
//! x86 through `int 0x80`, and x32 numbers with bit 30 set), which would otherwise slip past a
//! list of native numbers.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch, sock_filter,
};

use super::profile::{Action, Cond, Op, Profile, Rule};
use super::{Program, SeccompError};

/// An errno no kernel returns; seccompiler builds the listener filter with it, and every such
/// return is then rewritten as `SECCOMP_RET_USER_NOTIF`.
const NOTIFY_MARKER: u32 = 4095;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_RET_USER_NOTIF: u32 = 0x7fc0_0000;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
/// x32 syscalls are native numbers with this bit set.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JEQ_K: u16 = 0x15;
const BPF_JMP_JGE_K: u16 = 0x35;
const BPF_RET_K: u16 = 0x06;

fn arch() -> Result<TargetArch, SeccompError> {
    TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| SeccompError::Compile(format!("architecture not supported: {e:?}")))
}

fn to_seccompiler(a: Action) -> SeccompAction {
    match a {
        Action::Allow => SeccompAction::Allow,
        Action::Deny => SeccompAction::Errno(NOTIFY_MARKER),
        Action::Errno(e) => SeccompAction::Errno(e),
        Action::Log => SeccompAction::Log,
        Action::Trace(v) => SeccompAction::Trace(v),
        Action::Trap => SeccompAction::Trap,
        Action::KillThread => SeccompAction::KillThread,
        Action::KillProcess => SeccompAction::KillProcess,
    }
}

fn condition(c: &Cond) -> Result<SeccompCondition, SeccompError> {
    let op = match c.op {
        Op::Eq => SeccompCmpOp::Eq,
        Op::Ne => SeccompCmpOp::Ne,
        Op::Lt => SeccompCmpOp::Lt,
        Op::Le => SeccompCmpOp::Le,
        Op::Gt => SeccompCmpOp::Gt,
        Op::Ge => SeccompCmpOp::Ge,
        Op::MaskedEq(mask) => SeccompCmpOp::MaskedEq(mask),
    };
    SeccompCondition::new(c.index, SeccompCmpArgLen::Qword, op, c.value)
        .map_err(|e| SeccompError::Compile(format!("argument condition {c:?}: {e}")))
}

/// seccompiler's rule map for `rules`: an unconditional rule makes the whole chain match.
fn rule_map<'a>(
    rules: impl Iterator<Item = &'a Rule>,
) -> Result<BTreeMap<i64, Vec<SeccompRule>>, SeccompError> {
    let mut map: BTreeMap<i64, Option<Vec<SeccompRule>>> = BTreeMap::new();
    for r in rules {
        let entry = map.entry(r.nr).or_insert_with(|| Some(Vec::new()));
        if r.conds.is_empty() {
            *entry = None;
        } else if let Some(chain) = entry {
            let conds = r.conds.iter().map(condition).collect::<Result<_, _>>()?;
            chain.push(
                SeccompRule::new(conds)
                    .map_err(|e| SeccompError::Compile(format!("rule for {}: {e}", r.nr)))?,
            );
        }
    }
    Ok(map
        .into_iter()
        .map(|(nr, chain)| (nr, chain.unwrap_or_default()))
        .collect())
}

fn build(
    rules: &BTreeMap<i64, Vec<SeccompRule>>,
    on_match: Action,
    otherwise: Action,
) -> Result<BpfProgram, SeccompError> {
    let filter = SeccompFilter::new(
        rules.clone(),
        to_seccompiler(otherwise),
        to_seccompiler(on_match),
        arch()?,
    )
    .map_err(|e| SeccompError::Compile(e.to_string()))?;
    BpfProgram::try_from(filter).map_err(|e| SeccompError::Compile(e.to_string()))
}

/// seccompiler opens every program with: load arch; equal → skip one; kill the process.
fn arch_check_ret(prog: &mut BpfProgram) -> Result<&mut sock_filter, SeccompError> {
    match prog.as_mut_slice() {
        [ld, jeq, ret, ..]
            if ld.code == BPF_LD_W_ABS
                && jeq.code == BPF_JMP_JEQ_K
                && ret.code == BPF_RET_K
                && ret.k == SECCOMP_RET_KILL_PROCESS =>
        {
            Ok(ret)
        }
        _ => Err(SeccompError::Compile(
            "unexpected program prologue (seccompiler changed its layout)".into(),
        )),
    }
}

/// Rewrites the listener filter: marker returns become notifications, a foreign ABI is refused
/// (reported) instead of killing the process, and x32 numbers are refused up front.
fn finish_listener(mut prog: BpfProgram) -> Result<BpfProgram, SeccompError> {
    arch_check_ret(&mut prog)?.k = SECCOMP_RET_USER_NOTIF;
    for insn in &mut prog {
        if insn.code == BPF_RET_K && insn.k == SECCOMP_RET_ERRNO | NOTIFY_MARKER {
            insn.k = SECCOMP_RET_USER_NOTIF;
        }
    }
    let guard = [
        sock_filter {
            code: BPF_LD_W_ABS,
            jt: 0,
            jf: 0,
            k: 0, // seccomp_data.nr
        },
        sock_filter {
            code: BPF_JMP_JGE_K,
            jt: 0,
            jf: 1,
            k: X32_SYSCALL_BIT,
        },
        sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: SECCOMP_RET_USER_NOTIF,
        },
    ];
    // After the 3-instruction arch check; no jump crosses that point.
    prog.splice(3..3, guard);
    Ok(prog)
}

/// Other filters leave foreign ABIs to the listener filter.
fn finish_plain(mut prog: BpfProgram) -> Result<BpfProgram, SeccompError> {
    arch_check_ret(&mut prog)?.k = SECCOMP_RET_ALLOW;
    Ok(prog)
}

fn program(prog: &BpfProgram, listener: bool) -> Program {
    Program {
        listener,
        insns: prog.iter().map(|i| (i.code, i.jt, i.jf, i.k)).collect(),
    }
}

/// Compiles `profile` into the programs to install, the listener filter last.
pub fn compile(profile: &Profile) -> Result<Vec<Program>, SeccompError> {
    let with = |a: Action| profile.rules.iter().filter(move |r| r.action == a);
    let mut out = Vec::new();
    // The listener filter: reported refusals.
    let listener = match profile.default {
        Action::Deny => build(&rule_map(with(Action::Allow))?, Action::Allow, Action::Deny)?,
        _ => build(&rule_map(with(Action::Deny))?, Action::Deny, Action::Allow)?,
    };
    // Another default (a kill, a silent errno): allowed calls against it.
    if !matches!(profile.default, Action::Allow | Action::Deny) {
        let base = build(
            &rule_map(with(Action::Allow))?,
            Action::Allow,
            profile.default,
        )?;
        out.push(program(&finish_plain(base)?, false));
    }
    // Every other action: its calls, everything else allowed (the other filters decide).
    let others: std::collections::BTreeSet<Action> = profile
        .rules
        .iter()
        .map(|r| r.action)
        .filter(|a| !matches!(a, Action::Allow | Action::Deny) && *a != profile.default)
        .collect();
    for a in others {
        let p = build(&rule_map(with(a))?, a, Action::Allow)?;
        out.push(program(&finish_plain(p)?, false));
    }
    out.push(program(&finish_listener(listener)?, true));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_compiles_to_a_listener_and_an_enosys_filter() {
        let progs = compile(&Profile::builtin(&[])).expect("compile");
        assert_eq!(progs.len(), 2, "{progs:?}");
        let listener = progs.last().expect("listener");
        assert!(listener.listener);
        assert!(
            listener
                .insns
                .iter()
                .any(|i| i.0 == BPF_RET_K && i.3 == SECCOMP_RET_USER_NOTIF)
        );
        assert!(
            listener
                .insns
                .iter()
                .all(|i| !(i.0 == BPF_RET_K && i.3 == SECCOMP_RET_ERRNO | NOTIFY_MARKER))
        );
        assert_eq!(listener.insns[4].3, X32_SYSCALL_BIT);
        let enosys = &progs[0];
        assert!(!enosys.listener);
        assert!(
            enosys
                .insns
                .iter()
                .any(|i| i.0 == BPF_RET_K && i.3 == SECCOMP_RET_ERRNO | libc::ENOSYS as u32)
        );
        assert_eq!(enosys.insns[2].3, SECCOMP_RET_ALLOW);
    }

    #[test]
    fn allow_list_profiles_compile() {
        let json = r#"{"defaultAction": "SCMP_ACT_KILL_PROCESS", "syscalls": [
            {"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["bpf"], "action": "SCMP_ACT_ERRNO"},
            {"names": ["mount"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]}"#;
        let p = Profile::from_oci_json(json, &[]).expect("parse");
        let progs = compile(&p).expect("compile");
        // kill-by-default base, ENOSYS, listener.
        assert_eq!(progs.len(), 3, "{progs:?}");
        assert_eq!(progs.iter().filter(|p| p.listener).count(), 1);
    }
}
