//! krunkit machines end to end through the real carbon-vm binary and the real gvproxy, with the
//! krunkit stand-in (tests/krunkit-standin: krunkit's CLI, REST API and vsock Ready contract,
//! no guest) as `CARBON_VM_KRUNKIT`.
//!
//! gvproxy. krunkit attaches to gvproxy's `-listen-vfkit unixgram://` socket, and no released
//! gvproxy for Linux can listen there (up to 0.8.8, including Debian's, it exits with
//! "unsupported 'unixgram' scheme"; macOS builds can). So a test proves that `start` fails with
//! gvproxy's own reason and leaves nothing running, and the whole lifecycle test (start to Ready
//! with the host key pinned, list, graceful stop over REST, a krunkit killed with SIGKILL, rm) is
//! marked ignored, with that reason, until the Mac rehearsal gives it a stand-in that boots a
//! guest (the stand-in here runs none, so no Podman API could ever answer, and a start that
//! cannot reach it stops everything it began). Everything else (create, the warning,
//! `--podman-machine`) runs everywhere. Below carbon-vm, the krunkit driver's lifecycle is tested
//! against the stand-in without gvproxy (tests/krunkit-standin/tests/driver_lifecycle.rs).

mod common;

use common::Env;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The stand-in's executable. A test cannot name another package's binary, so cargo builds it
/// (nothing to do when `cargo test --workspace` built it already) and says where it is.
fn standin() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| common::workspace_bin("krunkit-standin"))
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
        let carbon_vm = assert_cmd::cargo::cargo_bin("carbon-vm");
        let mut c = match &self.root {
            None => Command::new(carbon_vm),
            Some(root) => {
                let mut c = Command::new(root);
                c.arg("run").arg(carbon_vm);
                c
            }
        };
        c.args(args)
            .env("CARBON_VM_HOME", self.env.home.path())
            .env("XDG_CONFIG_HOME", &self.xdg)
            .env("CONTAINERS_CONF", common::podman_conf(&self.xdg))
            .env("CARBON_VM_KRUNKIT", standin())
            .env("CARBON_VM_CATALOG", &self.catalog)
            .env("CARBON_VM_PODMAN_TIMEOUT", "1")
            .env_remove("CARBON_VM_LOG")
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

    /// `start` reaches Ready, pins the stand-in's key, then gets no Podman tunnel (see above).
    fn start_to_ready(&self, name: &str) {
        let o = self.run(&["start", name]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(
            err.contains("the Podman socket tunnel")
                || err.contains("the Podman API did not answer"),
            "{err}"
        );
        assert_eq!(
            std::fs::read_to_string(self.machine(name).join("known_hosts")).unwrap(),
            format!(
                "carbon-vm-{name} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKrunkitStandin krunkit-standin\n"
            )
        );
        assert_eq!(self.machine_state(name), "stopped");
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

#[test]
fn without_a_vfkit_gvproxy_start_fails_with_its_reason_and_leaves_nothing_running() {
    if gvproxy_has_vfkit() {
        eprintln!("SKIP: this host's gvproxy listens in vfkit mode (the lifecycle test runs)");
        return;
    }
    let k = Krunkit::new(None);
    k.create("dev", &[]);
    for _ in 0..2 {
        let o = k.run(&["start", "dev"]);
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

#[test]
#[ignore = "needs a stand-in that boots a guest and a gvproxy that listens in vfkit mode (no Linux release up to 0.8.8 does): the Mac rehearsal makes it run"]
fn create_start_stop_kill_start_rm() {
    let k = Krunkit::new(None);
    k.create("dev", &[]);
    k.start_to_ready("dev");
    // krunkit got the machine: its disk, its SSH key as a systemd credential, a private REST
    // socket, gvproxy's vfkit socket; and gvproxy listens in vfkit mode.
    let krunkit = k.pid("dev", "vmm.pid").unwrap();
    let argv = cmdline(krunkit);
    let dir = k.machine("dev");
    for want in [
        format!("virtio-blk,path={}/disk.raw,format=raw", dir.display()),
        "--oem-string io.systemd.credential:ssh.authorized_keys.root=ssh-ed25519 ".into(),
        "--oem-string io.systemd.credential:system.hostname=dev".into(),
        "--restful-uri unix://".into(),
    ] {
        assert!(argv.contains(&want), "{want} not in {argv}");
    }
    let gvproxy = k.pid("dev", "gvproxy.pid").unwrap();
    assert!(cmdline(gvproxy).contains("-listen-vfkit unixgram://"));
    let list: Value = serde_json::from_str(&k.ok(&["--json", "list"])).unwrap();
    assert_eq!(list[0]["state"], "broken");
    assert!(list[0]["ssh_port"].is_u64());

    // Graceful: REST Stop, and the guest powers off (the stand-in logs it on its console).
    k.ok(&["stop", "dev"]);
    let console = std::fs::read_to_string(dir.join("console.log")).unwrap();
    assert!(console.contains("guest powered off"), "{console}");
    assert!(gone(krunkit) && gone(gvproxy));
    assert_eq!(k.machine_state("dev"), "stopped");

    // A krunkit killed with SIGKILL: stopped, and the next start cleans up and works.
    k.start_to_ready("dev");
    let krunkit = k.pid("dev", "vmm.pid").unwrap();
    let gvproxy = k.pid("dev", "gvproxy.pid").unwrap();
    let killed = Command::new("kill")
        .args(["-9", &krunkit.to_string()])
        .status()
        .unwrap();
    assert!(killed.success() && gone(krunkit));
    assert_eq!(k.machine_state("dev"), "stopped");
    k.start_to_ready("dev");
    assert!(gone(gvproxy), "the dead run's gvproxy was stopped");
    let krunkit = k.pid("dev", "vmm.pid").unwrap();
    let gvproxy = k.pid("dev", "gvproxy.pid").unwrap();

    let o = k.run(&["rm", "dev"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "rm of a running machine needs --force"
    );
    k.ok(&["rm", "--force", "dev"]);
    assert!(gone(krunkit) && gone(gvproxy));
    assert!(!dir.exists());
    assert!(!k.env.home.path().join("run/dev").exists());
}

/// Whether this host's podman is one whose machine files carbon-vm writes (5.2 to 5.6).
fn verified_podman_here() -> bool {
    let Ok(o) = Command::new("podman").arg("--version").output() else {
        return false;
    };
    let v = String::from_utf8_lossy(&o.stdout);
    let mut parts = v.trim().trim_start_matches("podman version ").split('.');
    matches!(
        (
            parts.next(),
            parts.next().and_then(|m| m.parse::<u32>().ok())
        ),
        (Some("5"), Some(2..=6))
    )
}

/// Podman's machine store for `k`.
fn podman_file(k: &Krunkit, name: &str) -> PathBuf {
    k.xdg
        .join("containers/podman/machine/libkrun")
        .join(format!("{name}.json"))
}

#[test]
fn podman_machine_refused_for_a_podman_whose_schema_was_not_checked() {
    if verified_podman_here() {
        eprintln!("SKIP: this host's podman is a verified 5.x (the other podman test covers it)");
        return;
    }
    let k = Krunkit::new(None);
    let o = k.run(&["create", "dev", "--driver", "krunkit", "--podman-machine"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(6), "{err}");
    assert!(err.contains("5.2 to 5.6"), "{err}");
    assert!(!k.machine("dev").exists());
    assert!(!podman_file(&k, "dev").exists());
    // A driver Podman's libkrun machines do not run on is a usage error, whatever the podman.
    let o = k.run(&["create", "dev", "--driver", "qemu", "--podman-machine"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(!k.machine("dev").exists());
}

/// With podman 5 (the trixie root's in CI): the machine file in Podman's store, never over
/// Podman's own, removed by `rm`; and, where gvproxy allows a start, krunkit's REST API where
/// the file says (what `podman machine list` asks).
#[test]
fn podman_machine_file() {
    let root = if verified_podman_here() {
        None
    } else {
        match common::gpu_root() {
            Some(root) => Some(root),
            None => return,
        }
    };
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
