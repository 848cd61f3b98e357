//! The ggml device's host side (`create --ggml`, docs/gpu.md): ggml's RPC server
//! (`ggml-rpc-server`, on the host's own backend) for one machine, kept running by a supervisor
//! of carbon-vm's own ([`serve`], the hidden `ggml-serve` command) for as long as the machine's
//! VMM runs.
//!
//! ggml's RPC protocol has no authentication and its server listens on TCP only, where every
//! local user could reach it. So on Linux the supervisor first moves into a network namespace of
//! its own (in a user namespace: no privilege needed) where the server listens, on that
//! namespace's loopback, and the only way in is the supervisor's relay from a unix socket in the
//! machine's private runtime directory. The machine's SSH tunnel serves that socket in the guest
//! (`ssh -R`), where the device's containers reach it (configs/guest/.../ggml-relay). Elsewhere
//! (macOS) the server listens on a loopback port of the host, which other local users could reach:
//! docs/internals.md says so.

use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The hidden CLI command that runs [`serve`].
pub const SERVE_COMMAND: &str = "ggml-serve";
/// Where a container with the device reaches the server: 127.0.0.1 in its own network
/// namespace (ggml's default RPC port).
pub const CONTAINER_ENDPOINT: &str = "127.0.0.1:50052";
/// The server's line that names its protocol version: `Starting RPC server v3.6.0`.
const VERSION_LINE: &str = "Starting RPC server v";
/// How long a connection waits for a server that is (re)starting.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// A server that ran this long before it died is restarted at once; one that dies sooner waits
/// longer each time, up to [`MAX_BACKOFF`].
const STABLE: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What the supervisor says of its server, in the runtime directory (`inspect` reads it).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServerState {
    /// The server's process, while one runs.
    pub pid: Option<i32>,
    /// Its RPC protocol version, as it printed it.
    pub version: Option<String>,
    /// How many times it was started (restarts + 1).
    pub starts: u32,
    /// The host's loopback port it listens on, where it has no network of its own (macOS): a
    /// control port the machines' walls keep their guests from.
    pub host_port: Option<u16>,
}

/// The supervisor's arguments.
#[derive(Debug, Clone)]
pub struct Serve {
    /// The unix socket the relay serves (the tunnel's end on the host).
    pub socket: PathBuf,
    /// Where [`ServerState`] is written.
    pub state: PathBuf,
    /// The machine's VMM: the supervisor ends with it.
    pub vmm_pid: i32,
    /// The server's command line (`ggml-rpc-server` and any options of the user's); the
    /// supervisor appends `-H 127.0.0.1 -p PORT`.
    pub server: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum GgmlError {
    #[error(
        "cannot give ggml's RPC server a network namespace of its own (unprivileged user namespaces: \
         sysctl kernel.unprivileged_userns_clone=1)"
    )]
    Namespace(#[source] io::Error),
    #[error("cannot serve the ggml device at {0}")]
    Socket(PathBuf, #[source] io::Error),
    #[error("no ggml RPC server command was given")]
    NoServer,
}

/// Runs the supervisor until the VMM `s.vmm_pid` exits: the server, restarted when it dies, and
/// the relay from `s.socket` to it. Its own messages and the server's output go to stderr (the
/// machine's ggml.log). Call it before any other thread starts (a user namespace needs that).
pub fn serve(s: Serve) -> Result<(), GgmlError> {
    if s.server.is_empty() {
        return Err(GgmlError::NoServer);
    }
    let addr = private_network().map_err(GgmlError::Namespace)?;
    let state = ServerState {
        host_port: (!cfg!(target_os = "linux")).then_some(addr.port()),
        ..ServerState::default()
    };
    write_state(&s.state, &state);
    let _ = fs::remove_file(&s.socket);
    let listener =
        UnixListener::bind(&s.socket).map_err(|e| GgmlError::Socket(s.socket.clone(), e))?;
    fs::set_permissions(&s.socket, fs::Permissions::from_mode(0o600))
        .map_err(|e| GgmlError::Socket(s.socket.clone(), e))?;
    say(&format!(
        "relaying {} to the server at {addr}",
        s.socket.display()
    ));

    let server_pid = Arc::new(AtomicI32::new(0));
    let watched = server_pid.clone();
    let vmm_pid = s.vmm_pid;
    std::thread::spawn(move || {
        while !vmm::process::wait_exit(vmm_pid, Duration::from_secs(3600)) {}
        say("the machine's VMM exited: stopping the server");
        kill_server(watched.load(Ordering::SeqCst));
        std::process::exit(0);
    });
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || relay(conn, addr));
        }
    });
    supervise(&s, addr, state, &server_pid)
}

/// Starts the server, and again whenever it exits, backing off while it keeps dying.
fn supervise(s: &Serve, addr: SocketAddr, state: ServerState, current: &AtomicI32) -> ! {
    let state = Arc::new(Mutex::new(state));
    let mut backoff = Duration::from_secs(1);
    loop {
        let started = Instant::now();
        match spawn_server(s, addr) {
            Ok(mut child) => {
                current.store(child.id() as i32, Ordering::SeqCst);
                {
                    let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
                    st.pid = Some(child.id() as i32);
                    st.starts += 1;
                    write_state(&s.state, &st);
                }
                let outputs: [Option<Box<dyn io::Read + Send>>; 2] = [
                    child.stdout.take().map(|p| Box::new(p) as _),
                    child.stderr.take().map(|p| Box::new(p) as _),
                ];
                for out in outputs.into_iter().flatten() {
                    let (state, path) = (state.clone(), s.state.clone());
                    std::thread::spawn(move || log_output(out, &state, &path));
                }
                let status = child.wait();
                // What a wrapper of the server left (a root's bwrap and the server in it).
                kill_server(child.id() as i32);
                current.store(0, Ordering::SeqCst);
                let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
                st.pid = None;
                write_state(&s.state, &st);
                say(&format!(
                    "the server exited ({status:?}): starting it again"
                ));
            }
            Err(e) => say(&format!("cannot start the server {:?}: {e}", s.server[0])),
        }
        if started.elapsed() >= STABLE {
            backoff = Duration::from_secs(1);
        } else {
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

fn spawn_server(s: &Serve, addr: SocketAddr) -> io::Result<Child> {
    let mut c = Command::new(&s.server[0]);
    c.args(&s.server[1..])
        .args(["-H", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    use std::os::unix::process::CommandExt;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        c.pre_exec(|| {
            // A session of its own: the server and whatever it runs end together
            // ([`kill_server`]), whatever wraps it.
            rustix::process::setsid()?;
            #[cfg(target_os = "linux")]
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
            Ok(())
        });
    }
    c.spawn()
}

/// Ends the server `pid` started by [`spawn_server`] (it leads its process group) with all it
/// started; nothing when `pid` is 0.
pub fn kill_server(pid: i32) {
    if let Some(p) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
    }
}

/// Copies the server's output to the log (the supervisor's stderr), noting the protocol
/// version it announces.
fn log_output(out: impl io::Read, state: &Mutex<ServerState>, path: &Path) {
    for line in BufReader::new(out).lines().map_while(Result::ok) {
        if let Some(v) = line.trim().strip_prefix(VERSION_LINE) {
            let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
            st.version = Some(v.trim().to_owned());
            write_state(path, &st);
        }
        let _ = writeln!(io::stderr(), "{line}");
    }
}

fn write_state(path: &Path, st: &ServerState) {
    if let Ok(json) = serde_json::to_vec(st) {
        let _ = crate::store::write_atomic(path, &json);
    }
}

/// One client: its bytes to the server and back, until either side closes. A server that is
/// (re)starting is waited for.
fn relay(client: UnixStream, addr: SocketAddr) {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let server = loop {
        match TcpStream::connect(addr) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => {
                say(&format!("a client found no server at {addr}: {e}"));
                return;
            }
        }
    };
    // ggml's messages are small and answered one by one: no Nagle delay.
    let _ = server.set_nodelay(true);
    let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || {
        let _ = io::copy(&mut &client2, &mut &server2);
        let _ = server2.shutdown(Shutdown::Write);
    });
    let _ = io::copy(&mut &server, &mut &client);
    let _ = client.shutdown(Shutdown::Write);
    let _ = up.join();
}

fn say(msg: &str) {
    let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ");
    let _ = writeln!(io::stderr(), "[{now}] carbon-vm ggml-serve: {msg}");
}

/// Linux: a user and network namespace of this process's own, its loopback up; the server
/// listens there on ggml's default port, which nothing outside the namespace can reach.
#[cfg(target_os = "linux")]
fn private_network() -> io::Result<SocketAddr> {
    use rustix::thread::UnshareFlags;
    let (uid, gid) = (rustix::process::getuid(), rustix::process::getgid());
    // SAFETY: no file table is unshared; the caller has started no other thread.
    unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWUSER | UnshareFlags::NEWNET) }?;
    // The same IDs inside: files the server and the relay create are the user's.
    fs::write("/proc/self/setgroups", "deny")?;
    fs::write("/proc/self/uid_map", format!("{0} {0} 1", uid.as_raw()))?;
    fs::write("/proc/self/gid_map", format!("{0} {0} 1", gid.as_raw()))?;
    loopback_up()?;
    Ok(SocketAddr::from(([127, 0, 0, 1], 50052)))
}

/// A new network namespace's loopback is down.
#[cfg(target_os = "linux")]
fn loopback_up() -> io::Result<()> {
    // SAFETY: a plain socket(2); the descriptor is owned (and closed) at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is ours alone.
    let owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    ifup(std::os::fd::AsRawFd::as_raw_fd(&owned))
}

/// SIOCGIFFLAGS, then SIOCSIFFLAGS with IFF_UP, on `lo`.
#[cfg(target_os = "linux")]
fn ifup(fd: i32) -> io::Result<()> {
    // SAFETY: ifreq is plain data; the name is NUL-terminated within its array; the ioctls
    // read and write only that struct.
    unsafe {
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
            *d = *s as libc::c_char;
        }
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr) < 0 {
            return Err(io::Error::last_os_error());
        }
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Elsewhere: a free loopback port of the host.
#[cfg(not(target_os = "linux"))]
fn private_network() -> io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// The state file the supervisor wrote, if any.
pub fn read_state(path: &Path) -> Option<ServerState> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}
