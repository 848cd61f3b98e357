use rustix::process::Pid;
use std::fs::File;
use std::io;
use std::path::Path;
use std::time::Duration;

/// The process's arguments joined by spaces, from /proc; None when it does not exist.
pub fn command_line(pid: i32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(String::from_utf8_lossy(&raw).replace('\0', " "))
}

/// Waits on a pidfd, which becomes readable when the process exits. True when it is gone.
pub fn wait_exit(pid: Pid, timeout: Duration) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let Ok(fd) = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) else {
        return true; // no such process
    };
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    let t = Timespec {
        tv_sec: timeout.as_secs() as i64,
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    matches!(poll(&mut fds, Some(&t)), Ok(n) if n > 0)
}

pub fn host_ram_bytes() -> u64 {
    let info = rustix::system::sysinfo();
    info.totalram as u64 * u64::from(info.mem_unit.max(1))
}

/// Copies `src` to the new file `dst`: a reflink (FICLONE) where the filesystem can, else its
/// data extents only, so that holes stay holes.
pub fn clone_file(src: &Path, dst: &Path) -> io::Result<()> {
    let s = File::open(src)?;
    let d = File::options().write(true).create_new(true).open(dst)?;
    if rustix::fs::ioctl_ficlone(&d, &s).is_err() {
        copy_extents(&s, &d)?;
    }
    Ok(())
}

fn copy_extents(s: &File, d: &File) -> io::Result<()> {
    use rustix::fs::{SeekFrom, copy_file_range, seek};
    let len = s.metadata()?.len();
    let mut pos = 0u64;
    while pos < len {
        let start = match seek(s, SeekFrom::Data(pos)) {
            Ok(p) => p,
            Err(rustix::io::Errno::NXIO) => break, // only a hole remains
            Err(e) => return Err(e.into()),
        };
        let end = seek(s, SeekFrom::Hole(start))?;
        let (mut off_in, mut off_out) = (start, start);
        while off_in < end {
            let want = (end - off_in) as usize;
            let n = copy_file_range(s, Some(&mut off_in), d, Some(&mut off_out), want)?;
            if n == 0 {
                break;
            }
        }
        pos = end;
    }
    Ok(())
}
