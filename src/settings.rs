//! How this invocation runs machines, from the environment (env_vars.rs names the variables).

use crate::env_vars;
use crate::home::Home;
use machine::exit_class::{Class, Classify, Code};
use machine::guest_image;
use machine::host::{Accel, AccelChoice};
use std::path::PathBuf;
use std::time::Duration;

/// An environment variable carbon-vm cannot use (a usage error: exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadSetting(String);

impl Classify for BadSetting {
    fn class(&self) -> Option<Class> {
        Some(Code::Usage.hint("docs/configuration.md lists carbon-vm's environment variables"))
    }
}

/// QEMU's accelerator (`CARBON_VM_ACCEL`): `auto` is KVM where QEMU can really run a guest with
/// it (probed when a machine starts), else TCG.
fn accel() -> anyhow::Result<AccelChoice> {
    match std::env::var(env_vars::ACCEL).as_deref() {
        Ok("kvm") => Ok(AccelChoice::Use(Accel::Kvm)),
        Ok("tcg") => Ok(AccelChoice::Use(Accel::Tcg)),
        Ok("auto") | Err(_) => Ok(AccelChoice::Auto),
        Ok(other) => Err(BadSetting(format!(
            "{} must be auto, kvm or tcg, not {other:?}",
            env_vars::ACCEL
        ))
        .into()),
    }
}

/// The program `var` names, else `name` from PATH.
fn program(var: &str, name: &str) -> PathBuf {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map_or_else(|| name.into(), PathBuf::from)
}

/// The krunkit to run: `CARBON_VM_KRUNKIT`, else `krunkit` from PATH.
pub fn krunkit() -> PathBuf {
    program(env_vars::KRUNKIT, "krunkit")
}

/// The gvproxy to run: `CARBON_VM_GVPROXY`, else `gvproxy` from PATH.
pub fn gvproxy() -> PathBuf {
    program(env_vars::GVPROXY, "gvproxy")
}

/// Podman's config home, where it keeps its machine files (`machine::podman::config_home`).
pub fn podman_config_home() -> anyhow::Result<PathBuf> {
    machine::podman::config_home()
        .ok_or_else(|| anyhow::anyhow!("neither XDG_CONFIG_HOME nor HOME is set"))
}

/// A number of seconds from the environment variable `var`, if set.
fn seconds(var: &str) -> anyhow::Result<Option<Duration>> {
    match std::env::var(var) {
        Err(_) => Ok(None),
        Ok(s) => match s.parse::<u64>() {
            Ok(secs) => Ok(Some(Duration::from_secs(secs))),
            Err(_) => {
                Err(BadSetting(format!("{var} must be a number of seconds, not {s:?}")).into())
            }
        },
    }
}

const BUILT_IN_CATALOG: &str = include_str!("../configs/catalog.json");

/// The image catalog: the file `CARBON_VM_CATALOG` names, else the built-in configs/catalog.json.
pub fn catalog() -> anyhow::Result<guest_image::catalog::Catalog> {
    let parsed = match std::env::var_os(env_vars::CATALOG).filter(|v| !v.is_empty()) {
        Some(path) => {
            let origin = PathBuf::from(path);
            let text = std::fs::read_to_string(&origin).map_err(|e| {
                anyhow::anyhow!(
                    "cannot read the image catalog {} ({}): {e}",
                    origin.display(),
                    env_vars::CATALOG
                )
            })?;
            guest_image::catalog::Catalog::parse(&text, &origin.display().to_string())
        }
        None => guest_image::catalog::Catalog::parse(BUILT_IN_CATALOG, "built in"),
    };
    Ok(parsed?)
}

pub fn start_options(home: &Home) -> anyhow::Result<machine::lifecycle::StartOptions> {
    Ok(machine::lifecycle::StartOptions {
        accel: accel()?,
        krunkit: krunkit(),
        gvproxy: gvproxy(),
        start_timeout: seconds(env_vars::START_TIMEOUT)?
            .unwrap_or(machine::lifecycle::START_TIMEOUT),
        podman_timeout: seconds(env_vars::PODMAN_TIMEOUT)?,
        state_dirs: home.state_dirs(),
        ggml_server: ggml_server()?,
    })
}

/// The ggml device's server: `CARBON_VM_GGML_SERVER` (a command line, e.g. with options of
/// its own), else `ggml-rpc-server` or `rpc-server` from PATH, else where Debian's
/// llama.cpp-tools-extra keeps it. Empty when there is none (a --ggml machine cannot start).
pub fn ggml_server() -> anyhow::Result<Vec<String>> {
    if let Some(line) = std::env::var(env_vars::GGML_SERVER)
        .ok()
        .filter(|v| !v.trim().is_empty())
    {
        return shlex::split(&line)
            .filter(|w| !w.is_empty())
            .ok_or_else(|| {
                BadSetting(format!(
                    "{} is not a command line: {line:?}",
                    env_vars::GGML_SERVER
                ))
                .into()
            });
    }
    let debian = format!(
        "/usr/libexec/{}-linux-gnu/llama/bin/ggml-rpc-server",
        std::env::consts::ARCH
    );
    Ok(machine::host::which("ggml-rpc-server")
        .or_else(|| machine::host::which("rpc-server"))
        .or_else(|| Some(debian.into()).filter(|p: &PathBuf| p.is_file()))
        .map(|p| p.display().to_string())
        .into_iter()
        .collect())
}

#[cfg(test)]
mod tests {
    /// The compiled-in catalog parses and has the default for both architectures machines run on.
    #[test]
    fn built_in_catalog_has_the_default_for_each_arch() {
        let catalog =
            guest_image::catalog::Catalog::parse(super::BUILT_IN_CATALOG, "built in").unwrap();
        for arch in ["x86_64", "aarch64"] {
            assert_eq!(catalog.entry(&catalog.default, arch).unwrap().arch, arch);
        }
    }
}
