//! The task's `config {}` as Nomad sends it (cty msgpack from the job): any bytes decode to a
//! config or a typed error, never a panic, a hang or an unbounded allocation.
#![no_main]

use bpfexec_driver::config::task::TaskConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(cfg) = TaskConfig::decode(data) {
        // Whatever decodes must also describe itself.
        let _ = format!("{cfg:?}");
    }
});
