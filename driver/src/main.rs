//! `nomad-driver-bpfexec`: the Nomad task driver plugin, or, when re-executed as
//! `nomad-driver-bpfexec __supervise <dir>`, the supervisor of one task.

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let code = if args
        .get(1)
        .is_some_and(|a| a == bpfexec_driver::supervisor::SUPERVISE_ARG)
    {
        bpfexec_driver::supervisor::main(&args[2..])
    } else {
        bpfexec_driver::plugin::run()
    };
    std::process::exit(code);
}
