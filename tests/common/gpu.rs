//! GPU machines for the tests: carbon-vm and podman run inside scripts/gpu-root (the Venus host
//! stack), with the test's own state and Podman configuration.

use super::Env;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct GpuEnv {
    pub env: Env,
    /// scripts/gpu-root.
    pub root: PathBuf,
    pub xdg: PathBuf,
}

impl GpuEnv {
    pub fn new(root: PathBuf) -> GpuEnv {
        let env = Env::new();
        let xdg = env.home.path().join("xdg");
        GpuEnv { env, root, xdg }
    }

    /// A command run inside the GPU host root, with the test's own state and Podman config.
    pub fn inside(&self, program: &Path) -> Command {
        let mut c = Command::new(&self.root);
        c.arg("run")
            .arg(program)
            .env("CARBON_VM_HOME", self.env.home.path())
            .env("XDG_CONFIG_HOME", &self.xdg)
            .env("CONTAINERS_CONF", super::podman_conf(&self.xdg))
            .env_remove("CARBON_VM_LOG");
        c
    }

    pub fn carbon_vm(&self, args: &[&str]) -> Output {
        self.inside(&assert_cmd::cargo::cargo_bin("carbon-vm"))
            .args(args)
            .output()
            .unwrap()
    }

    pub fn podman(&self, args: &[&str]) -> Output {
        self.inside(Path::new("/usr/bin/podman"))
            .args(args)
            .output()
            .unwrap()
    }
}

/// `o`'s stdout, once it succeeded; else a panic naming `what` with both outputs.
pub fn ok(o: &Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what} failed ({}):\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}
