//! krunkit machines end to end through the real carbon-vm binary, with the krunkit stand-in
//! (tests/krunkit-standin) as `CARBON_VM_KRUNKIT`: krunkit's CLI and REST API in front of a real
//! VM (QEMU emulating Apple Silicon's aarch64 under TCG, EDK2 booting the disk, virtio-mmio,
//! vsock ports on host unix sockets, the Venus GPU, the Mac's 16 KiB blob constraint enforced).
//! carbon-vm does not know it talks to a stand-in.
//!
//! The Mac rehearsal (`the_mac_rehearsal...`) boots the aarch64 default image as a `--gpu
//! --ggml --podman-machine` machine and drives it as a Mac user and Podman would: start (Ready
//! over vsock, host key pinned, the ggml device's server up), `gpu check`, a Venus container
//! through `podman -c`, Podman's own stop request on the machine's REST endpoint (the ggml
//! server ends with krunkit), start again, stop, rm. The ggml server is Debian's
//! ggml-rpc-server on this host's CPU (scripts/llama-root) where a Mac runs one on Metal.
//!
//! Podman's rules at `start` (`exposed_start_keeps_podmans_rules`): with the real podman, one
//! of the user's own Podman machines running keeps an exposed machine from starting, and so
//! does another program on its REST port.
//!
//! gvproxy. krunkit attaches to gvproxy's `-listen-vfkit unixgram://` socket, which gvproxy
//! serves on Linux only from 0.8.9; Debian has 0.8.1. Where the installed gvproxy cannot, the
//! rehearsal runs it behind the stand-in crate's shim (`gvproxy-vfkit`, as `CARBON_VM_GVPROXY`),
//! which relays vfkit-mode datagrams to the real gvproxy's QEMU listener, and says so. Without
//! the shim, `start` fails with gvproxy's own reason and leaves nothing running (tested with a
//! stub of such a gvproxy, whatever this host's can do).

mod common;

use common::Env;
use common::gpu::ok;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The stand-in's executable. A test cannot name another package's binary, so cargo builds it
/// (nothing to do when `cargo test --workspace` built it already) and says where it is.
fn standin() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| common::workspace_bin("krunkit-standin", "krunkit-standin"))
}

/// Whether the installed gvproxy can listen in vfkit mode: asked of gvproxy itself, which
/// either creates the socket or exits.
fn gvproxy_has_vfkit() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("gvp")
            .tempdir_in("/tmp")
            .unwrap();
        let sock = dir.path().join("vfkit.sock");
        let mut gv = Command::new("gvproxy")
            .arg("-listen-vfkit")
            .arg(format!("unixgram://{}", sock.display()))
            .args(["-ssh-port", "-1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("gvproxy is installed (scripts/install-deps)");
        let deadline = Instant::now() + Duration::from_secs(10);
        let has = loop {
            if sock.exists() {
                break true;
            }
            if gv.try_wait().unwrap().is_some() || Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let _ = gv.kill();
        let _ = gv.wait();
        has
    })
}

/// A carbon-vm state with a cached image, a Podman config home, and how to run carbon-vm: on
/// this host, or inside the trixie root of scripts/gpu-root (whose podman is 5.x).
/// The REST port a libkrun Podman machine file names (`http://127.0.0.1:PORT`).
fn rest_port(file: &Value) -> u16 {
    file["LibKrunHypervisor"]["KRun"]["Endpoint"]
        .as_str()
        .and_then(|e| e.strip_prefix("http://127.0.0.1:"))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no REST endpoint in {file}"))
}

struct Krunkit {
    env: Env,
    xdg: PathBuf,
    root: Option<PathBuf>,
    /// Makes the mini image `create`'s default.
    catalog: PathBuf,
}

impl Krunkit {
    fn new(root: Option<PathBuf>) -> Krunkit {
        let env = Env::new();
        let xdg = env.home.path().join("xdg");
        let dir = env.home.path().join("image");
        std::fs::create_dir(&dir).unwrap();
        // krunkit runs Apple Silicon guests: the catalog's entry is an aarch64 image.
        let (art, sha) = common::pack_mini_for(&dir, "aarch64");
        env.pull(art.to_str().unwrap(), Some(&sha));
        let catalog =
            common::write_catalog_for(&dir, "mini", "aarch64", art.to_str().unwrap(), Some(&sha));
        Krunkit {
            env,
            xdg,
            root,
            catalog,
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_with(args, &[])
    }

    /// [`Krunkit::run`] with more environment (a stub's path).
    fn run_with(&self, args: &[&str], vars: &[(&str, &std::ffi::OsStr)]) -> Output {
        let carbon_vm = assert_cmd::cargo::cargo_bin("carbon-vm");
        let mut c = match &self.root {
            None => Command::new(carbon_vm),
            Some(root) => {
                let mut c = Command::new(root);
                c.arg("run").arg(carbon_vm);
                c
            }
        };
        self.env.configure(&mut c);
        c.args(args)
            .env("XDG_CONFIG_HOME", &self.xdg)
            .env("XDG_DATA_HOME", self.data_home())
            .env("CARBON_VM_KRUNKIT", standin())
            .env("CARBON_VM_CATALOG", &self.catalog)
            .env("CARBON_VM_PODMAN_TIMEOUT", "1")
            .envs(vars.iter().copied())
            .output()
            .unwrap()
    }

    /// Podman's data home (its start lock, its machines' data): this test's own.
    fn data_home(&self) -> PathBuf {
        self.env.home.path().join("xdg-data")
    }

    /// The podman carbon-vm runs (this host's, or the root's), with this test's Podman homes.
    fn podman(&self, args: &[&str]) -> Output {
        let mut c = match &self.root {
            None => Command::new("podman"),
            Some(root) => {
                let mut c = Command::new(root);
                c.args(["run", "podman"]);
                c
            }
        };
        c.args(args)
            .env("XDG_CONFIG_HOME", &self.xdg)
            .env("XDG_DATA_HOME", self.data_home())
            .env("CONTAINERS_CONF", common::podman_conf(&self.xdg))
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "{args:?}: {}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn machine_state(&self, name: &str) -> String {
        let v: Value = serde_json::from_str(&self.ok(&["--json", "inspect", name])).unwrap();
        v["state"].as_str().unwrap().to_owned()
    }

    fn machine(&self, name: &str) -> PathBuf {
        self.env.home.path().join("machines").join(name)
    }

    fn pid(&self, name: &str, file: &str) -> Option<i32> {
        std::fs::read_to_string(self.machine(name).join(file))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// `create NAME --driver krunkit ARGS...`, expecting success.
    fn create(&self, name: &str, args: &[&str]) -> Output {
        let mut all = vec![
            "--json",
            "create",
            name,
            "--driver",
            "krunkit",
            "--disk-size",
            "1",
        ];
        all.extend_from_slice(args);
        let o = self.run(&all);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        o
    }
}

fn alive(pid: i32) -> bool {
    rustix::process::Pid::from_raw(pid)
        .is_some_and(|p| rustix::process::test_kill_process(p).is_ok())
}

/// Bounded wait for a process we do not own to disappear.
fn gone(pid: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// A process's command line, from `ps` (Linux and macOS alike).
fn cmdline(pid: i32) -> String {
    let o = Command::new("ps")
        .args(["-o", "command=", "-p", &pid.to_string()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

#[test]
fn create_warns_that_the_gpu_is_always_there() {
    let k = Krunkit::new(None);
    let o = k.create("dev", &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("warning: krunkit always gives the guest a Venus GPU"),
        "{err}"
    );
    let created: Value = serde_json::from_slice(&o.stdout).expect("stdout is the record alone");
    assert_eq!(
        (created["driver"].as_str(), created["state"].as_str()),
        (Some("krunkit"), Some("stopped"))
    );
    // Asked for, the GPU gets no warning; --quiet drops warnings.
    let o = k.create("gpu", &["--gpu"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("Venus GPU"), "{err}");
    let o = k.run(&[
        "--quiet",
        "create",
        "quiet",
        "--driver",
        "krunkit",
        "--disk-size",
        "1",
    ]);
    assert!(o.status.success() && o.stderr.is_empty());
    // A GPU machine keeps room for krunkit's Venus window in the guest's 64 GiB.
    let o = k.run(&[
        "create", "big", "--driver", "krunkit", "--gpu", "--memory", "60000",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("--memory must be between 1024 and"), "{err}");
    assert!(!k.machine("big").exists());
}

/// `name`, an executable shell script of `body`, in `dir`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

/// PATH with `dir` first: its stubs stand in for the host's programs of their names.
fn path_with(dir: &Path) -> std::ffi::OsString {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::join_paths(std::iter::once(dir.to_owned()).chain(std::env::split_paths(&path)))
        .unwrap()
}

/// A stub gvproxy (for CARBON_VM_GVPROXY) that does what Debian's 0.8.1 does when asked to
/// listen in vfkit mode: logs these lines to its -log-file and exits, status 0, without its
/// socket or pidfile. A `start` that reaches it fails there, before any VM runs.
fn vfkit_less_gvproxy(dir: &Path) -> PathBuf {
    script(
        dir,
        "gvproxy",
        "while [ $# -gt 0 ]; do [ \"$1\" = -log-file ] && log=$2; shift; done\n\
         cat >\"$log\" <<'EOF'\n\
         time=\"2026-12-06T01:39:02Z\" level=info msg=\"gvproxy version v0.8.1\"\n\
         time=\"2026-12-06T01:39:02Z\" level=info msg=\"waiting for clients...\"\n\
         time=\"2026-12-06T01:39:02Z\" level=error msg=\"gvproxy exiting: vfkit listen error: \
         unsupported 'unixgram' scheme\"\n\
         EOF\n",
    )
}

#[test]
fn without_a_vfkit_gvproxy_start_fails_with_its_reason_and_leaves_nothing_running() {
    // The stub: this host's gvproxy may listen in vfkit mode (0.8.9 and later), where this
    // failure cannot happen.
    let stubs = tempfile::tempdir().unwrap();
    let gvproxy = vfkit_less_gvproxy(stubs.path());
    let k = Krunkit::new(None);
    k.create("dev", &[]);
    for _ in 0..2 {
        let o = k.run_with(
            &["start", "dev"],
            &[("CARBON_VM_GVPROXY", gvproxy.as_os_str())],
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains("gvproxy exited during start-up"), "{err}");
        assert!(err.contains("unsupported 'unixgram' scheme"), "{err}");
        assert!(err.contains("hint: gvproxy.log"), "{err}");
        assert_eq!(k.pid("dev", "vmm.pid"), None, "krunkit never started");
        assert!(k.pid("dev", "gvproxy.pid").is_none_or(|p| !alive(p)));
        assert!(!k.env.home.path().join("run/dev").exists());
        assert_eq!(k.machine_state("dev"), "stopped");
    }
    k.ok(&["rm", "dev"]);
    assert!(!k.machine("dev").exists());
}

/// `podman --version` of the podman carbon-vm runs: this host's, or the GPU root's.
fn podman_version(root: Option<&Path>) -> String {
    let mut c = match root {
        None => Command::new("podman"),
        Some(root) => {
            let mut c = Command::new(root);
            c.args(["run", "podman"]);
            c
        }
    };
    let o = c
        .arg("--version")
        .output()
        .expect("podman is installed (scripts/install-deps)");
    assert!(o.status.success(), "podman --version: {o:?}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Whether this host's podman is one whose machine files carbon-vm writes (5.2 to 6.x).
fn verified_podman_here() -> bool {
    machine::podman_machine::schema_of(&podman_version(None)).is_ok()
}

/// Podman's machine store for `k`.
fn podman_file(k: &Krunkit, name: &str) -> PathBuf {
    k.xdg
        .join("containers/podman/machine/libkrun")
        .join(format!("{name}.json"))
}

#[test]
fn podman_machine_refused_for_a_podman_whose_schema_was_not_checked() {
    // A stub podman first on PATH (where carbon-vm finds it): this host's may be one carbon-vm
    // supports. It prints what an older podman (Debian bookworm's) and a later major would.
    let stubs = tempfile::tempdir().unwrap();
    let path = path_with(stubs.path());
    let k = Krunkit::new(None);
    for version in ["4.3.1", "7.0.0"] {
        script(
            stubs.path(),
            "podman",
            &format!("echo 'podman version {version}'\n"),
        );
        let o = k.run_with(
            &["create", "dev", "--driver", "krunkit", "--podman-machine"],
            &[("PATH", &path)],
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(6), "{version}: {err}");
        assert!(
            err.contains(&format!("podman {version} is not supported"))
                && err.contains("5.2 to 6.x"),
            "{err}"
        );
        assert!(!k.machine("dev").exists());
        assert!(!podman_file(&k, "dev").exists());
    }
    // A driver Podman's libkrun machines do not run on is a usage error, whatever the podman.
    let o = k.run(&["create", "dev", "--driver", "qemu", "--podman-machine"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(!k.machine("dev").exists());
}

/// The machine file podman of `schema` writes, as read from podman's source
/// (machine/testdata/podman-machine, for a machine of its own).
fn podman_writes(schema: machine::podman_machine::Schema) -> Value {
    use machine::podman_machine::Schema;
    let versions = match schema {
        Schema::V5_2 => "5.2-5.3",
        Schema::V5_4 => "5.4-5.5",
        Schema::V5_6 => "5.6-5.8",
        Schema::V6_0 => "6.0-6.1",
    };
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
        "machine/testdata/podman-machine/libkrun-{versions}.json"
    ));
    serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap()
}

/// The paths of every object key in `v` (`/LibKrunHypervisor/KRun/Endpoint`): a file's fields.
fn fields(v: &Value, prefix: &str, out: &mut Vec<String>) {
    if let Value::Object(m) = v {
        for (k, x) in m {
            let path = format!("{prefix}/{k}");
            fields(x, &path, out);
            out.push(path);
        }
    }
}

/// With the podman in use (this host's where carbon-vm supports it, else the trixie root's, 5.4
/// in CI): the machine file in Podman's store, in that podman's schema, never over Podman's own,
/// removed by `rm`; its REST endpoint (what `podman machine list` asks) on loopback.
#[test]
fn podman_machine_file() {
    let root = if verified_podman_here() {
        None
    } else {
        let Some(root) = common::gpu_root() else {
            return;
        };
        Some(root)
    };
    let version = podman_version(root.as_deref());
    let schema = machine::podman_machine::schema_of(&version)
        .unwrap_or_else(|e| panic!("the podman in use: {e}"));
    let k = Krunkit::new(root);
    // Podman's own machine of a name is never replaced.
    let theirs = podman_file(&k, "theirs");
    std::fs::create_dir_all(theirs.parent().unwrap()).unwrap();
    std::fs::write(&theirs, "{}").unwrap();
    let o = k.run(&[
        "create",
        "theirs",
        "--driver",
        "krunkit",
        "--podman-machine",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("Podman already has a machine file"));
    assert_eq!(std::fs::read_to_string(&theirs).unwrap(), "{}");
    assert!(!k.machine("theirs").exists());

    k.create("dev", &["--podman-machine"]);
    let file: Value =
        serde_json::from_slice(&std::fs::read(podman_file(&k, "dev")).unwrap()).unwrap();
    assert_eq!(file["Name"], "dev");
    assert_eq!(file["Version"], 1);
    assert_eq!(
        file["ImagePath"]["Path"],
        k.machine("dev").join("disk.raw").to_str().unwrap()
    );
    assert!(!file["LastUp"].as_str().unwrap().starts_with("0001-"));
    // The fields this podman writes (its schema's names: vfkit's, `Ansible`, `Swap`, ...), those
    // fixed by the schema with its values, and memory in its unit (MiB for vfkit 0.5, bytes after).
    let want = podman_writes(schema);
    let (mut got_fields, mut want_fields) = (Vec::new(), Vec::new());
    fields(&file, "", &mut got_fields);
    fields(&want, "", &mut want_fields);
    got_fields.sort();
    want_fields.sort();
    assert_eq!(got_fields, want_fields, "{version}: {file:#}");
    let vm = "/LibKrunHypervisor/KRun/VirtualMachine";
    for fixed in [
        "/Version".to_owned(),
        "/Ansible".into(),
        "/Swap".into(),
        "/ImportNativeCA".into(),
        "/LibKrunHypervisor/KRun/LogLevel".into(),
        format!("{vm}/bootloader/kind"),
        format!("{vm}/bootloader/createVariableStore"),
        format!("{vm}/bootloader/CreateVariableStore"),
    ] {
        assert_eq!(
            file.pointer(&fixed),
            want.pointer(&fixed),
            "{fixed} for {version}: {file:#}"
        );
    }
    let memory = |f: &Value| f["Resources"]["Memory"].as_u64().unwrap();
    let memory_bytes = |f: &Value| f.pointer(&format!("{vm}/memoryBytes")).unwrap().as_u64();
    let unit = memory_bytes(&want).unwrap() / memory(&want);
    assert_eq!(memory_bytes(&file), Some(memory(&file) * unit), "{file:#}");
    let endpoint = file["LibKrunHypervisor"]["KRun"]["Endpoint"]
        .as_str()
        .unwrap();
    let port: u16 = endpoint
        .strip_prefix("http://127.0.0.1:")
        .expect("an http endpoint on loopback")
        .parse()
        .unwrap();
    assert_ne!(port, 0);

    k.ok(&["rm", "dev"]);
    assert!(!podman_file(&k, "dev").exists());
    assert!(theirs.exists());
}

/// One of the user's own Podman machines, running. On Linux Podman's machines are QEMU's, and
/// Podman asks a QEMU machine's state on its QMP socket (pkg/machine/qemu `State`): a real QEMU
/// serves it (no guest: `-M none`), so the real `podman machine list` finds the machine running,
/// as a Mac's finds a running applehv or libkrun machine through its REST endpoint. Killed when
/// dropped.
struct OwnPodmanMachine {
    pid: i32,
}

impl OwnPodmanMachine {
    /// The machine file Podman's `machine init` writes (the fields its list and state query
    /// read), and its QEMU, started in `root`.
    fn start(k: &Krunkit, root: &Path, name: &str) -> OwnPodmanMachine {
        let dir = k.env.home.path().join(format!("own-{name}"));
        std::fs::create_dir(&dir).unwrap();
        let qmp = dir.join("qmp.sock");
        let store = k.xdg.join("containers/podman/machine/qemu");
        std::fs::create_dir_all(&store).unwrap();
        let file = serde_json::json!({
            "Name": name,
            "Version": 1,
            "Created": "2026-01-01T00:00:00Z",
            "LastUp": "2026-01-01T00:00:00Z",
            "Resources": {"CPUs": 1, "DiskSize": 10, "Memory": 512},
            "SSH": {"IdentityPath": "", "Port": 40022, "RemoteUsername": "core"},
            "QEMUHypervisor": {"QMPMonitor": {
                "Address": {"Path": qmp},
                "Network": "unix",
                "Timeout": 2_000_000_000u64,
            }},
        });
        std::fs::write(
            store.join(format!("{name}.json")),
            serde_json::to_vec_pretty(&file).unwrap(),
        )
        .unwrap();
        // -daemonize returns once QEMU is up, its QMP socket listening and its pidfile written.
        let pidfile = dir.join("qemu.pid");
        let o = Command::new(root)
            .args([
                "run",
                "qemu-system-x86_64",
                "-M",
                "none",
                "-nodefaults",
                "-display",
                "none",
                "-qmp",
                &format!("unix:{},server=on,wait=off", qmp.display()),
                "-daemonize",
                "-pidfile",
            ])
            .arg(&pidfile)
            .output()
            .unwrap();
        assert!(o.status.success(), "qemu: {o:?}");
        let pid = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        OwnPodmanMachine { pid }
    }

    fn stop(self) {
        let p = rustix::process::Pid::from_raw(self.pid).unwrap();
        let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
        assert!(gone(self.pid), "QEMU {} ignored SIGTERM", self.pid);
    }
}

impl Drop for OwnPodmanMachine {
    fn drop(&mut self) {
        if let Some(p) = rustix::process::Pid::from_raw(self.pid) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
        }
    }
}

/// The machines `podman machine list` shows every provider's (the root's podman is 5.4: with
/// `--all-providers`), as (name, provider, running).
fn podman_lists(k: &Krunkit) -> Vec<(String, String, bool)> {
    let t = Instant::now();
    let o = k.podman(&["machine", "list", "--all-providers", "--format", "json"]);
    assert!(o.status.success(), "podman machine list: {o:?}");
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["Name"].as_str().unwrap().to_owned(),
                m["VMType"].as_str().unwrap().to_owned(),
                m["Running"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// Podman's rules at `start` of an exposed machine, with the real podman (the trixie root's,
/// 5.4, whose `machine start` refuses while any machine of any provider runs) and the real
/// carbon-vm; no guest boots (a start that gets past the checks stops at a gvproxy that cannot
/// listen in vfkit mode).
#[test]
fn exposed_start_keeps_podmans_rules() {
    let Some(root) = common::gpu_root() else {
        return;
    };
    let k = Krunkit::new(Some(root.clone()));
    let stubs = tempfile::tempdir().unwrap();
    let gvproxy = vfkit_less_gvproxy(stubs.path());
    let start = || {
        let t = Instant::now();
        let o = k.run_with(
            &["start", "pm"],
            &[("CARBON_VM_GVPROXY", gvproxy.as_os_str())],
        );
        (o, t.elapsed())
    };
    k.create("pm", &["--podman-machine"]);
    let file: Value =
        serde_json::from_slice(&std::fs::read(podman_file(&k, "pm")).unwrap()).unwrap();
    let rest_port = rest_port(&file);
    let untouched = |what: &str| {
        assert_eq!(k.pid("pm", "vmm.pid"), None, "{what}: krunkit never ran");
        assert!(!k.machine("pm").join("gvproxy.log").exists(), "{what}");
        assert_eq!(k.machine_state("pm"), "stopped", "{what}");
    };

    // The user's own machine runs, as Podman itself sees it.
    let own = OwnPodmanMachine::start(&k, &root, "mine");
    assert_eq!(
        podman_lists(&k),
        [("mine".to_owned(), "qemu".to_owned(), true)]
    );
    let (o, took) = start();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("Podman machine mine (qemu) is running")
            && err.contains("it would not start pm beside it")
            && err.contains("`podman machine stop mine`"),
        "{err}"
    );
    assert!(took < Duration::from_secs(30), "{took:?}");
    untouched("refused for mine");

    // Stopped, it no longer counts.
    own.stop();
    assert_eq!(
        podman_lists(&k),
        [("mine".to_owned(), "qemu".to_owned(), false)]
    );

    // Another program on pm's REST port: refused, and nothing is sent to it (no Stop).
    let squatter = std::net::TcpListener::bind(("127.0.0.1", rest_port)).unwrap();
    let (o, _) = start();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("another program answers on 127.0.0.1:{rest_port}"))
            && err.contains("the REST port of pm in Podman's machine file"),
        "{err}"
    );
    squatter.set_nonblocking(true).unwrap();
    let (mut probe, _) = squatter.accept().expect("carbon-vm looked at the port");
    probe.set_nonblocking(false).unwrap();
    let mut sent = Vec::new();
    std::io::Read::read_to_end(&mut probe, &mut sent).unwrap();
    assert!(sent.is_empty(), "{}", String::from_utf8_lossy(&sent));
    assert!(squatter.accept().is_err(), "one look, no more");
    drop((probe, squatter));
    untouched("refused for the port");

    // Nothing runs and the port is free: start gets past both checks, to gvproxy.
    let (o, _) = start();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("gvproxy exited during start-up"), "{err}");
    assert_eq!(k.machine_state("pm"), "stopped");

    // While pm is stopped, Podman's state query of its endpoint (GET /vm/state, as Podman's Go
    // client sends it; Podman 6 asks it on every `machine list`) is refused at once: "stopped".
    let t = Instant::now();
    let refused = podman_rest(rest_port, "GET", "").unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());

    k.ok(&["rm", "pm"]);
    assert!(!podman_file(&k, "pm").exists());
}

#[test]
fn krunkit_refuses_an_image_of_another_architecture() {
    let k = Krunkit::new(None);
    let dir = k.env.home.path().join("x86");
    std::fs::create_dir(&dir).unwrap();
    let (art, sha) = common::pack_mini_for(&dir, "x86_64");
    k.env.pull(art.to_str().unwrap(), Some(&sha));
    let o = k.run(&[
        "create",
        "pc",
        "--driver",
        "krunkit",
        "--disk-size",
        "1",
        "--image",
        &sha[..12],
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("is for x86_64; the krunkit driver runs aarch64 guests"),
        "{err}"
    );
    assert_eq!(
        k.run(&["--json", "list"]).stdout,
        b"[]\n",
        "nothing created"
    );
}

/// What a Mac's `podman machine start` would launch from the file carbon-vm writes, for every
/// podman from 5.2 to 6.1 (its krunkit command line, modelled from Podman's source:
/// tests/common/podman_start.rs): krunkit's parser (the stand-in's, which is krunkit's) accepts
/// it, and it gives the guest what carbon-vm's image needs: the Ready channel on vsock 1025
/// (carbon-ready.service writes there), no Ignition (vsock 1024: the image has none), the
/// machine's disk, the REST endpoint Podman then queries; the GPU needs no argument (krunkit
/// always adds it).
#[test]
fn podman_would_start_what_krunkit_and_the_guest_accept() {
    use machine::podman_machine::{Exposed, Schema, config};
    let dir = tempfile::tempdir().unwrap();
    let t = |s| chrono::DateTime::parse_from_rfc3339(s).unwrap();
    let exposed = Exposed {
        name: "dev".into(),
        cpus: 4,
        memory_mib: 4096,
        disk_gib: 20,
        disk: dir.path().join("disk.raw"),
        identity: dir.path().join("id_ed25519"),
        ssh_port: 50123,
        rest_port: 50124,
        efi_variable_store: dir.path().join("efi-vars"),
        mounts: vec![("/Users/me".into(), "/Users/me".into(), "carbon-vol0".into())],
        uid: 501,
        created: t("2026-11-21T10:00:00+01:00"),
        last_up: t("2026-11-21T10:00:00+01:00"),
    };
    let runtime = dir.path().join("podman");
    let data = dir.path().join("data");
    let check = |args: &[String]| -> Value {
        let o = Command::new(standin())
            .args(args)
            .env("KRUNKIT_STANDIN_CHECK", "1")
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "krunkit refuses podman's {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice(&o.stdout).unwrap()
    };
    for (major, minor) in [
        (5, 2),
        (5, 3),
        (5, 4),
        (5, 5),
        (5, 6),
        (5, 7),
        (5, 8),
        (6, 0),
        (6, 1),
    ] {
        let schema = Schema::of(major, minor).unwrap();
        let file: Value =
            serde_json::from_slice(&serde_json::to_vec(&config(&exposed, schema)).unwrap())
                .unwrap();
        let args = common::podman_start::krunkit_args(major, minor, &file, &runtime, &data);
        let accepted = check(&args);
        let what = format!("podman {major}.{minor}: {accepted:#}");
        let devices = accepted["devices"].as_array().unwrap();
        let vsock = |port: u64| {
            devices
                .iter()
                .find(|d| d["kind"] == "virtio-vsock" && d["port"] == port)
        };
        let ready = vsock(1025).unwrap_or_else(|| panic!("no Ready channel: {what}"));
        assert_eq!(ready["connect"], false, "the guest connects out: {what}");
        assert!(vsock(1024).is_none(), "no Ignition: {what}");
        assert_eq!(devices[0]["kind"], "virtio-blk", "{what}");
        assert_eq!(devices[0]["path"], exposed.disk.to_str().unwrap(), "{what}");
        assert_eq!(devices[0]["format"], "raw", "{what}");
        assert!(
            devices
                .iter()
                .any(|d| d["kind"] == "virtio-net" && d["vfkit_magic"] == true),
            "{what}"
        );
        assert!(
            devices
                .iter()
                .any(|d| d["kind"] == "virtio-fs" && d["tag"] == "carbon-vol0"),
            "{what}"
        );
        assert_eq!(accepted["restful_uri"], "tcp://127.0.0.1:50124", "{what}");
        assert_eq!(accepted["nested"], (major, minor) >= (5, 6), "{what}");
        let timesync = (major >= 6).then_some(1234);
        assert_eq!(accepted["timesync_port"].as_u64(), timesync, "{what}");
    }
    // The model bites: a file that says "never started" makes podman serve Ignition.
    let mut first = exposed.clone();
    first.last_up = t("0001-01-01T00:00:00Z");
    let file = serde_json::to_value(config(&first, Schema::V5_6)).unwrap();
    let args = common::podman_start::krunkit_args(5, 6, &file, &runtime, &data);
    let accepted = check(&args);
    assert!(
        accepted["devices"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["port"] == 1024),
        "{accepted:#}"
    );
}

/// An HTTP request to krunkit's REST endpoint as Podman's Go client sends it (no
/// Content-Type); the answer, or how the connection failed (Podman reads a refused one as
/// "stopped").
fn podman_rest(port: u16, method: &str, body: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    write!(
        s,
        "{method} /vm/state HTTP/1.1\r\nHost: localhost:{port}\r\nUser-Agent: Go-http-client/1.1\r\n\
         Content-Length: {}\r\nAccept-Encoding: gzip\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    Ok(answer)
}

/// The Mac, rehearsed: see the module's comment.
#[test]
fn the_mac_rehearsal_boots_runs_venus_containers_and_answers_podman() {
    common::gpu::with_stall_retry(mac_rehearsal);
}

fn mac_rehearsal() {
    let (Some(image), Some(root), Some(images), Some(_llama)) = (
        common::aarch64_image(),
        common::gpu_root(),
        common::vk_images_aarch64(),
        common::llama_root(),
    ) else {
        return;
    };
    // krunkit as carbon-vm runs it, plus a connect-mode vsock port (the host reaches a listener
    // in the guest), which carbon-vm itself does not use. krunkit never removes that socket.
    let extra = tempfile::tempdir_in("/tmp").unwrap();
    let to_guest = extra.path().join("to-guest.sock");
    let krunkit = extra.path().join("krunkit");
    std::fs::write(
        &krunkit,
        format!(
            "#!/bin/sh\nrm -f '{sock}'\nexec '{standin}' \"$@\" --device \
             'virtio-vsock,port=5000,socketURL={sock},connect'\n",
            sock = to_guest.display(),
            standin = standin().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &krunkit,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    // The ggml device's server: Debian's, on this host's CPU, where a Mac's runs on Metal.
    let ggml_server = format!(
        "{}/scripts/llama-root run /usr/libexec/{}-linux-gnu/llama/bin/ggml-rpc-server",
        env!("CARGO_MANIFEST_DIR"),
        std::env::consts::ARCH
    );
    let mut g = common::gpu::GpuEnv::new(root)
        .with_var("CARBON_VM_KRUNKIT", &krunkit)
        .with_var("CARBON_VM_GGML_SERVER", &ggml_server);
    if !gvproxy_has_vfkit() {
        eprintln!(
            "NOTE: this host's gvproxy cannot listen in vfkit mode (Linux builds before 0.8.9): \
             the rehearsal runs it behind the gvproxy-vfkit shim"
        );
        g = g.with_var(
            "CARBON_VM_GVPROXY",
            common::workspace_bin("krunkit-standin", "gvproxy-vfkit"),
        );
    }
    let id = &g.pull_aarch64(&image);
    let shared = tempfile::tempdir_in(g.env.home.path()).unwrap();
    std::fs::write(shared.path().join("hello"), "from the host\n").unwrap();
    let volume = format!("{}:/host", shared.path().display());
    let name = "mac";
    ok(
        &g.carbon_vm(&[
            "create",
            name,
            "--driver",
            "krunkit",
            "--gpu",
            "--ggml",
            "--podman-machine",
            "--image",
            id,
            "--memory",
            "2048",
            "--disk-size",
            "8",
            "--volume",
            &volume,
        ]),
        "create --driver krunkit --gpu --podman-machine",
    );
    let podman_file = g
        .xdg
        .join("containers/podman/machine/libkrun")
        .join(format!("{name}.json"));
    let file: Value = serde_json::from_slice(&std::fs::read(&podman_file).unwrap()).unwrap();
    let rest_port = rest_port(&file);
    let machine = g.env.home.path().join("machines").join(name);

    // Start: EDK2 boots the disk, the guest says Ready on vsock 1025 with its host key.
    ok(&g.carbon_vm(&["start", name]), "start");
    let (supervisor, server) = ggml_serving(&g, &machine);
    let known = std::fs::read_to_string(machine.join("known_hosts")).unwrap();
    assert!(
        known.starts_with(&format!("carbon-vm-{name} ssh-ed25519 ")),
        "{known}"
    );
    let inspect: Value =
        serde_json::from_str(&ok(&g.carbon_vm(&["--json", "inspect", name]), "inspect")).unwrap();
    assert_eq!(
        (&inspect["state"], &inspect["driver"], &inspect["arch"]),
        (&"running".into(), &"krunkit".into(), &"aarch64".into()),
        "{inspect:#}"
    );
    // krunkit serves the REST API where Podman's file says; gvproxy listens in vfkit mode.
    let argv = cmdline(k_pid(&machine));
    assert!(
        argv.contains(&format!("--restful-uri tcp://127.0.0.1:{rest_port}")),
        "{argv}"
    );
    let gvproxy: i32 = std::fs::read_to_string(machine.join("gvproxy.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(cmdline(gvproxy).contains("-listen-vfkit unixgram://"));
    // What krunkit gives the guest, seen from inside: its devices on the virtio-mmio bus, the
    // credentials from SMBIOS (the hostname), the shared folder, vsock, 16 KiB pages.
    let guest = ok(
        &g.carbon_vm(&[
            "ssh",
            name,
            "--",
            "hostname; uname -r; getconf PAGESIZE; cat /host/hello; \
             test -e /dev/vsock && echo vsock; \
             ls /sys/bus/platform/drivers/virtio-mmio | grep -c LNRO0005; \
             cat /root/.ssh/authorized_keys; echo; dmesg | grep -c 'efi: EFI v'",
        ]),
        "ssh",
    );
    let lines: Vec<&str> = guest.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(
        lines[0], name,
        "the hostname credential from SMBIOS: {guest}"
    );
    assert!(
        lines[1].ends_with("-arm64-16k"),
        "the 16 KiB-page kernel: {guest}"
    );
    assert_eq!(&lines[2..5], ["16384", "from the host", "vsock"], "{guest}");
    let mmio: u32 = lines[5].parse().unwrap();
    assert!(
        mmio >= 5,
        "blk, net, rng, console, vsock, fs over MMIO: {guest}"
    );
    // Root's key was written to the disk from the credential: a start by Podman, which passes
    // no credentials, still lets Podman's own SSH check in.
    let pubkey = std::fs::read_to_string(machine.join("id_ed25519.pub")).unwrap();
    assert_eq!(lines[6], pubkey.trim(), "{guest}");
    assert_eq!(
        lines[7], "1",
        "the kernel came up through EFI firmware: {guest}"
    );

    // The host reaches a guest listener through krunkit's connect-mode socket.
    ok(
        &g.carbon_vm(&[
            "ssh",
            name,
            "--",
            "setsid -f socat VSOCK-LISTEN:5000 SYSTEM:'echo hello from the guest' \
             </dev/null >/dev/null 2>&1",
        ]),
        "a vsock listener in the guest",
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let greeting = loop {
        // Until socat listens, the guest refuses and krunkit closes the connection; one that
        // neither answers nor closes is tried again.
        let mut line = String::new();
        if let Ok(s) = std::os::unix::net::UnixStream::connect(&to_guest)
            && s.set_read_timeout(Some(Duration::from_secs(5))).is_ok()
        {
            let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(s), &mut line);
        }
        if !line.is_empty() || Instant::now() > deadline {
            break line;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(greeting, "hello from the guest\n");

    // The GPU: Venus in the VM and the bundled container, every blob a 16 KiB multiple (the
    // stand-in ends the VM otherwise).
    let o = g.carbon_vm(&["--json", "gpu", "check", name, "--mac-pages"]);
    common::gpu::passed_on_venus(&o, "gpu check --mac-pages");
    let out = ok(
        &g.podman(&[
            "-c",
            name,
            "run",
            "--rm",
            "--device",
            "/dev/dri",
            "localhost/carbon-venus:latest",
            "vulkaninfo",
            "--summary",
        ]),
        "podman -c NAME run vulkaninfo",
    );
    assert!(
        out.contains("DRIVER_ID_MESA_VENUS") && out.contains("Virtio-GPU Venus ("),
        "{out}"
    );
    // An aarch64 image without a Venus driver (Debian 12's Mesa: lavapipe) gets the image's
    // bundled one through the CDI device, with every blob a 16 KiB multiple still.
    let lavapipe = "localhost/bookworm-lavapipe";
    ok(
        &g.podman(&[
            "-c",
            name,
            "import",
            images.join("bookworm-lavapipe.tar").to_str().unwrap(),
            lavapipe,
        ]),
        "podman import an aarch64 image without Venus",
    );
    let o = g.carbon_vm(&[
        "--json",
        "gpu",
        "check",
        name,
        "--image",
        lavapipe,
        "--mac-pages",
    ]);
    common::gpu::passed_on_venus(&o, "gpu check --image (no Venus of its own) --mac-pages");
    // krunkit's REST API (Podman's endpoint: an unauthenticated HardStop) is a control port:
    // a container reaching for it through host.containers.internal is refused. (The container
    // borrows the guest's static busybox for its nc.)
    let attack = format!(
        "printf 'GET /vm/state HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n' | \
         /bin/busybox nc -w 10 192.168.127.254 {rest_port} 2>&1; echo exit=$?"
    );
    let o = g.podman(&[
        "-c",
        name,
        "run",
        "--rm",
        "-v",
        "/bin/busybox:/bin/busybox:ro",
        "localhost/carbon-venus:latest",
        "sh",
        "-c",
        &attack,
    ]);
    let answer = String::from_utf8_lossy(&o.stdout);
    assert!(
        answer.contains("Connection refused") && !answer.contains("VirtualMachineState"),
        "krunkit's REST port, from a container: {answer}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let vmm_log = std::fs::read_to_string(machine.join("vmm.log")).unwrap();
    let blobs = vmm_log.matches("a 16 KiB multiple: mapped").count();
    assert!(
        blobs >= 4,
        "the stand-in saw the guest's blobs: {}",
        common::tail(&vmm_log, 3000)
    );

    // Podman's stop (`podman machine stop`): POST {"state":"Stop"}, then GET until krunkit is
    // gone, every 500 ms for up to 90 s; any answer, even "Stopped", means not yet.
    let krunkit = k_pid(&machine);
    let answer = podman_rest(rest_port, "GET", "").expect("krunkit serves Podman's endpoint");
    assert!(answer.contains("VirtualMachineStateRunning"), "{answer}");
    let answer = podman_rest(rest_port, "POST", r#"{"state":"Stop"}"#).unwrap();
    assert!(answer.contains("VirtualMachineStateStopping"), "{answer}");
    let deadline = Instant::now() + Duration::from_secs(90);
    while podman_rest(rest_port, "GET", "").is_ok() {
        assert!(
            Instant::now() < deadline,
            "the guest did not power off for Podman"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(gone(krunkit));
    // The ggml device's supervisor saw krunkit end, and ended its server and itself.
    assert!(gone(supervisor) && gone(server));
    let console = std::fs::read_to_string(machine.join("console.log")).unwrap();
    // The guest shut itself down (the power button), not killed.
    assert!(
        console.contains("systemd-shutdown"),
        "{}",
        common::tail(&console, 2000)
    );
    // carbon-vm sees what Podman did, and its own network, left running, goes with `stop`.
    let list: Value = serde_json::from_str(&ok(&g.carbon_vm(&["--json", "list"]), "list")).unwrap();
    assert_eq!(list[0]["state"], "stopped", "{list:#}");
    assert!(
        alive(gvproxy),
        "carbon-vm's gvproxy outlives a stop it did not make"
    );
    ok(
        &g.carbon_vm(&["stop", name]),
        "stop of a machine Podman stopped",
    );
    assert!(gone(gvproxy));

    // Start again (what carbon-vm left running of the old run is cleaned up), then stop, rm.
    ok(&g.carbon_vm(&["start", name]), "start again");
    let out = ok(
        &g.podman(&[
            "-c",
            name,
            "run",
            "--rm",
            "localhost/carbon-venus:latest",
            "true",
        ]),
        "podman run",
    );
    assert!(out.is_empty(), "{out}");
    let krunkit = k_pid(&machine);
    let (supervisor, server) = ggml_serving(&g, &machine);
    ok(&g.carbon_vm(&["stop", name]), "stop");
    assert!(gone(krunkit) && gone(supervisor) && gone(server));
    let refused = podman_rest(rest_port, "GET", "").unwrap_err();
    assert_eq!(
        refused.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "stopped, for Podman"
    );
    ok(&g.carbon_vm(&["rm", name]), "rm");
    assert!(!machine.exists() && !podman_file.exists());
    let conns = ok(
        &g.podman(&["system", "connection", "list", "--format", "{{.Name}}"]),
        "connections",
    );
    assert!(!conns.lines().any(|l| l == name), "{conns}");
}

/// The ggml device's supervisor and server PIDs, once the server announced its protocol.
fn ggml_serving(g: &common::gpu::GpuEnv, machine: &Path) -> (i32, i32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v: Value =
            serde_json::from_str(&ok(&g.carbon_vm(&["--json", "inspect", "mac"]), "inspect"))
                .unwrap();
        let d = &v["ggml"];
        if d["running"] == true && d["rpc_version"].is_string() {
            let supervisor = std::fs::read_to_string(machine.join("ggml.pid")).unwrap();
            return (
                supervisor.trim().parse().unwrap(),
                d["server_pid"].as_i64().unwrap() as i32,
            );
        }
        assert!(Instant::now() < deadline, "no ggml server: {v:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The running krunkit of a machine directory.
fn k_pid(machine: &Path) -> i32 {
    std::fs::read_to_string(machine.join("vmm.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}
