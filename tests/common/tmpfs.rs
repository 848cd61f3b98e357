//! A small tmpfs for the free-space tests.

use super::Env;
use std::process::Command;

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop. Where mounting is
/// impossible the test cannot run: [`super::skip`] fails it, or None where skips were asked for.
pub struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    pub fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs(dir)),
            other => {
                super::skip(&format!(
                    "cannot mount a tmpfs for the free-space tests (needs root): {other:?}"
                ));
                None
            }
        }
    }

    pub fn path(&self) -> &std::path::Path {
        self.0.path()
    }

    /// A CARBON_VM_HOME on it.
    pub fn env(&self) -> Env {
        Env {
            home: tempfile::tempdir_in(self.0.path()).unwrap(),
        }
    }

    pub fn used(&self) -> u64 {
        let out = Command::new("df")
            .args(["--output=used", "-B1"])
            .arg(self.0.path())
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        text.lines().nth(1).unwrap().trim().parse().unwrap()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let status = Command::new("umount").arg(self.0.path()).status();
        assert!(matches!(status, Ok(s) if s.success()), "umount: {status:?}");
    }
}
