//! Where carbon-vm keeps its state. `CARBON_VM_HOME` puts everything under one directory;
//! otherwise the platform's conventions apply (XDG on Linux, ~/Library on macOS).

use crate::env_vars;
use std::path::{Path, PathBuf};

/// Unix socket paths are limited to 104 bytes on macOS (108 on Linux); sockets live at most
/// this deep inside the runtime directory, so the directory itself must stay short.
const MAX_RUNTIME_DIR_LEN: usize = 64;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Home {
    pub config: PathBuf,
    pub images: PathBuf,
    pub machines: PathBuf,
    pub runtime: PathBuf,
}

impl Home {
    pub fn from_env() -> anyhow::Result<Home> {
        if let Some(root) = std::env::var_os(env_vars::HOME).filter(|v| !v.is_empty()) {
            let root = std::path::absolute(PathBuf::from(root))?;
            return Ok(Home::under(&root));
        }
        let dirs = directories::ProjectDirs::from("", "", "carbon-vm").ok_or_else(|| {
            anyhow::anyhow!("cannot find a home directory; set {}", env_vars::HOME)
        })?;
        let runtime = dirs
            .runtime_dir()
            .map(Path::to_owned)
            .filter(|p| p.as_os_str().len() <= MAX_RUNTIME_DIR_LEN)
            .unwrap_or_else(|| short_tmp_runtime(dirs.data_dir()));
        Ok(Home {
            config: dirs.config_dir().to_owned(),
            images: dirs.cache_dir().join("images"),
            machines: dirs.data_dir().join("machines"),
            runtime,
        })
    }

    fn under(root: &Path) -> Home {
        let runtime = root.join("run");
        let runtime = if runtime.as_os_str().len() <= MAX_RUNTIME_DIR_LEN {
            runtime
        } else {
            short_tmp_runtime(root)
        };
        Home {
            config: root.join("config"),
            images: root.join("cache").join("images"),
            machines: root.join("machines"),
            runtime,
        }
    }

    /// Every directory of carbon-vm's own state: no guest may reach them.
    pub fn state_dirs(&self) -> Vec<PathBuf> {
        vec![
            self.config.clone(),
            self.images.clone(),
            self.machines.clone(),
            self.runtime.clone(),
        ]
    }

    /// The user's extra trusted minisign keys: `CONFIG/trusted-keys/*.pub`.
    pub fn trusted_key_texts(&self) -> anyhow::Result<Vec<String>> {
        let dir = self.config.join("trusted-keys");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(vec![]);
        };
        let mut out = Vec::new();
        for e in entries {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "pub") {
                out.push(std::fs::read_to_string(&p)?);
            }
        }
        Ok(out)
    }
}

/// A short per-user, per-home runtime directory for when the natural one is too long (or, on
/// macOS, absent): under the per-user `$TMPDIR` macOS gives every login, else /tmp. Its name is
/// predictable, so `start` refuses it unless it is this user's, mode 0700, and no symlink
/// (machine::store::mkdir_private).
fn short_tmp_runtime(key: &Path) -> PathBuf {
    use sha2::Digest;
    let h = sha2::Sha256::digest(key.as_os_str().as_encoded_bytes());
    let uid = rustix::process::getuid().as_raw();
    let name = format!("carbon-vm-{uid}-{}", hex::encode(&h[..4]));
    let tmp = std::env::temp_dir();
    if tmp.as_os_str().len() + 1 + name.len() <= MAX_RUNTIME_DIR_LEN {
        tmp.join(name)
    } else {
        Path::new("/tmp").join(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_lives_under_the_home_and_runtime_stays_short() {
        let h = Home::under(Path::new("/srv/cv"));
        assert_eq!(h.images, Path::new("/srv/cv/cache/images"));
        assert_eq!(h.runtime, Path::new("/srv/cv/run"));
        let long = PathBuf::from(format!("/srv/{}", "x".repeat(80)));
        let h = Home::under(&long);
        assert!(h.config.starts_with(&long));
        assert!(h.runtime.starts_with(std::env::temp_dir()) || h.runtime.starts_with("/tmp"));
        assert!(
            h.runtime
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("carbon-vm-")
        );
        assert!(h.runtime.as_os_str().len() <= MAX_RUNTIME_DIR_LEN);
    }
}
