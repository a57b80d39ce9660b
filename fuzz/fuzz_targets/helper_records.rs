//! The files a task's helper and the plugin exchange under `<state_dir>/tasks/<task>/`, which
//! outlive both and may be damaged (a full disk, a crash mid-write, an operator): the exit
//! record, the launch spec, the start report line and the seccomp refusal log. The first byte
//! picks the record; the rest is its content. Never a panic; the seccomp log parser consumes
//! only whole lines.
#![no_main]

use bpfexec_driver::seccomp::listener::parse_records;
use bpfexec_driver::supervisor::record::{ExitRecord, StartReport};
use bpfexec_driver::supervisor::spec::LaunchSpec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((which, rest)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => drop(serde_json::from_slice::<ExitRecord>(rest)),
        1 => drop(serde_json::from_slice::<LaunchSpec>(rest)),
        2 => drop(serde_json::from_slice::<StartReport>(rest)),
        _ => {
            let (records, used) = parse_records(rest);
            assert!(used <= rest.len());
            assert!(used == 0 || rest[used - 1] == b'\n');
            assert!(records.len() <= rest.iter().filter(|b| **b == b'\n').count());
        }
    }
});
