//! What the stand-in and the gvproxy-vfkit shim share.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// A runtime directory (sockets, the firmware's variable store) for one process: a scratch
/// (scratch crate) in a directory only this user's stand-ins and shims use. Tests kill them with
/// SIGKILL, as carbon-vm may kill krunkit and gvproxy; what a killed one left (the stand-in's
/// 64 MiB of firmware variables), the next one sweeps.
pub fn runtime_dir(label: &str) -> io::Result<scratch::Scratch> {
    runtime_dir_in(&std::env::temp_dir(), label)
}

fn runtime_dir_in(base: &Path, label: &str) -> io::Result<scratch::Scratch> {
    let uid = rustix::process::getuid().as_raw();
    let parent = base.join(format!("krunkit-standin-{uid}"));
    match fs::create_dir(&parent) {
        Ok(()) => fs::set_permissions(&parent, fs::Permissions::from_mode(0o700))?,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = fs::symlink_metadata(&parent)?;
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
        return Err(io::Error::other(format!(
            "{} is not a private directory of this user's",
            parent.display()
        )));
    }
    scratch::sweep(&parent, "lock");
    scratch::Scratch::new_in(&parent, label, "lock")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn a_killed_ones_directory_is_swept_and_a_shared_parent_refused() {
        let base = tempfile::tempdir().unwrap();
        let live = runtime_dir_in(base.path(), "vm").unwrap();
        let (dead, lock) = runtime_dir_in(base.path(), "vm").unwrap().keep();
        drop(lock); // as SIGKILL releases it
        fs::File::open(&dead)
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(120))
            .unwrap();
        let parent = dead.parent().unwrap().to_owned();
        assert_eq!(fs::metadata(&parent).unwrap().mode() & 0o777, 0o700);

        let next = runtime_dir_in(base.path(), "gvproxy-vfkit").unwrap();
        assert!(!dead.exists(), "the killed one's directory is left");
        assert!(live.path().is_dir() && next.path().is_dir());

        fs::set_permissions(&parent, fs::Permissions::from_mode(0o755)).unwrap();
        let e = runtime_dir_in(base.path(), "vm").err().unwrap();
        assert!(e.to_string().contains("not a private directory"), "{e}");
    }
}
