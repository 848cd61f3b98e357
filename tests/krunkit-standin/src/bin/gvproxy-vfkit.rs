//! A SHIM for gvproxy, for tests on Linux: gvproxy listens in vfkit mode (`-listen-vfkit
//! unixgram://PATH`, what krunkit attaches to) on Linux only from gvisor-tap-vsock 0.8.9, and
//! Debian's is 0.8.1. Run with gvproxy's arguments, it runs the real gvproxy (`gvproxy` from
//! PATH, or `GVPROXY_VFKIT_REAL`) with `-listen-qemu unix://...` in place of `-listen-vfkit`,
//! and relays: vfkit mode is one Ethernet frame per datagram, after an optional first datagram
//! `VFKT` that names the peer; QEMU mode is the same frames on a stream, each after its length
//! (4 bytes, big-endian). Everything else is gvproxy's own: its other arguments, its log file,
//! its exit status. The pidfile names the shim (its command line is the one it was given),
//! and the real gvproxy dies with it.

use std::io::{Read, Write};
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MAGIC: &[u8] = b"VFKT";
/// Ethernet frames with gvproxy's largest MTU, and then some.
const MAX_FRAME: usize = 65536;

/// The value of gvproxy's flag `name` (Go's `-name value`, `--name value`, `-name=value`), and
/// the arguments with it removed.
fn take_flag(args: &[String], name: &str) -> (Option<String>, Vec<String>) {
    let mut rest = Vec::new();
    let mut value = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let bare = a.trim_start_matches('-');
        if a.starts_with('-') && bare == name {
            value = it.next().cloned();
        } else if let Some(v) = bare.strip_prefix(name).and_then(|r| r.strip_prefix('='))
            && a.starts_with('-')
        {
            value = Some(v.to_owned());
        } else {
            rest.push(a.clone());
        }
    }
    (value, rest)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let real = std::env::var("GVPROXY_VFKIT_REAL").unwrap_or_else(|_| "gvproxy".into());
    let (vfkit, rest) = take_flag(&args, "listen-vfkit");
    let Some(path) = vfkit.as_deref().and_then(|v| v.strip_prefix("unixgram://")) else {
        // Nothing to translate.
        let e = Command::new(&real).args(&args).exec();
        eprintln!("gvproxy-vfkit: cannot run {real}: {e}");
        return ExitCode::FAILURE;
    };
    match run(&real, Path::new(path), rest) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gvproxy-vfkit: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The real gvproxy dies with the shim, however the shim ends (Linux's parent-death signal: the
/// shim exists for Linux gvproxy; elsewhere it only has to compile).
#[cfg(target_os = "linux")]
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_: &mut Command) {}

fn run(real: &str, vfkit_path: &Path, rest: Vec<String>) -> Result<ExitCode, String> {
    let (pidfile, mut rest) = take_flag(&rest, "pid-file");
    // Its sockets and gvproxy's pid file; swept if the shim is killed.
    let dir = krunkit_standin::runtime_dir("gvproxy-vfkit").map_err(|e| e.to_string())?;
    let stream_path = dir.path().join("qemu.sock");
    rest.extend([
        "-listen-qemu".into(),
        format!("unix://{}", stream_path.display()),
        "-pid-file".into(),
        dir.path().join("gvproxy.pid").display().to_string(),
    ]);
    let mut cmd = Command::new(real);
    cmd.args(&rest).stdin(Stdio::null());
    die_with_parent(&mut cmd);
    let mut gv = cmd.spawn().map_err(|e| format!("cannot run {real}: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !stream_path.exists() {
        if let Some(status) = gv.try_wait().map_err(|e| e.to_string())? {
            // gvproxy's own failure (a taken port, ...): its log says why.
            return Ok(ExitCode::from(status.code().unwrap_or(1) as u8));
        }
        if Instant::now() > deadline {
            let _ = gv.kill();
            return Err("gvproxy did not create its QEMU socket".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let stream = UnixStream::connect(&stream_path).map_err(|e| e.to_string())?;
    if let Some(p) = pidfile {
        std::fs::write(&p, std::process::id().to_string())
            .map_err(|e| format!("cannot write {p}: {e}"))?;
    }
    // Last: the socket's appearance tells the caller gvproxy is ready.
    let _ = std::fs::remove_file(vfkit_path);
    let gram = UnixDatagram::bind(vfkit_path).map_err(|e| e.to_string())?;
    relay(gram, stream).map_err(|e| e.to_string())?;
    let status = gv.wait().map_err(|e| e.to_string())?;
    Ok(ExitCode::from(status.code().unwrap_or(1) as u8))
}

/// Frames both ways until gvproxy closes its end.
fn relay(gram: UnixDatagram, stream: UnixStream) -> std::io::Result<()> {
    let peer: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
    let (gram_in, peer_in) = (gram.try_clone()?, peer.clone());
    let mut to_gvproxy = stream.try_clone()?;
    std::thread::spawn(move || -> std::io::Result<()> {
        let mut buf = vec![0u8; MAX_FRAME];
        loop {
            let (n, from) = gram_in.recv_from(&mut buf)?;
            *peer_in.lock().expect("not poisoned") = Some(from);
            if &buf[..n] == MAGIC {
                continue;
            }
            to_gvproxy.write_all(&(n as u32).to_be_bytes())?;
            to_gvproxy.write_all(&buf[..n])?;
        }
    });
    let mut from_gvproxy = stream;
    let mut len = [0u8; 4];
    let mut buf = vec![0u8; MAX_FRAME];
    loop {
        if from_gvproxy.read_exact(&mut len).is_err() {
            return Ok(()); // gvproxy is gone
        }
        let n = u32::from_be_bytes(len) as usize;
        if n > MAX_FRAME {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
        from_gvproxy.read_exact(&mut buf[..n])?;
        let to = peer.lock().expect("not poisoned").clone();
        if let Some(addr) = to.as_ref().and_then(SocketAddr::as_pathname) {
            // A peer that went away loses the frame, as on a real link.
            let _ = gram.send_to(&buf[..n], addr);
        }
    }
}
