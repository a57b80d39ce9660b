//! `cargo xtask demo`: placeholder until the demo (a real agent running the example jobs) lands.

use anyhow::{Result, bail};

pub fn run(_args: &[String]) -> Result<()> {
    bail!("`cargo xtask demo` is not implemented yet")
}
