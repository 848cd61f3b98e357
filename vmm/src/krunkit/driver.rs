//! krunkit's process lifecycle. Nothing is kept in memory between calls: the REST socket says
//! whether the VM runs, the pidfile names the process to signal when the REST API cannot stop
//! it, and every path comes from the [`KrunkitConfig`].

use super::rest::{self, Endpoint, RestError, StateChange, VmState};
use super::{InvalidConfig, KrunkitConfig, command_line};
use std::fs;
use std::io::{self, BufRead, BufReader};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(20);

/// How to run krunkit and how long to wait for it.
#[derive(Debug, Clone)]
pub struct Driver {
    /// The krunkit executable (a name looked up in PATH, or a path).
    pub binary: PathBuf,
    /// From spawning to the REST API answering `Running`.
    pub start_timeout: Duration,
    /// From a graceful `Stop` to exit, before SIGTERM.
    pub stop_timeout: Duration,
    /// After `HardStop` or a signal, before the next escalation.
    pub signal_timeout: Duration,
}

impl Default for Driver {
    fn default() -> Self {
        Driver {
            binary: "krunkit".into(),
            start_timeout: Duration::from_secs(30),
            stop_timeout: Duration::from_secs(90),
            signal_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// REST `Stop` (the guest shuts down), then SIGTERM, then SIGKILL.
    Graceful,
    /// REST `HardStop`, then SIGKILL.
    Force,
}

/// How a stop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Nothing was running.
    Already,
    /// krunkit exited after the REST request.
    ByRequest,
    /// krunkit exited on SIGTERM.
    Terminated,
    Killed,
}

/// What `state` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// No krunkit serves this machine's REST socket.
    Stopped,
    /// krunkit runs and reports this state (e.g. [`rest::RUNNING`]).
    Vm(VmState),
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Invalid(#[from] InvalidConfig),
    #[error("krunkit already runs this machine")]
    AlreadyRunning,
    #[error("cannot prepare {0}")]
    Prepare(PathBuf, #[source] io::Error),
    #[error("cannot run {0} (install it: {hint})", hint = super::version::INSTALL_HINT)]
    Spawn(PathBuf, #[source] io::Error),
    #[error("krunkit exited during start-up ({0}): {1}")]
    Exited(String, String),
    #[error("krunkit's REST API did not report the VM running within {0:?}")]
    NoApi(Duration),
    #[error("the guest did not signal Ready within {0:?}")]
    NotReady(Duration),
    #[error("krunkit went away before the guest signalled Ready")]
    Died,
    #[error("the Ready channel failed")]
    Ready(#[source] io::Error),
    #[error(transparent)]
    Rest(RestError),
}

#[derive(Debug, thiserror::Error)]
pub enum StopError {
    #[error(transparent)]
    Rest(RestError),
    #[error("krunkit runs but its pidfile {0} names no process to signal")]
    NoPid(PathBuf),
    #[error("krunkit (pid {0}) is still running after SIGKILL")]
    Unkillable(i32),
}

/// A krunkit that started and reports the VM running.
#[derive(Debug)]
pub struct Running {
    ready: UnixListener,
    rest: Endpoint,
}

impl Driver {
    /// Starts krunkit for `c`; returns once its REST API reports the VM running. krunkit's
    /// stdout and stderr (start-up errors included) are appended to `log`.
    pub fn start(&self, c: &KrunkitConfig, log: &Path) -> Result<Running, StartError> {
        c.validate()?;
        match rest::get_state(&c.rest) {
            Err(RestError::Gone) => {}
            Ok(_) => return Err(StartError::AlreadyRunning),
            Err(e) => return Err(StartError::Rest(e)),
        }
        remove_leftovers(c).map_err(|(p, e)| StartError::Prepare(p, e))?;
        // The host listens on the Ready socket before the guest can connect (see READY_VSOCK_PORT).
        let ready = UnixListener::bind(&c.ready_socket)
            .map_err(|e| StartError::Prepare(c.ready_socket.clone(), e))?;
        let prepare = |e| StartError::Prepare(log.to_owned(), e);
        let out = fs::File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(prepare)?;
        let err = out.try_clone().map_err(prepare)?;
        let log_start = out.metadata().map_err(prepare)?.len();
        let mut child = Command::new(&self.binary)
            .args(command_line(c))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0) // outlives this command, and a ^C to it
            .spawn()
            .map_err(|e| StartError::Spawn(self.binary.clone(), e))?;
        tracing::debug!(pid = child.id(), "krunkit spawned");

        let deadline = Instant::now() + self.start_timeout;
        loop {
            if let Some(status) = child.try_wait().map_err(StartError::Ready)? {
                let _ = remove_leftovers(c);
                return Err(StartError::Exited(
                    status.to_string(),
                    read_from(log, log_start),
                ));
            }
            match rest::get_state(&c.rest) {
                Ok(s) if s.state == rest::RUNNING => break,
                Ok(_) | Err(RestError::Gone) => {}
                Err(e) => tracing::debug!(error = %e, "krunkit REST not ready"),
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let _ = remove_leftovers(c);
                return Err(StartError::NoApi(self.start_timeout));
            }
            std::thread::sleep(POLL);
        }
        reap_in_background(child);
        Ok(Running {
            ready,
            rest: c.rest.clone(),
        })
    }

    /// The machine's state, from krunkit's REST API alone.
    pub fn state(c: &KrunkitConfig) -> Result<State, RestError> {
        match rest::get_state(&c.rest) {
            Ok(s) => Ok(State::Vm(s)),
            Err(RestError::Gone) => Ok(State::Stopped),
            Err(e) => Err(e),
        }
    }

    /// Stops the VM and removes the sockets and pidfile krunkit leaves behind.
    pub fn stop(&self, c: &KrunkitConfig, mode: StopMode) -> Result<Stopped, StopError> {
        let outcome = self.stop_process(c, mode)?;
        let _ = remove_leftovers(c);
        Ok(outcome)
    }

    fn stop_process(&self, c: &KrunkitConfig, mode: StopMode) -> Result<Stopped, StopError> {
        let (change, wait) = match mode {
            StopMode::Graceful => (StateChange::Stop, self.stop_timeout),
            StopMode::Force => (StateChange::HardStop, self.signal_timeout),
        };
        match rest::change_state(&c.rest, change) {
            Err(RestError::Gone) => return Ok(Stopped::Already),
            Ok(_) => {
                if wait_gone(&c.rest, wait) {
                    return Ok(Stopped::ByRequest);
                }
            }
            // krunkit runs but refused the request: fall through to signals.
            Err(e) => tracing::warn!(error = %e, "krunkit refused {change:?}"),
        }
        // The REST socket still answers, so the pidfile krunkit wrote names a live krunkit.
        let pid = read_pid(&c.pidfile).ok_or_else(|| StopError::NoPid(c.pidfile.clone()))?;
        if mode == StopMode::Graceful {
            signal(pid, rustix::process::Signal::TERM);
            if wait_gone(&c.rest, self.signal_timeout) {
                return Ok(Stopped::Terminated);
            }
        }
        signal(pid, rustix::process::Signal::KILL);
        if wait_gone(&c.rest, self.signal_timeout) {
            Ok(Stopped::Killed)
        } else {
            Err(StopError::Unkillable(pid))
        }
    }
}

impl Running {
    /// Waits for the guest's `Ready[ DETAIL]` line on vsock port 1025; returns DETAIL (carbon-vm's
    /// guest sends its SSH host key, Podman's sends nothing). Fails early if krunkit goes away.
    pub fn wait_ready(self, timeout: Duration) -> Result<String, StartError> {
        let deadline = Instant::now() + timeout;
        let left = || deadline.saturating_duration_since(Instant::now());
        self.ready
            .set_nonblocking(true)
            .map_err(StartError::Ready)?;
        loop {
            let conn = match self.ready.accept() {
                Ok((conn, _)) => conn,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.check_alive()?;
                    if left().is_zero() {
                        return Err(StartError::NotReady(timeout));
                    }
                    std::thread::sleep(POLL);
                    continue;
                }
                Err(e) => return Err(StartError::Ready(e)),
            };
            conn.set_nonblocking(false).map_err(StartError::Ready)?;
            let mut reader = BufReader::new(conn);
            loop {
                reader
                    .get_ref()
                    .set_read_timeout(Some(left().clamp(POLL, Duration::from_secs(1))))
                    .map_err(StartError::Ready)?;
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    Ok(0) => break, // that connection ended without Ready: wait for the next one
                    Ok(_) => {
                        let line = line.trim();
                        if line == "Ready" {
                            return Ok(String::new());
                        }
                        if let Some(detail) = line.strip_prefix("Ready ") {
                            return Ok(detail.trim().to_owned());
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        self.check_alive()?;
                        if left().is_zero() {
                            return Err(StartError::NotReady(timeout));
                        }
                    }
                    Err(e) => return Err(StartError::Ready(e)),
                }
            }
        }
    }

    fn check_alive(&self) -> Result<(), StartError> {
        match rest::get_state(&self.rest) {
            Ok(_) => Ok(()),
            Err(RestError::Gone) => Err(StartError::Died),
            Err(e) => Err(StartError::Rest(e)),
        }
    }
}

/// krunkit never removes the vsock and REST sockets (nor its pidfile): a crashed run leaves them,
/// and a socket file in the way makes the next bind fail.
fn remove_leftovers(c: &KrunkitConfig) -> Result<(), (PathBuf, io::Error)> {
    let rest_socket = match &c.rest {
        Endpoint::Unix(p) => Some(p),
        Endpoint::Loopback(_) => None,
    };
    for p in [Some(&c.ready_socket), rest_socket, Some(&c.pidfile)]
        .into_iter()
        .flatten()
    {
        match fs::remove_file(p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err((p.clone(), e)),
            _ => {}
        }
    }
    Ok(())
}

/// Polls the REST endpoint until nobody serves it, at most `timeout`. True when gone.
fn wait_gone(at: &Endpoint, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if matches!(rest::get_state(at), Err(RestError::Gone)) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// krunkit is our child while this process lives: reap it when it exits, so that a
/// long-lived caller keeps no zombie (a short-lived CLI just exits and leaves it to init).
fn reap_in_background(mut child: Child) {
    std::thread::spawn(move || child.wait());
}

fn read_pid(pidfile: &Path) -> Option<i32> {
    let pid: i32 = fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
    (pid > 0).then_some(pid)
}

fn signal(pid: i32, sig: rustix::process::Signal) {
    if let Some(p) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

fn read_from(log: &Path, offset: u64) -> String {
    let s = fs::read(log).unwrap_or_default();
    let from = usize::try_from(offset).unwrap_or(0).min(s.len());
    let tail = &s[from..];
    String::from_utf8_lossy(&tail[tail.len().saturating_sub(2000)..])
        .trim()
        .to_owned()
}
