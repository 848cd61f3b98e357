//! Scratch directories beside where their work lands (a machine being created, an image being
//! pulled, anything being removed), and the one sweep of what killed processes left of them.
//!
//! A scratch (`.tmp-LABEL-XXXXXX`, private to the user) holds a lock file that its writer keeps
//! locked (flock) until its work is renamed into place: the kernel releases it however the writer
//! ends, so a scratch whose lock nobody holds was abandoned. A scratch is not swept in its first
//! minute (its writer may not have locked it yet). What is renamed aside to be removed
//! (`.tmp-rm-LABEL-XXXXXX`) is garbage at once.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

const PREFIX: &str = ".tmp-";
const REMOVED_PREFIX: &str = ".tmp-rm-";
/// How long a scratch is left alone whatever its lock says.
const GRACE: Duration = Duration::from_secs(60);

/// A locked scratch directory; removed on drop unless kept.
pub struct Scratch {
    dir: tempfile::TempDir,
    lock: File,
}

impl Scratch {
    /// A new scratch `.tmp-LABEL-XXXXXX` in `parent`, mode 0700, with the lock file `lock` in it,
    /// locked. The lock file moves with the directory: named as the destination's own lock, it
    /// stays held across the rename into place.
    pub fn new_in(parent: &Path, label: &str, lock: &str) -> io::Result<Scratch> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{PREFIX}{label}-"))
            .tempdir_in(parent)?;
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700))?;
        let lock = File::create(dir.path().join(lock))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)?;
        Ok(Scratch { dir, lock })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Gives the directory up to the caller (no removal on drop), with its lock still held: the
    /// caller renames it into place (or removes it) and then drops the lock.
    pub fn keep(self) -> (PathBuf, File) {
        (self.dir.keep(), self.lock)
    }
}

/// Renames `dir` aside in `parent` (same filesystem) as `.tmp-rm-LABEL-XXXXXX` and removes it:
/// once renamed it is gone from its name at once, and a removal cut short is swept later.
pub fn remove_aside(parent: &Path, label: &str, dir: &Path) -> io::Result<()> {
    let doomed = tempfile::Builder::new()
        .prefix(&format!("{REMOVED_PREFIX}{label}-"))
        .tempdir_in(parent)?
        .keep();
    if let Err(e) = fs::rename(dir, &doomed) {
        let _ = fs::remove_dir(&doomed);
        return Err(e);
    }
    File::open(parent)?.sync_all()?;
    fs::remove_dir_all(&doomed)
}

/// Removes from `parent` every scratch whose lock file `lock` nobody holds (past its first
/// minute) and everything renamed aside for removal.
pub fn sweep(parent: &Path, lock: &str) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with(PREFIX) {
            continue;
        }
        let past_grace = || {
            e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > GRACE))
        };
        let unlocked = || match File::open(e.path().join(lock)) {
            Ok(f) => {
                rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok()
            }
            Err(_) => true, // its writer died before it made its lock
        };
        if name.starts_with(REMOVED_PREFIX) || (past_grace() && unlocked()) {
            tracing::debug!(dir = %e.path().display(), "removing a leftover scratch directory");
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn age(dir: &Path, by: Duration) {
        File::open(dir)
            .unwrap()
            .set_modified(SystemTime::now() - by)
            .unwrap();
    }

    #[test]
    fn only_abandoned_scratch_is_swept() {
        let parent = tempfile::tempdir().unwrap();
        let live = Scratch::new_in(parent.path(), "live", "lock").unwrap();
        let mode = fs::metadata(live.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let (abandoned, lock) = Scratch::new_in(parent.path(), "dead", "lock")
            .unwrap()
            .keep();
        drop(lock); // its writer ended
        let (young, young_lock) = Scratch::new_in(parent.path(), "young", "lock")
            .unwrap()
            .keep();
        drop(young_lock);
        let unrelated = parent.path().join("machine");
        fs::create_dir(&unrelated).unwrap();
        for d in [live.path(), abandoned.as_path()] {
            age(d, GRACE * 2);
        }

        sweep(parent.path(), "lock");
        assert!(live.path().is_dir(), "a scratch whose writer runs");
        assert!(!abandoned.exists(), "a scratch whose writer ended");
        assert!(young.is_dir(), "a scratch in its first minute");
        assert!(unrelated.is_dir());
    }

    #[test]
    fn a_removal_cut_short_is_swept_and_a_finished_one_leaves_nothing() {
        let parent = tempfile::tempdir().unwrap();
        let victim = parent.path().join("victim");
        fs::create_dir_all(victim.join("sub")).unwrap();
        remove_aside(parent.path(), "victim", &victim).unwrap();
        assert_eq!(fs::read_dir(parent.path()).unwrap().count(), 0);

        let cut_short = parent.path().join(".tmp-rm-victim-abc");
        fs::create_dir_all(cut_short.join("sub")).unwrap();
        sweep(parent.path(), "lock");
        assert!(!cut_short.exists());
    }
}
