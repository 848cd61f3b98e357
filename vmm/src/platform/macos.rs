use rustix::process::Pid;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The process's command line as `ps` shows it (macOS has no /proc); None when it does not exist.
pub fn command_line(pid: i32) -> Option<String> {
    let out = Command::new("/bin/ps")
        .args(["-o", "command=", "-p", &pid.to_string()])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Waits for the process's NOTE_EXIT on a kqueue (works for processes that are not our
/// children). True when it is gone.
pub fn wait_exit(pid: Pid, timeout: Duration) -> bool {
    use rustix::event::kqueue::{Event, EventFilter, EventFlags, ProcessEvents, kevent, kqueue};
    use std::mem::MaybeUninit;
    let Ok(kq) = kqueue() else {
        return false;
    };
    let change = Event::new(
        EventFilter::Proc {
            pid,
            flags: ProcessEvents::EXIT,
        },
        EventFlags::ADD | EventFlags::ONESHOT,
        std::ptr::null_mut(),
    );
    let mut out = [MaybeUninit::<Event>::uninit(); 1];
    // SAFETY: the change list names a process, not a file descriptor, so no descriptor has to
    // outlive the kqueue.
    match unsafe { kevent(&kq, &[change], &mut out, Some(timeout)) } {
        // NOTE_EXIT, or EV_ERROR with ESRCH: the process had exited before it could be watched.
        Ok((events, _)) => !events.is_empty(),
        Err(e) => e == rustix::io::Errno::SRCH,
    }
}

/// `hw.memsize`, the host's RAM; 0 when unknown (fit_memory then applies krunkit's limits only).
pub fn host_ram_bytes() -> u64 {
    Command::new("/usr/sbin/sysctl")
        .args(["-n", "hw.memsize"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(0)
}

/// Copies `src` to the new file `dst`: std's copy clones (clonefile) on APFS.
pub fn clone_file(src: &Path, dst: &Path) -> std::io::Result<()> {
    std::fs::copy(src, dst).map(drop)
}
