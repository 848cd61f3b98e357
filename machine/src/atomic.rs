//! The one way carbon-vm writes a file others read (its state, Podman's files): a temporary file
//! in the same directory, synced, renamed over (or, without `replace`, next to nothing), and the
//! directory synced, so a reader sees the old file or the whole new one, even after a crash.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Writes `data` to `path` with `mode` (default 0600). Without `replace`, an existing file is
/// left as it is and the error is `AlreadyExists`.
pub(crate) fn write(path: &Path, data: &[u8], mode: Option<u32>, replace: bool) -> io::Result<()> {
    let dir = path.parent().expect("files live in a directory");
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(data)?;
    if let Some(mode) = mode {
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(mode))?;
    }
    tmp.as_file().sync_all()?;
    if replace {
        tmp.persist(path).map_err(|e| e.error)?;
    } else {
        tmp.persist_noclobber(path).map_err(|e| e.error)?;
    }
    fs::File::open(dir)?.sync_all()
}
