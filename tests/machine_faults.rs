//! Faults during `start` on QEMU (TCG): carbon-vm, QEMU or gvproxy killed with SIGKILL, and the
//! SSH tunnel (the host's Podman socket) or gvproxy killed on a running machine. Each is followed
//! by a truthful `list` and a `start` that works. QEMU's messages after it daemonized are kept in
//! the machine's vmm.log.

mod common;

use common::Env;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Sends `signal` (as kill(1) names it) to `pid`.
fn kill(signal: &str, pid: i32) {
    assert!(
        Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
}

/// SIGKILL, then waits (bounded) until the process is dead: gone, or a zombie (empty cmdline).
fn kill9(pid: i32) {
    kill("KILL", pid);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty()) {
        assert!(Instant::now() < deadline, "{pid} survived SIGKILL");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn kills_during_start_leave_a_truthful_state_and_a_working_start() {
    let Some(image) = common::default_image() else {
        return;
    };
    let env = Env::new();
    let xdg = env.home.path().join("xdg");
    let cv = || {
        let mut c = env.cmd();
        c.env("XDG_CONFIG_HOME", &xdg)
            .env("CONTAINERS_CONF", common::podman_conf(&xdg));
        c
    };
    let spawn_start = || -> Child {
        env.process()
            .env("XDG_CONFIG_HOME", &xdg)
            .env("CONTAINERS_CONF", common::podman_conf(&xdg))
            .args(["start", "dev"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let state = || env.json(&["list"])[0]["state"].as_str().unwrap().to_owned();
    let podman_ps = || {
        let o = Command::new("podman")
            .env("XDG_CONFIG_HOME", &xdg)
            .env("CONTAINERS_CONF", common::podman_conf(&xdg))
            .args(["-c", "dev", "ps"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let dir = env.home.path().join("machines/dev");
    env.pull(image.to_str().unwrap(), Some(&common::sha256_file(&image)));
    cv().args(["create", "dev", "--memory", "2048", "--disk-size", "8"])
        .assert()
        .success();

    let reason = || {
        env.json(&["list"])[0]["reason"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    // carbon-vm itself killed while it waits for the guest: the VM lives on, unfinished. Killed
    // once the guest's kernel prints, not at QEMU's pidfile: a QEMU still starting up would fail
    // to connect the Ready socket of a carbon-vm gone, and exit (then "stopped" is the truth).
    let mut start = spawn_start();
    common::wait_for_pid(&dir.join("vmm.pid"));
    common::wait_for_text(&dir.join("console.log"), "Linux version");
    start.kill().unwrap();
    start.wait().unwrap();
    assert_eq!(state(), "broken");
    assert!(
        reason().contains("the guest has not said Ready"),
        "{}",
        reason()
    );
    cv().args(["start", "dev"]).assert().success();
    assert_eq!(state(), "running");
    podman_ps();

    // The SSH tunnel (the host's Podman socket) killed on a running machine: broken, and start
    // opens it again without a reboot.
    let qemu = std::fs::read_to_string(dir.join("vmm.pid")).unwrap();
    kill9(common::wait_for_pid(&dir.join("tunnel.pid")));
    assert_eq!(state(), "broken");
    assert!(reason().contains("SSH tunnel"), "{}", reason());
    cv().args(["start", "dev"]).assert().success();
    assert_eq!(std::fs::read_to_string(dir.join("vmm.pid")).unwrap(), qemu);
    podman_ps();

    // gvproxy (the network) killed on a running machine: broken, and start boots it again.
    kill9(common::wait_for_pid(&dir.join("gvproxy.pid")));
    assert_eq!(state(), "broken");
    assert!(reason().contains("gvproxy is not running"), "{}", reason());
    cv().args(["start", "dev"]).assert().success();
    assert_eq!(state(), "running");
    podman_ps();
    // A boot of a machine whose root was grown to its disk before: the guest starts nothing to
    // check it again (no carbon.grow-root credential; docs/internals.md, "The guest's boot").
    assert!(!common::root_growth_checked(cv(), "dev"));
    cv().args(["stop", "--force", "dev"]).assert().success();
    assert_eq!(state(), "stopped");

    // QEMU killed during start: start fails at once saying so (its launch, or the wait for Ready,
    // sees QEMU gone), with the console tail; not by waiting out the 900 s Ready timeout.
    let start = spawn_start();
    kill9(common::wait_for_pid(&dir.join("vmm.pid")));
    let o = start.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("qemu exited during start-up"), "{err}");
    assert!(!err.contains("did not signal Ready"), "{err}");
    assert_eq!(state(), "stopped");
    cv().args(["start", "dev"]).assert().success();
    cv().args(["stop", "--force", "dev"]).assert().success();

    // gvproxy killed during start: start says so, the machine is broken, start repairs it.
    let start = spawn_start();
    common::wait_for_pid(&dir.join("vmm.pid"));
    kill9(common::wait_for_pid(&dir.join("gvproxy.pid")));
    let o = start.wait_with_output().unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("gvproxy"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(state(), "stopped", "a failed start stops what it began");
    cv().args(["start", "dev"]).assert().success();
    podman_ps();

    // QEMU's own messages once it runs (it is daemonized) land in this run's vmm.log, the last
    // run's beside it: SIGTERM makes QEMU say why it exits.
    let vmm_log = dir.join("vmm.log");
    assert!(dir.join("vmm.log.1").exists(), "the last run's log is kept");
    let said = "terminating on signal 15";
    assert!(!std::fs::read_to_string(&vmm_log).unwrap().contains(said));
    kill("TERM", common::wait_for_pid(&dir.join("vmm.pid")));
    common::wait_for_text(&vmm_log, said);
    cv().args(["rm", "--force", "dev"]).assert().success();
}

/// `carbon-vm` run as the tests' ordinary user by a test that keeps root (to mount and fill a
/// tmpfs), with `env`'s state.
fn as_test_user(env: &Env) -> Command {
    let user = std::env::var("CARBON_VM_TEST_USER")
        .expect("CARBON_VM_TEST_USER names the user machines run as (scripts/test sets it)");
    let mut c = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/lib/as-user"));
    c.arg(user).arg(assert_cmd::cargo::cargo_bin("carbon-vm"));
    env.configure(&mut c);
    c
}

/// Removes the machine as its user when dropped (before the tmpfs under it is unmounted).
struct RemoveAs<'a>(&'a Env);

impl Drop for RemoveAs<'_> {
    fn drop(&mut self) {
        let _ = as_test_user(self.0)
            .args(["rm", "--force", "dev"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The host's filesystem fills under a running machine: QEMU pauses the guest on the write it
/// cannot place (nothing the guest wrote is lost), `list` says so instead of "running", `start`
/// fails at once saying so, and once there is space again a forced stop and a start bring it
/// back. The test keeps root to mount and fill a small tmpfs; the machine runs as the ordinary user.
#[test]
fn a_full_host_disk_pauses_the_guest_and_says_so() {
    let Some(image) = common::default_image() else {
        return;
    };
    // The image's unpacked copy and the machine's disk (its written blocks) fit, little more.
    let Some(fs) = common::tmpfs::Tmpfs::mount("2600m") else {
        return;
    };
    let env = fs.env();
    let cv = |args: &[&str]| {
        let o = as_test_user(&env).args(args).output().unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let state = || {
        let o = as_test_user(&env)
            .args(["--json", "list"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        (
            v[0]["state"].as_str().unwrap().to_owned(),
            v[0]["reason"].as_str().unwrap_or("").to_owned(),
        )
    };
    // Everything under the home is the user's, the Podman configuration the test made included.
    common::podman_conf(&env.home.path().join("xdg"));
    let user = std::env::var("CARBON_VM_TEST_USER").unwrap();
    assert!(
        Command::new("chown")
            .args(["-R", &user])
            .arg(env.home.path())
            .status()
            .unwrap()
            .success()
    );
    let sha = common::sha256_file(&image);
    let image = image.to_str().unwrap();
    assert_eq!(cv(&["image", "pull", image, "--sha256", &sha]).0, Some(0));
    let _remove = RemoveAs(&env);
    let (code, err) = cv(&["create", "dev", "--memory", "2048", "--disk-size", "8"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = cv(&["start", "dev"]);
    assert_eq!(code, Some(0), "{err}");

    // The filesystem filled but for a MiB (the machine's logs go on), then the guest writes.
    // The guest still writes on its own after Ready (what its boot started goes on), so what is
    // free can shrink between the look and the fill (seen in CI): filled again then.
    let filler = fs.path().join("filler");
    let filled = (0..5).any(|_| {
        let free = rustix::fs::statvfs(fs.path()).unwrap();
        let fill = (free.f_bavail * free.f_frsize).saturating_sub(1 << 20);
        let ok = Command::new("fallocate")
            .args(["-l", &fill.to_string()])
            .arg(&filler)
            .status()
            .unwrap()
            .success();
        if !ok {
            let _ = std::fs::remove_file(&filler);
        }
        ok
    });
    assert!(filled, "fallocate could not fill the filesystem in 5 tries");
    let mut writer = as_test_user(&env)
        .args([
            "ssh",
            "dev",
            "--",
            "head -c 64M /dev/urandom > /var/tmp/fill && sync",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let said = "found the host's filesystem full";
    let deadline = Instant::now() + Duration::from_secs(300);
    let reason = loop {
        let (state, reason) = state();
        if state != "running" {
            assert_eq!(state, "broken", "{reason}");
            break reason;
        }
        assert!(
            Instant::now() < deadline,
            "the guest still runs on a full disk"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(reason.contains(said), "{reason}");
    // A start of the paused machine says why at once (exit 6: the host), and leaves it as it is.
    let (code, err) = cv(&["start", "dev"]);
    assert_eq!(code, Some(6), "{err}");
    assert!(err.contains(said), "{err}");
    assert_eq!(state().0, "broken");
    let _ = writer.kill();
    let _ = writer.wait();

    // The paused guest ended, a start on the full filesystem is refused before anything runs.
    let (code, err) = cv(&["stop", "--force", "dev"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = cv(&["start", "dev"]);
    assert_eq!(code, Some(6), "{err}");
    assert!(err.contains("too little to start the machine"), "{err}");
    assert_eq!(state().0, "stopped");
    // Space again: the machine starts.
    std::fs::remove_file(&filler).unwrap();
    let (code, err) = cv(&["start", "dev"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(state().0, "running");
}
