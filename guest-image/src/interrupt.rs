//! Image builds stopped by a signal. `image build` and `image pack` run for minutes and, killed
//! where they stand, would leave gigabytes of scratch, mmdebstrap's mounts and mmdebstrap itself
//! behind: its first process ignores a lone SIGTERM and waits for its workers, which only a signal
//! to their whole process group stops. So the CLI reports SIGINT, SIGTERM and SIGHUP here
//! ([`request`]) instead of dying; every child the build runs is in a process group of its own,
//! which gets the signal and is waited for, and (as root) a mount namespace of its own, so that
//! what it mounted goes with it; the build's own steps stop at their next [`check`], removing
//! their scratch on the way out.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

/// The first signal reported; 0 while none has been.
static SIGNAL: AtomicI32 = AtomicI32::new(0);
/// The process groups (their leaders' pids) of the children running now.
static GROUPS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

/// A build stopped by a signal, once its children have exited and its scratch is removed.
#[derive(Debug, thiserror::Error)]
#[error("interrupted by {}; nothing of it is left behind", name(*.0))]
pub struct Interrupted(pub i32);

fn name(signal: i32) -> String {
    match signal {
        1 => "SIGHUP".into(),
        2 => "SIGINT".into(),
        15 => "SIGTERM".into(),
        n => format!("signal {n}"),
    }
}

fn groups() -> MutexGuard<'static, Vec<i32>> {
    GROUPS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Stops the build: signals the children's process groups, and every later [`check`] fails.
pub fn request(signal: i32) {
    let _ = SIGNAL.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
    let Some(sig) = Signal::from_named_raw(signal) else {
        return;
    };
    for &leader in groups().iter() {
        if let Some(pid) = Pid::from_raw(leader) {
            let _ = rustix::process::kill_process_group(pid, sig);
        }
    }
}

/// `Err` once a signal asked the build to stop.
pub fn check() -> Result<(), Interrupted> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => Ok(()),
        s => Err(Interrupted(s)),
    }
}

/// `err`, unless a signal stopped the build: then that is why it failed.
pub fn or_interrupted<E: From<Interrupted>>(err: E) -> E {
    match check() {
        Err(i) => i.into(),
        Ok(()) => err,
    }
}

/// Runs `cmd` to its end in a process group of its own, which [`request`] signals until it has
/// been waited for, with a temporary directory (TMPDIR) of its own, removed after it, and (as
/// root, on Linux) a mount namespace of its own: a tool killed half-way (mmdebstrap: its worker, by the signal,
/// before its clean-up) leaves neither mounts nor files. Not started at all once a signal came.
fn supervised<T>(cmd: &mut Command, wait: impl FnOnce(Child) -> io::Result<T>) -> io::Result<T> {
    let tmp = tempfile::Builder::new().prefix(".carbon-tool-").tempdir()?;
    cmd.process_group(0).env("TMPDIR", tmp.path());
    private_mounts(cmd);
    let child = {
        // Spawned under the lock: a signal either finds the child listed or stops it starting.
        let mut groups = groups();
        check().map_err(io::Error::other)?;
        let child = cmd.spawn()?;
        groups.push(child.id() as i32);
        child
    };
    let leader = child.id() as i32;
    let result = wait(child);
    if check().is_err() {
        drain(leader);
    }
    groups().retain(|&g| g != leader);
    drop(tmp);
    result
}

/// What a tool mounts (mmdebstrap: /proc, /sys and /dev in the root it builds) stays in a mount
/// namespace of the tool's own, gone with its last process: killed at any moment, it cannot leave
/// a mount on the host, where removing the scratch would walk into it. mmdebstrap's own clean-up
/// on a signal is not reliable (its worker's handlers are set only while it mounts). Only root
/// can do this, and only root's mmdebstrap mounts on the host (a user's runs in its own
/// namespaces already).
#[cfg(target_os = "linux")]
fn private_mounts(cmd: &mut Command) {
    if !rustix::process::geteuid().is_root() {
        return;
    }
    // SAFETY: unshare(2) and mount(2) are async-signal-safe system calls, made between fork and
    // exec with nothing else running in the child.
    unsafe {
        cmd.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWNS) != 0
                || libc::mount(
                    c"none".as_ptr(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn private_mounts(_: &mut Command) {}

/// How long a signalled group's other processes get to finish after its leader: mmdebstrap's
/// first process exits at once, its worker after it.
const DRAIN: Duration = Duration::from_secs(60);

/// Waits until no process is left in the group `leader` led (bounded: then SIGKILL).
fn drain(leader: i32) {
    let Some(group) = Pid::from_raw(leader) else {
        return;
    };
    let deadline = Instant::now() + DRAIN;
    while rustix::process::test_kill_process_group(group).is_ok() {
        if Instant::now() > deadline {
            tracing::warn!("process group {leader} still runs {DRAIN:?} after the signal: killed");
            let _ = rustix::process::kill_process_group(group, Signal::KILL);
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// [`Command::status`], supervised.
pub fn status(cmd: &mut Command) -> io::Result<ExitStatus> {
    supervised(cmd, |mut c| c.wait())
}

/// [`Command::output`], supervised: stdin empty, stdout and stderr captured.
pub fn output(cmd: &mut Command) -> io::Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    supervised(cmd, Child::wait_with_output)
}
