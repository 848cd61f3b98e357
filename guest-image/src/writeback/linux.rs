use std::fs::File;
use std::os::fd::AsRawFd;

/// Starts asynchronous writeback of `len` bytes at `offset`. Best effort: an error only means the
/// final fsync does more.
pub fn start(file: &File, offset: u64, len: u64) {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: the fd is valid for the duration of the call (borrowed from `file`), and
    // sync_file_range only reads its integer arguments.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}
