//! start / stop / remove / state of a machine, dispatched on its driver (qemu.rs, krunkit.rs),
//! with gvproxy networking (gvproxy.rs) and what both drivers share: the guest's credentials,
//! the pinned host key, the Podman socket tunnel (tunnel.rs), the Podman API wait.

mod gvproxy;
mod krunkit;
mod qemu;
mod tunnel;

use crate::store::*;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Under TCG a first boot takes minutes on a small host; KVM takes seconds.
pub const START_TIMEOUT: Duration = Duration::from_secs(900);
pub const STOP_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "lowercase")]
pub enum State {
    Running,
    Stopped,
    /// The VMM runs but something it needs does not.
    Broken(String),
}

/// Why a machine whose VMM runs is broken when its gvproxy does not.
const NO_NETWORK: &str = "gvproxy is not running: no network";
/// Why it is broken when its network runs but the Podman socket tunnel does not.
const NO_TUNNEL: &str = "the Podman socket is not forwarded (a start did not finish, or the tunnel dropped; `carbon-vm start` repairs it)";

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot run {0} (install it: {1})")]
    Missing(&'static str, &'static str, #[source] std::io::Error),
    #[error("{0} exited during start-up: {1}")]
    Exited(&'static str, String),
    #[error("the guest did not signal Ready within {0:?}; console log tail:\n{1}")]
    NotReady(Duration, String),
    #[error("the guest said Ready without its SSH host key (is its image a carbon-vm guest?)")]
    NoHostKey,
    #[error("the Podman API did not answer on {0}; the tunnel's log:\n{1}")]
    NoPodman(String, String),
    #[error("the guest did not power down within {0:?} (use --force)")]
    NoPowerdown(Duration),
    #[error("machine {0} is not running (`carbon-vm start {0}`)")]
    NotRunning(String),
    #[error("machine {0} is running (stop it first, or use --force)")]
    Running(String),
    #[error("this host cannot give the machine its Venus GPU")]
    Gpu(#[from] venus::probe::ProbeError),
    #[error(transparent)]
    GpuMemory(#[from] vmm::krunkit::NoRoomForGpu),
    #[error("QMP")]
    Qmp(#[from] vmm::qmp::QmpError),
    #[error("krunkit")]
    Krunkit(#[from] vmm::krunkit::StartError),
    #[error("cannot stop krunkit")]
    KrunkitStop(#[from] vmm::krunkit::StopError),
    #[error(transparent)]
    Podman(#[from] crate::podman::PodmanError),
    #[error(transparent)]
    PodmanMachine(#[from] crate::podman_machine::ExposeError),
    #[error("I/O error")]
    Io(#[from] std::io::Error),
}

/// How this host runs VMMs; the CLI chooses from its environment.
#[derive(Debug, Clone)]
pub struct StartOptions {
    pub accel: vmm::qemu::Accel,
    /// The krunkit executable (a name looked up in PATH, or a path).
    pub krunkit: PathBuf,
    /// How long to wait for the Podman API once the guest is Ready; by default what is left of
    /// [`START_TIMEOUT`].
    pub podman_timeout: Option<Duration>,
}

/// Machines are QEMU's unless krunkit's (create refuses libkrun).
fn is_krunkit(spec: &Spec) -> bool {
    spec.driver == vmm::DriverKind::Krunkit
}

pub fn state(m: &MachineDir) -> State {
    match vmm_state(m) {
        State::Running if tunnel::pid(m).is_none() => State::Broken(NO_TUNNEL.into()),
        s => s,
    }
}

/// The VMM's and gvproxy's state, the tunnel left aside.
fn vmm_state(m: &MachineDir) -> State {
    match m.spec() {
        Ok(spec) if is_krunkit(&spec) => krunkit::state(m, &spec),
        _ => qemu::state(m),
    }
}

/// Boots the machine; returns once the guest said Ready and the Podman API answers.
pub fn start(m: &MachineDir, o: &StartOptions) -> Result<Run, LifecycleError> {
    let _lock = m.lock()?;
    let spec = m.spec()?;
    // Up already: a start that got the guest's Ready pinned the host key (one interrupted before
    // did not, and that VM is restarted rather than trusted blindly); only the tunnel may be due.
    if vmm_state(m) == State::Running
        && m.path(KNOWN_HOSTS).is_file()
        && let Some(run) = m.run()
    {
        if tunnel::pid(m).is_none() {
            tunnel::start(m, run.ssh_port)?;
        }
        wait_podman(m, o.podman_timeout.unwrap_or(START_TIMEOUT))?;
        return Ok(run);
    }
    if is_krunkit(&spec) {
        krunkit::start(m, &spec, o)
    } else {
        qemu::start(m, &spec, o)
    }
}

/// Shuts the guest down (or kills its VMM with `force`), then gvproxy.
pub fn stop(m: &MachineDir, force: bool) -> Result<(), LifecycleError> {
    let _lock = m.lock()?;
    let spec = m.spec()?;
    if is_krunkit(&spec) {
        krunkit::stop(m, &spec, force)
    } else {
        qemu::stop(m, force)
    }
}

/// Removes the machine directory (renamed away first, so it disappears whole), its Podman
/// connection and its Podman machine file.
pub fn remove(store: &Store, m: &MachineDir, force: bool) -> Result<(), LifecycleError> {
    if state(m) != State::Stopped {
        if !force {
            return Err(LifecycleError::Running(m.name.clone()));
        }
        stop(m, true)?;
    }
    let spec = m.spec()?;
    if is_krunkit(&spec) {
        krunkit::clean_stale(m);
    } else {
        qemu::clean_stale(m);
    }
    crate::podman::remove_connection(&m.name)?;
    if let Some(pm) = &spec.podman_machine {
        crate::podman_machine::remove(&pm.file, &m.path(DISK))?;
    }
    let doomed = store.machines.join(format!(".tmp-rm-{}", m.name));
    fs::rename(&m.dir, &doomed)?;
    fs::remove_dir_all(&doomed)?;
    Ok(())
}

/// The SSH host-key alias: the port changes per start, the pinned key does not.
pub fn host_alias(name: &str) -> String {
    format!("carbon-vm-{name}")
}

/// systemd credentials for the guest (SMBIOS OEM strings): root's SSH key and the hostname.
fn credentials(m: &MachineDir, name: &str) -> Result<Vec<String>, LifecycleError> {
    let pubkey = fs::read_to_string(m.path(&format!("{KEY}.pub")))?;
    Ok(vec![
        format!(
            "io.systemd.credential:ssh.authorized_keys.root={}",
            pubkey.trim()
        ),
        format!("io.systemd.credential:system.hostname={name}"),
    ])
}

/// After the guest's Ready: pins its host key (from that private channel, so SSH never trusts
/// a key on first use), opens the Podman socket tunnel and waits for the Podman API.
fn after_ready(
    m: &MachineDir,
    name: &str,
    host_key: &str,
    run: &Run,
    podman_timeout: Duration,
) -> Result<(), LifecycleError> {
    if host_key.is_empty() {
        return Err(LifecycleError::NoHostKey);
    }
    tracing::info!(machine = %name, "guest ready");
    fs::write(
        m.path(KNOWN_HOSTS),
        format!("{} {host_key}\n", host_alias(name)),
    )?;
    tunnel::start(m, run.ssh_port)?;
    // Podman's service is socket-activated: its first answer can take long on a loaded TCG host.
    wait_podman(m, podman_timeout)?;
    tracing::info!(machine = %name, "podman api answers");
    Ok(())
}

/// The Podman API answers `GET /_ping` with `OK` through the tunnel's socket.
fn wait_podman(m: &MachineDir, timeout: Duration) -> Result<(), LifecycleError> {
    let sock = m.socket(PODMAN_SOCKET);
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let answer = UnixStream::connect(&sock).and_then(|mut s| {
            s.set_read_timeout(Some(
                left.clamp(Duration::from_secs(1), Duration::from_secs(10)),
            ))?;
            s.write_all(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")?;
            let mut r = String::new();
            s.read_to_string(&mut r)?;
            Ok(r)
        });
        if answer
            .as_deref()
            .is_ok_and(|r| r.starts_with("HTTP/1.") && r.ends_with("OK"))
        {
            return Ok(());
        }
        if tunnel::pid(m).is_none() {
            return Err(LifecycleError::Exited(
                "ssh (the Podman socket tunnel)",
                tail(&m.path(FORWARD_LOG), 2000),
            ));
        }
        if Instant::now() > deadline {
            return Err(LifecycleError::NoPodman(
                sock.display().to_string(),
                tail(&m.path(FORWARD_LOG), 2000),
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub(crate) fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn tail(path: &Path, bytes: usize) -> String {
    let s = fs::read(path).unwrap_or_default();
    String::from_utf8_lossy(&s[s.len().saturating_sub(bytes)..]).into_owned()
}
