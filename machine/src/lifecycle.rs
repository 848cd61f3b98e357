//! start / stop / remove / state of a machine on the QEMU driver, with gvproxy networking and
//! an SSH tunnel for the guest's Podman socket.

use crate::process::{self, Signal};
use crate::store::*;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
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
    #[error("QMP")]
    Qmp(#[from] vmm::qmp::QmpError),
    #[error(transparent)]
    Podman(#[from] crate::podman::PodmanError),
    #[error("I/O error")]
    Io(#[from] std::io::Error),
}

fn qemu_marker(m: &MachineDir) -> String {
    format!("file={},", m.path(DISK).display())
}

fn gvproxy_marker(m: &MachineDir) -> String {
    format!("unix://{}", m.socket(NET_SOCKET).display())
}

fn qemu_pid(m: &MachineDir) -> Option<i32> {
    process::live_pid(&m.path(QEMU_PID), &qemu_marker(m))
}

fn gvproxy_pid(m: &MachineDir) -> Option<i32> {
    process::live_pid(&m.path(GVPROXY_PID), &gvproxy_marker(m))
}

fn forward_pid(m: &MachineDir) -> Option<i32> {
    let marker = format!("{}:", m.socket(PODMAN_SOCKET).display());
    process::live_pid(&m.path(FORWARD_PID), &marker)
}

pub fn state(m: &MachineDir) -> State {
    match (qemu_pid(m), gvproxy_pid(m), forward_pid(m)) {
        (Some(_), Some(_), Some(_)) => State::Running,
        (Some(_), None, _) => State::Broken("gvproxy is not running: no network".into()),
        (Some(_), Some(_), None) => State::Broken(
            "the Podman socket is not forwarded (a start did not finish, or the tunnel dropped; `carbon-vm start` repairs it)".into(),
        ),
        (None, ..) => State::Stopped,
    }
}

/// Stops leftovers of a dead run: a gvproxy or tunnel without its VM, pidfiles, sockets.
fn clean_stale(m: &MachineDir) {
    for pid in [gvproxy_pid(m), forward_pid(m)].into_iter().flatten() {
        process::signal(pid, Signal::KILL);
        process::wait_exit(pid, Duration::from_secs(5));
    }
    for f in [QEMU_PID, GVPROXY_PID, FORWARD_PID] {
        let _ = fs::remove_file(m.path(f));
    }
    let _ = fs::remove_dir_all(&m.run_dir);
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn tail(path: &Path, bytes: usize) -> String {
    let s = fs::read(path).unwrap_or_default();
    String::from_utf8_lossy(&s[s.len().saturating_sub(bytes)..]).into_owned()
}

/// Boots the machine; returns once the guest said Ready and the Podman API answers.
pub fn start(m: &MachineDir, accel: vmm::qemu::Accel) -> Result<Run, LifecycleError> {
    let _lock = m.lock()?;
    let spec = m.spec()?;
    // Up already: a start that got the guest's Ready pinned the host key (one interrupted before
    // did not, and that VM is restarted rather than trusted blindly); only the tunnel may be due.
    if qemu_pid(m).is_some()
        && gvproxy_pid(m).is_some()
        && m.path(KNOWN_HOSTS).is_file()
        && let Some(run) = m.run()
    {
        if forward_pid(m).is_none() {
            start_forward(m, &run)?;
        }
        wait_podman(m, START_TIMEOUT)?;
        return Ok(run);
    }
    if let Some(pid) = qemu_pid(m) {
        process::signal(pid, Signal::KILL);
        process::wait_exit(pid, Duration::from_secs(10));
    }
    let _ = fs::remove_file(m.path(KNOWN_HOSTS));
    clean_stale(m);
    // Before anything runs: a host that cannot serve the GPU is refused, not half-started.
    let gpu = if spec.gpu {
        Some(crate::gpu::qemu_device()?)
    } else {
        None
    };
    mkdir_private(&m.run_dir)?;
    let run = Run {
        ssh_port: free_port()?,
        accel: match accel {
            vmm::qemu::Accel::Kvm => "kvm",
            vmm::qemu::Accel::Tcg => "tcg",
        }
        .into(),
    };
    m.write_json(RUN, &run)?;

    // gvproxy first: QEMU connects to its socket at start-up.
    let gv_args = vmm::gvproxy::command_line(&vmm::gvproxy::GvproxyConfig {
        listen: vmm::gvproxy::Listen::Qemu(m.socket(NET_SOCKET)),
        ssh_port: run.ssh_port,
        pidfile: m.path(GVPROXY_PID),
        log: m.path(GVPROXY_LOG),
    });
    let mut gv = Command::new("gvproxy")
        .args(&gv_args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0) // outlives this command, and a ^C to it
        .spawn()
        .map_err(|e| {
            LifecycleError::Missing(
                "gvproxy",
                "scripts/install-deps installs Debian's gvproxy",
                e,
            )
        })?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !m.socket(NET_SOCKET).exists() {
        if let Some(status) = gv.try_wait()? {
            return Err(LifecycleError::Exited(
                "gvproxy",
                format!("{status}: {}", tail(&m.path(GVPROXY_LOG), 2000)),
            ));
        }
        if Instant::now() > deadline {
            return Err(LifecycleError::Exited(
                "gvproxy",
                "its socket never appeared".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    let ready = UnixListener::bind(m.socket(READY_SOCKET))?;
    let _ = fs::remove_file(m.path(CONSOLE_LOG));
    let cfg = vmm::qemu::QemuConfig {
        name: spec.name.clone(),
        cpus: spec.cpus,
        memory_mib: spec.memory_mib,
        accel,
        kernel: spec.kernel.clone(),
        initrd: spec.initrd.clone(),
        cmdline: spec.cmdline.clone(),
        disk: m.path(DISK),
        net_socket: m.socket(NET_SOCKET),
        mac: vmm::gvproxy::GUEST_MAC.into(),
        qmp_socket: m.socket(QMP_SOCKET),
        ready_socket: m.socket(READY_SOCKET),
        console_log: m.path(CONSOLE_LOG),
        pidfile: m.path(QEMU_PID),
        oem_strings: credentials(m, &spec.name)?,
        gpu,
    };
    // -daemonize: QEMU returns once the VM is set up and running in the background.
    let out = Command::new(venus::probe::QEMU)
        .args(vmm::qemu::command_line(&cfg))
        .envs(vmm::qemu::environment(&cfg))
        .stdin(Stdio::null())
        .process_group(0)
        .output()
        .map_err(|e| {
            LifecycleError::Missing(venus::probe::QEMU, "apt-get install qemu-system-x86", e)
        })?;
    if !out.status.success() {
        clean_stale(m);
        return Err(LifecycleError::Exited(
            "qemu",
            String::from_utf8_lossy(&out.stderr).trim().into(),
        ));
    }
    tracing::info!(machine = %spec.name, "vmm running");
    let started = Instant::now();
    let host_key = wait_ready(m, &ready, START_TIMEOUT)?;
    tracing::info!(machine = %spec.name, "guest ready");
    fs::write(
        m.path(KNOWN_HOSTS),
        format!("{} {host_key}\n", host_alias(&spec.name)),
    )?;
    start_forward(m, &run)?;
    // Podman's service is socket-activated: its first answer can take long on a loaded TCG host.
    wait_podman(m, START_TIMEOUT.saturating_sub(started.elapsed()))?;
    tracing::info!(machine = %spec.name, "podman api answers");
    Ok(run)
}

/// Starts the SSH tunnel to the guest's Podman socket (the guest is Ready: sshd listens).
fn start_forward(m: &MachineDir, run: &Run) -> Result<(), LifecycleError> {
    let log = fs::File::create(m.path(FORWARD_LOG))?;
    let child = crate::ssh::podman_forward(m, run.ssh_port)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0) // outlives this command, and a ^C to it
        .spawn()
        .map_err(|e| LifecycleError::Missing("ssh", "apt-get install openssh-client", e))?;
    write_atomic(&m.path(FORWARD_PID), child.id().to_string().as_bytes())?;
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

/// Waits for QEMU to connect the Ready channel and the guest to write `Ready <host key>`.
fn wait_ready(
    m: &MachineDir,
    listener: &UnixListener,
    timeout: Duration,
) -> Result<String, LifecycleError> {
    let deadline = Instant::now() + timeout;
    let not_ready = || LifecycleError::NotReady(timeout, tail(&m.path(CONSOLE_LOG), 3000));
    let (conn, _) = listener.accept()?; // QEMU connects during its set-up, before -daemonize returns
    let mut reader = BufReader::new(conn);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(not_ready());
        }
        reader
            .get_ref()
            .set_read_timeout(Some(left.min(Duration::from_secs(5))))?;
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => return Err(not_ready()), // QEMU went away
            Ok(_) => {
                if let Some(key) = line.trim().strip_prefix("Ready ") {
                    return Ok(key.to_owned());
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if qemu_pid(m).is_none() {
                    return Err(LifecycleError::Exited(
                        "qemu",
                        tail(&m.path(CONSOLE_LOG), 3000),
                    ));
                }
                if gvproxy_pid(m).is_none() {
                    return Err(LifecycleError::Exited(
                        "gvproxy",
                        tail(&m.path(GVPROXY_LOG), 2000),
                    ));
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The Podman API answers `GET /_ping` with `OK` through gvproxy's forwarded socket.
fn wait_podman(m: &MachineDir, timeout: Duration) -> Result<(), LifecycleError> {
    let sock = m.socket(PODMAN_SOCKET);
    let deadline = Instant::now() + timeout;
    loop {
        let answer = UnixStream::connect(&sock).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
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
        if forward_pid(m).is_none() {
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

/// Powers the guest down through QMP (or kills QEMU with `force`), then gvproxy.
pub fn stop(m: &MachineDir, force: bool) -> Result<(), LifecycleError> {
    let _lock = m.lock()?;
    if let Some(pid) = qemu_pid(m) {
        if force {
            process::signal(pid, Signal::KILL);
            process::wait_exit(pid, Duration::from_secs(10));
        } else {
            vmm::qmp::Qmp::connect(&m.socket(QMP_SOCKET))?.execute("system_powerdown")?;
            if !process::wait_exit(pid, STOP_TIMEOUT) {
                return Err(LifecycleError::NoPowerdown(STOP_TIMEOUT));
            }
        }
    }
    for pid in [forward_pid(m), gvproxy_pid(m)].into_iter().flatten() {
        process::signal(pid, Signal::TERM);
        if !process::wait_exit(pid, Duration::from_secs(5)) {
            process::signal(pid, Signal::KILL);
        }
    }
    clean_stale(m);
    Ok(())
}

/// Removes the machine directory (renamed away first, so it disappears whole).
pub fn remove(store: &Store, m: &MachineDir, force: bool) -> Result<(), LifecycleError> {
    if state(m) != State::Stopped {
        if !force {
            return Err(LifecycleError::Running(m.name.clone()));
        }
        stop(m, true)?;
    }
    clean_stale(m);
    crate::podman::remove_connection(&m.name)?;
    let doomed = store.machines.join(format!(".tmp-rm-{}", m.name));
    fs::rename(&m.dir, &doomed)?;
    fs::remove_dir_all(&doomed)?;
    Ok(())
}
