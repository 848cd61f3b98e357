//! Processes carbon-vm started and no longer has as children: found by pidfile, recognised by
//! their command line (a PID reused by another program is not our VMM), waited for without
//! polling, and signalled.

use std::path::Path;
use std::time::Duration;

pub use rustix::process::Signal;

/// The PID in `pidfile` if that process is alive and its command line contains `marker`.
pub fn live_pid(pidfile: &Path, marker: &str) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    cmdline.contains(marker).then_some(pid)
}

/// Waits until process `pid` has exited, at most `timeout`. True when it is gone.
pub fn wait_exit(pid: i32, timeout: Duration) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let Some(p) = rustix::process::Pid::from_raw(pid) else {
        return true;
    };
    let Ok(fd) = rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()) else {
        return true; // no such process
    };
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    let t = Timespec {
        tv_sec: timeout.as_secs() as i64,
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    matches!(poll(&mut fds, Some(&t)), Ok(n) if n > 0)
}

pub fn signal(pid: i32, sig: Signal) {
    if let Some(p) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(p, sig);
    }
}
