//! vmm's krunkit driver against the krunkit stand-in (this crate's binary), which runs a real VM
//! (QEMU, in scripts/gpu-root): everything of the driver that is not macOS-specific. The driver
//! is given the stand-in as its krunkit binary and does not know it talks to a stand-in.
//!
//! The VM here boots EDK2 from a blank disk: the firmware finds no OS and waits, which is all
//! the process lifecycle needs (start, state, hard stop, a crash, stale sockets, a guest that
//! ignores the power button). What needs a guest OS (Ready with its host key, a graceful power
//! off) is proven with the aarch64 image in tests/krunkit_machine.rs.
//!
//! These tests live in the stand-in's crate because only here does Cargo build the binary and
//! name its path (CARGO_BIN_EXE_krunkit-standin) for the tests.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use vmm::krunkit::rest::{self, Endpoint};
use vmm::krunkit::{KrunkitConfig, Runner, StartError, State, Stopped};
use vmm::ready::{ReadyChannel, ReadyError};

const STANDIN: &str = env!("CARGO_BIN_EXE_krunkit-standin");

/// scripts/gpu-root, once the test run built the root (CARBON_VM_TEST_GPU_ROOT): the stand-in's
/// VM needs its QEMU, EDK2 and vhost-device-vsock. Outside CI its absence skips the test loudly.
fn gpu_root() -> Option<PathBuf> {
    match std::env::var_os("CARBON_VM_TEST_GPU_ROOT") {
        Some(_) => Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/gpu-root")),
        None if std::env::var_os("CI").is_some() => {
            panic!("CARBON_VM_TEST_GPU_ROOT is not set: .ci/run must build the GPU host root")
        }
        None => {
            eprintln!("SKIP: CARBON_VM_TEST_GPU_ROOT is not set (scripts/test builds the root)");
            None
        }
    }
}

struct Machine {
    dir: tempfile::TempDir,
    config: KrunkitConfig,
    /// Plays gvproxy's `-listen-vfkit` socket.
    gvproxy: UnixDatagram,
    runner: Runner,
}

impl Machine {
    /// A machine whose krunkit is the stand-in run inside `root`.
    fn new(root: &Path) -> Machine {
        let dir = tempfile::Builder::new()
            .prefix("kst")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path();
        // A blank disk: the firmware boots nothing.
        std::fs::File::create(d.join("disk.raw"))
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let gvproxy = UnixDatagram::bind(d.join("net.sock")).unwrap();
        gvproxy
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let share = d.join("share");
        std::fs::create_dir(&share).unwrap();
        let config = KrunkitConfig {
            cpus: 1,
            memory_mib: 1024,
            disk: d.join("disk.raw"),
            net_socket: d.join("net.sock"),
            mac: vmm::gvproxy::GUEST_MAC.into(),
            ready_socket: d.join("ready.sock"),
            console_log: d.join("console.log"),
            rest: Endpoint::Unix(d.join("rest.sock")),
            pidfile: d.join("krunkit.pid"),
            shares: vec![vmm::Share {
                dir: share,
                tag: "share".into(),
                socket: d.join("fs0.sock"),
                hidden: vec![],
            }],
            oem_strings: vec!["io.systemd.credential:system.hostname=dev".into()],
        };
        // The stand-in inside the root, the same process from exec to exit (so its pid is the
        // one the driver spawned).
        let krunkit = d.join("krunkit");
        std::fs::write(
            &krunkit,
            format!(
                "#!/bin/sh\nexec '{}' run '{STANDIN}' \"$@\"\n",
                root.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&krunkit, std::fs::Permissions::from_mode(0o755)).unwrap();
        let runner = Runner {
            binary: krunkit,
            start_timeout: Duration::from_secs(60),
            kill_timeout: Duration::from_secs(10),
        };
        Machine {
            dir,
            config,
            gvproxy,
            runner,
        }
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("krunkit.log")
    }

    /// What carbon-vm's start does around the driver: listen for Ready, then launch.
    fn start(&self) -> Result<Started<'_>, StartError> {
        let _ = std::fs::remove_file(&self.config.ready_socket);
        let ready = ReadyChannel::bind(&self.config.ready_socket).unwrap();
        self.runner.start(&self.config, &self.log())?;
        Ok(Started { m: self, ready })
    }

    fn state(&self) -> State {
        Runner::state(&self.config).unwrap()
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

/// A test that fails mid-way leaves no stand-in (nor its QEMU) running: the driver's kill ends
/// the stand-in's VM with it.
impl Drop for Machine {
    fn drop(&mut self) {
        let _ = self.runner.kill(&self.config);
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
            .wait(timeout, || match Runner::state(&self.m.config) {
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

/// The stand-in's VM: its QEMU, the process whose parent is the stand-in.
fn vm_processes(standin: i32) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // pid (comm) state ppid ...: comm may hold spaces, the ppid follows its ')'.
            let (comm, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
            let ppid: i32 = rest.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == standin).then(|| comm.to_owned())
        })
        .collect()
}

#[test]
fn start_runs_the_vm_and_a_second_start_is_refused() {
    let Some(root) = gpu_root() else { return };
    let m = Machine::new(&root);
    assert_eq!(m.state(), State::Stopped);
    m.start().unwrap();
    // gvproxy's vfkit mode gets its magic from the VMM, then the guest's frames (EDK2's DHCP).
    let mut frame = [0u8; 2048];
    let n = m.gvproxy.recv(&mut frame).unwrap();
    assert_eq!(&frame[..n], b"VFKT");
    let n = m.gvproxy.recv(&mut frame).unwrap();
    assert!(n >= 60, "an Ethernet frame from the guest, not {n} bytes");
    assert!(is_running(&m.state()), "{:?}", m.state());
    let vm = vm_processes(m.pid());
    for p in ["qemu-system-aar", "vhost-device-vs", "virtiofsd"] {
        assert!(vm.iter().any(|c| c == p), "{p} runs the VM: {vm:?}");
    }
    // A second start does not start a second VM.
    assert!(matches!(m.start(), Err(StartError::AlreadyRunning)));
    m.runner.kill(&m.config).unwrap();
    assert_eq!(m.state(), State::Stopped);
    // Stopping a stopped machine is not an error.
    assert!(m.runner.shut_down(&m.config, Duration::ZERO).unwrap());
    assert_eq!(m.runner.kill(&m.config).unwrap(), Stopped::Already);
}

#[test]
fn hard_stop() {
    let Some(root) = gpu_root() else { return };
    let m = Machine::new(&root);
    m.start().unwrap();
    let pid = m.pid();
    assert_eq!(m.runner.kill(&m.config).unwrap(), Stopped::ByRequest);
    assert_eq!(m.state(), State::Stopped);
    assert!(process_gone(pid));
}

#[test]
fn a_crashed_vmm_takes_its_vm_along_and_its_leftovers_do_not_block_the_next_start() {
    let Some(root) = gpu_root() else { return };
    let m = Machine::new(&root);
    m.start().unwrap();
    let pid = m.pid();
    let vm: Vec<i32> = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(vm.len() >= 3, "QEMU and its helpers: {vm:?}");
    kill9(pid);
    assert!(process_gone(pid));
    for p in vm {
        assert!(process_gone(p), "pid {p} outlived its krunkit");
    }
    assert_eq!(m.state(), State::Stopped);
    // krunkit's REST socket and pidfile stay behind after a crash.
    assert!(m.rest_socket().exists());
    assert!(m.config.pidfile.exists());

    m.start().unwrap();
    assert_ne!(m.pid(), pid);
    assert!(is_running(&m.state()));
    m.runner.kill(&m.config).unwrap();
}

#[test]
fn stale_sockets_from_an_earlier_run_are_removed_before_start() {
    let Some(root) = gpu_root() else { return };
    let m = Machine::new(&root);
    // What a crashed run leaves: a REST socket file nobody listens on, and a pidfile.
    drop(UnixListener::bind(m.rest_socket()).unwrap());
    std::fs::write(&m.config.pidfile, "999999").unwrap();
    assert_eq!(m.state(), State::Stopped);
    m.start().unwrap();
    assert!(is_running(&m.state()));
    assert_ne!(m.pid(), 999999);
    m.runner.kill(&m.config).unwrap();
}

/// The firmware, with no OS to boot, ignores the power button: so does a hung guest. A shut-down
/// that is not obeyed kills nothing (carbon-vm's stop then says to use --force); a kill does.
#[test]
fn a_guest_that_ignores_stop_runs_on_until_killed() {
    let Some(root) = gpu_root() else { return };
    let m = Machine::new(&root);
    let running = m.start().unwrap();
    assert!(matches!(
        running.wait_ready(Duration::from_secs(2)),
        Err(ReadyError::Timeout(_))
    ));
    let pid = m.pid();
    assert!(
        !m.runner
            .shut_down(&m.config, Duration::from_secs(5))
            .unwrap()
    );
    // Still krunkit's VM, as Podman sees one whose guest has not powered off: `Stopping`.
    assert!(matches!(m.state(), State::Vm(_)), "{:?}", m.state());
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    assert_eq!(m.runner.kill(&m.config).unwrap(), Stopped::ByRequest);
    assert!(process_gone(pid));
    assert_eq!(m.state(), State::Stopped);
}

#[test]
fn the_ready_wait_ends_when_the_vmm_dies() {
    let Some(root) = gpu_root() else { return };
    let m = Machine::new(&root);
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
    let Some(root) = gpu_root() else { return };
    let mut m = Machine::new(&root);
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
    let Some(root) = gpu_root() else { return };
    let mut m = Machine::new(&root);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    m.config.rest = Endpoint::Loopback(port);
    m.start().unwrap();
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
    // Podman's stop: the power button, reported as Stopping while the guest (here the
    // firmware, which ignores it) has not powered off.
    let answer = rest::change_state(&m.config.rest, rest::StateChange::Stop).unwrap();
    assert_eq!(answer.state, rest::STOPPING);
    let s = rest::get_state(&m.config.rest).unwrap();
    assert_eq!(
        (s.state.as_str(), s.can_stop),
        (rest::STOPPING, Some(false))
    );
    assert_eq!(m.runner.kill(&m.config).unwrap(), Stopped::ByRequest);
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
    let mut m = Machine::new(Path::new("/nonexistent/gpu-root"));
    m.runner.binary = m.dir.path().join("no-krunkit");
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
