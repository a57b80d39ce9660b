//! `cargo xtask env`: the paths scripts and the e2e suite use (`NOMAD_BIN`, `DRIVER_BIN`,
//! `PLUGIN_DIR`, `JAEGER_BIN`, `PROMETHEUS_BIN`, `PROMTOOL_BIN`, ...), one `KEY=value` line each, shell-quoted so `eval "$(cargo xtask env)"`
//! works (`--export` prefixes `export `).

use std::path::PathBuf;

use anyhow::{Result, bail};

use crate::setup;
use crate::tools::{self, NOMAD_PRIMARY, Profile};
use crate::util;

/// Resolved tool and build-output paths.
pub struct ToolEnv {
    pub cache: PathBuf,
    pub nomad_version: &'static str,
    pub nomad_bin: PathBuf,
    pub nomad_installed: bool,
    pub driver_bin: PathBuf,
    pub plugin_dir: PathBuf,
    pub bpf_linker: PathBuf,
    pub jaeger_bin: PathBuf,
    pub jaeger_installed: bool,
    pub prometheus: Option<PathBuf>,
    pub promtool: Option<PathBuf>,
}

impl ToolEnv {
    pub fn resolve(profile: Profile) -> Result<Self> {
        let cache = tools::cache_root()?;
        let installed = setup::installed_nomad(&cache);
        let nomad_installed = installed.is_some();
        let (release, nomad_bin) =
            installed.unwrap_or_else(|| (NOMAD_PRIMARY, tools::nomad_bin(&cache, NOMAD_PRIMARY)));
        let jaeger = setup::installed_jaeger(&cache);
        Ok(Self {
            jaeger_installed: jaeger.is_some(),
            jaeger_bin: jaeger.unwrap_or_else(|| tools::jaeger_bin(&cache)),
            nomad_version: release.version,
            nomad_bin,
            nomad_installed,
            driver_bin: tools::driver_bin(profile),
            plugin_dir: tools::plugin_dir(profile),
            bpf_linker: tools::bpf_linker_bin(&cache),
            prometheus: util::which("prometheus"),
            promtool: util::which("promtool"),
            cache,
        })
    }

    /// `(name, value)` pairs, in print order.
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        let show = |p: &PathBuf| p.display().to_string();
        let mut vars = vec![
            ("NOMAD_BIN", show(&self.nomad_bin)),
            ("NOMAD_VERSION", self.nomad_version.to_owned()),
            ("DRIVER_BIN", show(&self.driver_bin)),
            ("PLUGIN_DIR", show(&self.plugin_dir)),
            ("BPF_LINKER", show(&self.bpf_linker)),
            ("BPFEXEC_CACHE", show(&self.cache)),
            ("JAEGER_BIN", show(&self.jaeger_bin)),
        ];
        if let Some(p) = &self.prometheus {
            vars.push(("PROMETHEUS_BIN", show(p)));
        }
        if let Some(p) = &self.promtool {
            vars.push(("PROMTOOL_BIN", show(p)));
        }
        vars
    }

    /// Warnings about paths that do not exist yet (printed on stderr, never fatal here).
    pub fn missing(&self) -> Vec<String> {
        let mut missing = Vec::new();
        if !self.nomad_installed {
            missing.push(format!(
                "NOMAD_BIN {} is not built yet: run `cargo xtask setup`",
                self.nomad_bin.display()
            ));
        }
        if !self.jaeger_installed {
            missing.push(format!(
                "JAEGER_BIN {} is not built yet: run `cargo xtask setup`",
                self.jaeger_bin.display()
            ));
        }
        for (key, found) in [
            ("PROMETHEUS_BIN", &self.prometheus),
            ("PROMTOOL_BIN", &self.promtool),
        ] {
            if found.is_none() {
                missing.push(format!(
                    "{key}: not on PATH: run `cargo xtask setup` (apt-get install prometheus)"
                ));
            }
        }
        if !self.bpf_linker.exists() {
            missing.push(format!(
                "BPF_LINKER {} is not built yet: run `cargo xtask setup`",
                self.bpf_linker.display()
            ));
        }
        if !self.driver_bin.exists() {
            missing.push(format!(
                "DRIVER_BIN {} is not built yet: run `cargo xtask build`",
                self.driver_bin.display()
            ));
        }
        if !self.plugin_dir.join(tools::DRIVER_BIN_NAME).exists() {
            missing.push(format!(
                "PLUGIN_DIR {} has no driver yet: run `cargo xtask build`",
                self.plugin_dir.display()
            ));
        }
        missing
    }
}

pub fn run(args: &[String]) -> Result<()> {
    let mut export = false;
    for arg in args {
        match arg.as_str() {
            "--export" => export = true,
            "--release" => {}
            other => bail!("unknown `env` option `{other}` (expected --export, --release)"),
        }
    }
    let env = ToolEnv::resolve(Profile::from_args(args))?;
    let prefix = if export { "export " } else { "" };
    for (key, value) in env.vars() {
        println!("{prefix}{key}={}", util::quote(&value));
    }
    for warning in env.missing() {
        eprintln!("warning: {warning}");
    }
    Ok(())
}
