//! The plugin's `config {}` as Nomad sends it in SetConfig (cty msgpack from the agent's
//! configuration), without the process environment: a config or a typed error, never a panic.
#![no_main]

use bpfexec_driver::config::plugin::PluginConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = PluginConfig::decode_with_env(data, &|_| None);
});
