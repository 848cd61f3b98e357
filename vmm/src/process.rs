//! Processes carbon-vm started and no longer has as children: found by pidfile, recognised by
//! their command line (a PID reused by another program is not our VMM), waited for without
//! polling, and signalled.

use crate::platform;
use std::path::Path;
use std::time::Duration;

pub use rustix::process::Signal;

/// The PID in `pidfile` if that process is alive and its command line contains `marker`.
pub fn live_pid(pidfile: &Path, marker: &str) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
    platform::command_line(pid)?.contains(marker).then_some(pid)
}

/// Waits until process `pid` has exited, at most `timeout`. True when it is gone.
pub fn wait_exit(pid: i32, timeout: Duration) -> bool {
    match rustix::process::Pid::from_raw(pid) {
        Some(p) => platform::wait_exit(p, timeout),
        None => true,
    }
}

pub fn signal(pid: i32, sig: Signal) {
    if let Some(p) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(p, sig);
    }
}
