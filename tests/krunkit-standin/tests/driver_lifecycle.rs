//! vmm's krunkit driver against the krunkit stand-in (this crate's binary): everything of the
//! driver that is not macOS-specific. The driver is given the stand-in's path as its krunkit
//! binary and does not know it talks to a stand-in.
//!
//! These tests live in the stand-in's crate because only here does Cargo build the binary and
//! name its path (CARGO_BIN_EXE_krunkit-standin) for the tests.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use vmm::StopMode;
use vmm::krunkit::rest::{self, Endpoint, RestError};
use vmm::krunkit::{Driver, KrunkitConfig, StartError, State, Stopped};
use vmm::ready::{ReadyChannel, ReadyError};

const STANDIN: &str = env!("CARGO_BIN_EXE_krunkit-standin");

struct Machine {
    dir: tempfile::TempDir,
    config: KrunkitConfig,
    /// Plays gvproxy's `-listen-vfkit` socket.
    gvproxy: UnixDatagram,
    driver: Driver,
}

impl Machine {
    fn new() -> Machine {
        let dir = tempfile::Builder::new()
            .prefix("kst")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path();
        std::fs::write(d.join("disk.raw"), b"").unwrap();
        let gvproxy = UnixDatagram::bind(d.join("net.sock")).unwrap();
        gvproxy
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let config = KrunkitConfig {
            cpus: 2,
            memory_mib: 2048,
            disk: d.join("disk.raw"),
            net_socket: d.join("net.sock"),
            mac: vmm::gvproxy::GUEST_MAC.into(),
            ready_socket: d.join("ready.sock"),
            console_log: d.join("console.log"),
            rest: Endpoint::Unix(d.join("rest.sock")),
            pidfile: d.join("krunkit.pid"),
            shares: vec![vmm::Share {
                dir: d.to_owned(),
                tag: "share".into(),
                socket: d.join("fs0.sock"),
            }],
            oem_strings: vec!["io.systemd.credential:system.hostname=dev".into()],
        };
        let driver = Driver {
            binary: STANDIN.into(),
            start_timeout: Duration::from_secs(20),
            stop_timeout: Duration::from_secs(10),
            signal_timeout: Duration::from_secs(10),
        };
        Machine {
            dir,
            config,
            gvproxy,
            driver,
        }
    }

    /// The stand-in behind a wrapper that makes its guest hang (never Ready, ignores Stop).
    fn with_hanging_guest(mut self) -> Machine {
        let w = self.dir.path().join("krunkit");
        std::fs::write(
            &w,
            format!("#!/bin/sh\nKRUNKIT_STANDIN_GUEST=hang exec '{STANDIN}' \"$@\"\n"),
        )
        .unwrap();
        std::fs::set_permissions(&w, std::fs::Permissions::from_mode(0o755)).unwrap();
        self.driver.binary = w;
        self
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("krunkit.log")
    }

    /// What carbon-vm's start does around the driver: listen for Ready, then launch.
    fn start(&self) -> Result<Started<'_>, StartError> {
        let _ = std::fs::remove_file(&self.config.ready_socket);
        let ready = ReadyChannel::bind(&self.config.ready_socket).unwrap();
        self.driver.start(&self.config, &self.log())?;
        Ok(Started { m: self, ready })
    }

    fn state(&self) -> State {
        Driver::state(&self.config).unwrap()
    }

    fn rest_socket(&self) -> &Path {
        match &self.config.rest {
            Endpoint::Unix(p) => p,
            Endpoint::Loopback(_) => panic!("a unix REST endpoint"),
        }
    }

    fn pid(&self) -> i32 {
        std::fs::read_to_string(&self.config.pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("krunkit went away")]
struct Gone;

struct Started<'a> {
    m: &'a Machine,
    ready: ReadyChannel,
}

impl std::fmt::Debug for Started<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Started")
    }
}

impl Started<'_> {
    /// The guest's host key, waited for as carbon-vm does: until krunkit's REST API goes away.
    fn wait_ready(&self, timeout: Duration) -> Result<String, ReadyError<Gone>> {
        self.ready
            .wait(timeout, || match Driver::state(&self.m.config) {
                Ok(State::Vm(_)) => Ok(()),
                _ => Err(Gone),
            })
    }
}

fn is_running(s: &State) -> bool {
    matches!(s, State::Vm(v) if v.state == rest::RUNNING)
}

fn process_gone(pid: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

fn kill9(pid: i32) {
    let ok = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[test]
fn start_ready_running_then_graceful_stop() {
    let m = Machine::new();
    assert_eq!(m.state(), State::Stopped);
    let running = m.start().unwrap();
    // gvproxy's vfkit mode gets its magic from the VMM.
    let mut magic = [0u8; 16];
    let n = m.gvproxy.recv(&mut magic).unwrap();
    assert_eq!(&magic[..n], b"VFKT");
    let key = running.wait_ready(Duration::from_secs(20)).unwrap();
    assert!(key.starts_with("ssh-ed25519 "), "{key:?}");
    assert!(is_running(&m.state()), "{:?}", m.state());
    let pid = m.pid();
    assert!(
        std::fs::read_to_string(&m.config.console_log)
            .unwrap()
            .contains("guest booted")
    );
    // A second start does not start a second VM.
    assert!(matches!(m.start(), Err(StartError::AlreadyRunning)));

    assert_eq!(
        m.driver.stop(&m.config, StopMode::Graceful).unwrap(),
        Stopped::ByRequest
    );
    assert_eq!(m.state(), State::Stopped);
    assert!(process_gone(pid));
    assert!(
        std::fs::read_to_string(&m.config.console_log)
            .unwrap()
            .contains("guest powered off")
    );
    // krunkit's own leftovers are removed (the Ready socket is its listener's).
    for leftover in [m.rest_socket(), &m.config.pidfile] {
        assert!(!leftover.exists(), "{}", leftover.display());
    }
    // Stopping a stopped machine is not an error.
    assert_eq!(
        m.driver.stop(&m.config, StopMode::Graceful).unwrap(),
        Stopped::Already
    );
}

#[test]
fn graceful_stop_reports_stopping_while_the_guest_powers_off() {
    let m = Machine::new();
    m.start()
        .unwrap()
        .wait_ready(Duration::from_secs(20))
        .unwrap();
    let answer = rest::change_state(&m.config.rest, rest::StateChange::Stop).unwrap();
    assert_eq!(answer.state, rest::STOPPING);
    // Until the guest is off, krunkit still answers, with the Stopping state.
    match rest::get_state(&m.config.rest) {
        Ok(s) => assert_eq!(
            (s.state.as_str(), s.can_stop),
            (rest::STOPPING, Some(false))
        ),
        Err(RestError::Gone) => {} // already off
        Err(e) => panic!("{e}"),
    }
    // Whether the guest is off already or not, the driver's stop completes the job.
    let outcome = m.driver.stop(&m.config, StopMode::Graceful).unwrap();
    assert!(
        matches!(outcome, Stopped::Already | Stopped::ByRequest),
        "{outcome:?}"
    );
    assert_eq!(m.state(), State::Stopped);
}

#[test]
fn hard_stop() {
    let m = Machine::new();
    let running = m.start().unwrap();
    running.wait_ready(Duration::from_secs(20)).unwrap();
    let pid = m.pid();
    assert_eq!(
        m.driver.stop(&m.config, StopMode::Force).unwrap(),
        Stopped::ByRequest
    );
    assert_eq!(m.state(), State::Stopped);
    assert!(process_gone(pid));
}

#[test]
fn a_crashed_vmm_is_stopped_and_its_leftovers_do_not_block_the_next_start() {
    let m = Machine::new();
    m.start()
        .unwrap()
        .wait_ready(Duration::from_secs(20))
        .unwrap();
    let pid = m.pid();
    kill9(pid);
    assert!(process_gone(pid));
    assert_eq!(m.state(), State::Stopped);
    // krunkit's REST socket and pidfile stay behind after a crash.
    assert!(m.rest_socket().exists());
    assert!(m.config.pidfile.exists());

    let key = m
        .start()
        .unwrap()
        .wait_ready(Duration::from_secs(20))
        .unwrap();
    assert!(key.starts_with("ssh-ed25519 "));
    assert_ne!(m.pid(), pid);
    assert!(is_running(&m.state()));
    m.driver.stop(&m.config, StopMode::Force).unwrap();
}

#[test]
fn stale_sockets_from_an_earlier_run_are_removed_before_start() {
    let m = Machine::new();
    // What a crashed run leaves: a REST socket file nobody listens on, and a pidfile.
    drop(UnixListener::bind(m.rest_socket()).unwrap());
    std::fs::write(&m.config.pidfile, "999999").unwrap();
    assert_eq!(m.state(), State::Stopped);
    let key = m
        .start()
        .unwrap()
        .wait_ready(Duration::from_secs(20))
        .unwrap();
    assert!(!key.is_empty());
    assert_ne!(m.pid(), 999999);
    m.driver.stop(&m.config, StopMode::Graceful).unwrap();
}

#[test]
fn a_guest_that_ignores_stop_is_terminated() {
    let mut m = Machine::new().with_hanging_guest();
    m.driver.stop_timeout = Duration::from_millis(500);
    let running = m.start().unwrap();
    assert!(matches!(
        running.wait_ready(Duration::from_millis(800)),
        Err(ReadyError::Timeout(_))
    ));
    let pid = m.pid();
    assert_eq!(
        m.driver.stop(&m.config, StopMode::Graceful).unwrap(),
        Stopped::Terminated
    );
    assert!(process_gone(pid));
    assert_eq!(m.state(), State::Stopped);
}

#[test]
fn the_ready_wait_ends_when_the_vmm_dies() {
    let m = Machine::new().with_hanging_guest();
    let running = m.start().unwrap();
    kill9(m.pid());
    let t = Instant::now();
    assert!(matches!(
        running.wait_ready(Duration::from_secs(120)),
        Err(ReadyError::Stopped(Gone))
    ));
    assert!(t.elapsed() < Duration::from_secs(60));
}

#[test]
fn krunkit_refusing_to_start_is_reported_with_its_message() {
    let mut m = Machine::new();
    m.config.disk = m.dir.path().join("missing.raw");
    match m.start() {
        Err(StartError::Exited(status, msg)) => {
            assert!(status.contains('1'), "{status}");
            assert!(msg.contains("virtio-blk"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(m.state(), State::Stopped);
    for leftover in [m.rest_socket(), &m.config.pidfile] {
        assert!(!leftover.exists(), "start cleans up after itself");
    }
}

/// What Podman needs of a machine exposed to it: krunkit's REST API on 127.0.0.1 over TCP.
#[test]
fn rest_on_a_loopback_port() {
    let mut m = Machine::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    m.config.rest = Endpoint::Loopback(port);
    let running = m.start().unwrap();
    running.wait_ready(Duration::from_secs(20)).unwrap();
    // Podman's request, as its Go client sends it.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::io::Write::write_all(
        &mut s,
        b"GET /vm/state HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: Go-http-client/1.1\r\n\r\n",
    )
    .unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut s, &mut answer).unwrap();
    assert!(answer.contains(rest::RUNNING), "{answer}");
    assert_eq!(
        m.driver.stop(&m.config, StopMode::Graceful).unwrap(),
        Stopped::ByRequest
    );
    assert_eq!(m.state(), State::Stopped);
}

#[test]
fn the_version_probe_names_the_krunkit() {
    let v = vmm::krunkit::probe(Path::new(STANDIN)).unwrap();
    assert_eq!(v.to_string(), "1.3.0");
    assert!(matches!(
        vmm::krunkit::probe(Path::new("/nonexistent/krunkit")),
        Err(vmm::krunkit::ProbeError::Run(..))
    ));
}

#[test]
fn a_missing_krunkit_says_how_to_install_it() {
    let mut m = Machine::new();
    m.driver.binary = m.dir.path().join("no-krunkit");
    let e = m.start().unwrap_err();
    assert!(matches!(e, StartError::Spawn(..)));
    assert!(e.to_string().contains("brew install krunkit"), "{e}");
}

/// The stand-in's command-line validation is krunkit's: what it refuses, with which message.
#[test]
fn the_standin_refuses_what_krunkit_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("d.raw");
    std::fs::write(&disk, b"").unwrap();
    let blk = format!("virtio-blk,path={}", disk.display());
    let base = ["--cpus", "1", "--memory", "512"];
    let cases: &[(&[&str], &str)] = &[
        (
            &["--device", "virtio-foo"],
            "invalid virtio device label specified: virtio-foo",
        ),
        (
            &["--device", "virtio-blk,path=/x,bogus=1"],
            "unknown virtio-blk arguments",
        ),
        (
            &["--device", "virtio-blk,format=raw"],
            "virtio-blk is missing argument: path",
        ),
        (
            &["--device", "virtio-blk,path=/a=b"],
            "invalid argument format",
        ),
        (
            &[
                "--device",
                "virtio-vsock,port=1025,socketURL=/s,listen,connect",
            ],
            "mutually exclusive",
        ),
        (
            &[
                "--device",
                "virtio-net,unixSocketPath=/n,type=unixgram,mac=5a:94:ef:e4:0c:ee",
            ],
            "mutually exclusive",
        ),
        (
            &["--device", "virtio-net,unixSocketPath=/n"],
            "virtio-net is missing argument: mac",
        ),
        (
            &["--device", "virtio-serial"],
            "virtio-serial is missing argument: logFilePath",
        ),
        (&["--restful-uri", "http://x"], "invalid scheme input"),
        (&["--bootloader", "efi"], "bootloader is missing argument"),
    ];
    for (extra, want) in cases {
        let out = Command::new(STANDIN)
            .args(base)
            .args(["--device", &blk])
            .args(*extra)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        // clap refuses what krunkit's value parsers reject, with their message.
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(want), "{extra:?}: {err}");
    }
    // The VM set-up refuses a machine without a root disk, too much memory, a repeated vsock
    // port, with `Error: ...` and status 1.
    let vsock = "virtio-vsock,port=1025,socketURL=/tmp/x.sock";
    for (argv, want) in [
        (&base[..], "virtio-blk"),
        (
            &["--cpus", "1", "--memory", "61441", "--device", &blk][..],
            "61440",
        ),
        (
            &[
                &base[..],
                &["--device", &blk, "--device", vsock, "--device", vsock],
            ]
            .concat()[..],
            "1025",
        ),
    ] {
        let out = Command::new(STANDIN).args(argv).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{argv:?}: {err}");
        assert!(
            err.starts_with("Error: ") && err.contains(want),
            "{argv:?}: {err}"
        );
    }
    // Unknown options and missing required ones are clap's errors, as in krunkit.
    for argv in [
        &["--cpus", "1", "--memory", "512", "--frobnicate"][..],
        &["--memory", "512"][..],
        &["--cpus", "256", "--memory", "512"][..],
    ] {
        let out = Command::new(STANDIN).args(argv).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{argv:?}");
    }
    // And the version line is what the driver's parser reads.
    let out = Command::new(STANDIN).arg("--version").output().unwrap();
    let v = vmm::krunkit::parse_version(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert!(v >= vmm::krunkit::JSON_REST);
}
