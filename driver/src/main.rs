//! `nomad-driver-bpfexec`: the Nomad task driver plugin, or, when re-executed as
//! `nomad-driver-bpfexec __supervise <dir>`, the supervisor of one task, or as
//! `nomad-driver-bpfexec __exec …`, a command run inside a task (`nomad alloc exec`).

use bpfexec_driver::supervisor::{self, SUPERVISE_ARG, enter::EXEC_ARG};

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mode = args.get(1).and_then(|a| a.to_str());
    let code = match mode {
        Some(SUPERVISE_ARG) => supervisor::main(&args[2..]),
        Some(EXEC_ARG) => supervisor::enter::main(&args[2..]),
        _ => bpfexec_driver::plugin::run(),
    };
    std::process::exit(code);
}
