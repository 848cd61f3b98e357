//! Free space: a pull refuses up front what the disk holding the cache cannot take, so a hostile
//! or mistaken source cannot fill it.

use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SpaceError {
    #[error("not enough space in {dir}: {needed} bytes needed, {available} available")]
    NotEnough {
        dir: PathBuf,
        needed: u64,
        available: u64,
    },
    #[error("cannot read the free space of {0}")]
    Query(PathBuf, #[source] io::Error),
}

/// Bytes an unprivileged process may still write to the filesystem holding `dir`.
pub fn available(dir: &Path) -> Result<u64, SpaceError> {
    let st = rustix::fs::statvfs(dir).map_err(|e| SpaceError::Query(dir.into(), e.into()))?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Fails unless the filesystem holding `dir` has `needed` bytes free.
pub fn ensure(dir: &Path, needed: u64) -> Result<(), SpaceError> {
    let available = available(dir)?;
    if needed > available {
        return Err(SpaceError::NotEnough {
            dir: dir.into(),
            needed,
            available,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_than_the_disk_has_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let free = available(dir.path()).unwrap();
        assert!(free > 0);
        ensure(dir.path(), 1).unwrap();
        let Err(SpaceError::NotEnough { needed, .. }) = ensure(dir.path(), u64::MAX) else {
            panic!("u64::MAX bytes fit");
        };
        assert_eq!(needed, u64::MAX);
    }
}
