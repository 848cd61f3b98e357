//! End to end on QEMU (TCG): create, start, the real podman client over the SSH-forwarded
//! socket (the tunnel begun at the guest's early key, before Ready), ssh, graceful stop through QMP, `set` (more disk, fewer CPUs), start again, rm.

mod common;

use common::Env;
use std::process::Command;

#[test]
fn create_start_podman_ssh_stop_start_rm() {
    let Some(image) = common::default_image() else {
        return;
    };
    let env = Env::new();
    // Podman's connection list lives in the user's config: keep the test's own.
    let xdg = env.home.path().join("xdg");
    let podman = || {
        let mut c = Command::new("podman");
        c.env("XDG_CONFIG_HOME", &xdg)
            .env("CONTAINERS_CONF", common::podman_conf(&xdg));
        c
    };
    let cv = || {
        let mut c = env.cmd();
        c.env("XDG_CONFIG_HOME", &xdg)
            .env("CONTAINERS_CONF", common::podman_conf(&xdg));
        c
    };
    let img = env.pull(image.to_str().unwrap(), Some(&common::sha256_file(&image)));
    cv().args([
        "create",
        "dev",
        "--cpus",
        "2",
        "--memory",
        "2048",
        "--disk-size",
        "8",
    ])
    .assert()
    .success();
    // `create` grew the root partition to the disk's end on the host: nothing is left to grow,
    // and the table reads whole at the new size (the guest only grows the filesystem).
    let disk = env.home.path().join("machines/dev/disk.raw");
    assert!(!guest_image::grow::grow_root(&disk, "carbon-root").unwrap());
    guest_image::inspect::open_partition(&disk, "carbon-root").unwrap();
    let started: serde_json::Value = serde_json::from_slice(
        &cv()
            .args(["--json", "start", "dev"])
            .assert()
            .success()
            .get_output()
            .stdout,
    )
    .unwrap();
    assert_eq!(started["state"], "running");
    let sock = started["podman_socket"].as_str().unwrap().to_owned();
    let mode = std::fs::metadata(&sock).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );

    // Numbers the guest prints, one per word, from a shell command run over ssh.
    let guest_numbers = |script: &str| -> Vec<u64> {
        let o = cv().args(["ssh", "dev", "--", script]).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect()
    };
    // First boot does only per-machine work: the root is grown to --disk-size, and the bundled
    // image is already in the container storage the image build wrote (its image list is older
    // than this boot) rather than loaded by the guest now. Checked before anything runs podman.
    let facts = guest_numbers(
        "df --output=size -B1G / | tail -n 1; \
         stat -c %Y /var/lib/containers/storage/overlay-images/images.json; \
         date -d \"$(uptime -s)\" +%s",
    );
    let [root_gib, images_mtime, booted] = facts[..] else {
        panic!("unexpected answer {facts:?}");
    };
    assert!(
        root_gib >= 7,
        "root not grown to the 8 GiB disk: {root_gib} GiB"
    );
    assert!(
        images_mtime < booted,
        "the container storage was written by this boot ({images_mtime} >= {booted})"
    );
    // A new machine's guest was asked to grow its root (the carbon.grow-root credential), and the
    // host recorded the size it was grown to, which spares the next boots the check.
    assert!(common::root_growth_checked(cv(), "dev"));
    assert_eq!(
        std::fs::read_to_string(env.home.path().join("machines/dev/root-grown")).unwrap(),
        "8"
    );

    let o = podman()
        .args([
            "-c",
            "dev",
            "run",
            "--rm",
            "localhost/carbon-venus:latest",
            "echo",
            "ok",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "ok");
    // Podman 5 (the GPU root's) finds the same connection as the host's podman 4.
    if let Some(root) = common::gpu_root() {
        let o = Command::new(root)
            .args(["run", "podman", "-c", "dev", "ps", "--format", "{{.ID}}"])
            .env("CONTAINERS_CONF", common::podman_conf(&xdg))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let o = podman()
        .args([
            "--url",
            &format!("unix://{sock}"),
            "info",
            "--format",
            "{{.Host.Kernel}}",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        img["kernel_version"].as_str().unwrap()
    );

    // The image's kernel; the machine's own hostname (its credential, not the image builder's);
    // the network as gvproxy serves it: the guest's fixed address and names from its DNS.
    let o = cv()
        .args([
            "ssh",
            "dev",
            "--",
            "uname -r; hostname; ip -4 -o addr show scope global | awk '{print $4}'; \
             getent hosts host.containers.internal",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(lines[0], img["kernel_version"].as_str().unwrap(), "{out}");
    assert_eq!(lines[1], "dev", "{out}");
    assert!(lines.contains(&"192.168.127.2/24"), "{out}");
    assert!(
        lines.last().unwrap().starts_with("192.168.127.254 "),
        "{out}"
    );
    // The guest's units form no ordering cycle: systemd breaks one by dropping a start job (once
    // podman.socket's), which whichever job it picks makes a flaky machine. journald starts after
    // Ready: the start waits for it, and --sync for what was logged before it ran (systemd's own
    // lines from the start of the boot, which must be there).
    let o = cv()
        .args([
            "ssh",
            "dev",
            "--",
            "systemctl start systemd-journald.service && journalctl --sync && journalctl -b -o cat",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let journal = String::from_utf8_lossy(&o.stdout);
    assert!(
        journal.contains("Starting carbon-walls.service"),
        "the journal lacks the boot's first units:\n{journal}"
    );
    let cycles: Vec<_> = journal
        .lines()
        .filter(|l| l.contains("ordering cycle"))
        .collect();
    assert!(cycles.is_empty(), "{cycles:#?}");

    let o = cv()
        .args(["set", "dev", "--disk-size", "12"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "set needs a stopped machine");
    assert!(String::from_utf8_lossy(&o.stderr).contains("must be stopped"));

    cv().args(["stop", "dev"]).assert().success();
    let o = cv()
        .args(["set", "dev", "--disk-size", "4"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "disks do not shrink");
    assert!(String::from_utf8_lossy(&o.stderr).contains("only grow"));
    cv().args(["set", "dev", "--disk-size", "12", "--cpus", "1"])
        .assert()
        .success();
    assert!(!guest_image::grow::grow_root(&disk, "carbon-root").unwrap());
    let v = env.json(&["inspect", "dev"]);
    assert_eq!(
        (v["disk_gib"].as_u64(), v["cpus"].as_u64()),
        (Some(12), Some(1))
    );
    let console =
        std::fs::read_to_string(env.home.path().join("machines/dev/console.log")).unwrap();
    assert!(
        console.contains("reboot: Power down"),
        "not a graceful power-down"
    );
    assert_eq!(env.json(&["inspect", "dev"])["state"], "stopped");

    // The guest's early key (sent once sshd listens) starts the tunnel before Ready.
    let o = cv()
        .env("CARBON_VM_LOG", "machine=info")
        .args(["start", "dev"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{log}");
    let (early, ready) = (
        log.find("early key: tunnel started"),
        log.find("guest ready"),
    );
    assert!(
        early.is_some() && ready.is_some() && early < ready,
        "the tunnel began before Ready:\n{log}"
    );
    // `set` took effect: the guest grew its root into the larger disk and has one CPU.
    let facts = guest_numbers("df --output=size -B1G / | tail -n 1; nproc");
    assert!(
        facts[0] >= 11,
        "root not grown to the 12 GiB disk: {facts:?}"
    );
    assert_eq!(facts[1], 1, "cpus not changed");
    assert_eq!(
        std::fs::read_to_string(env.home.path().join("machines/dev/root-grown")).unwrap(),
        "12"
    );
    let o = podman().args(["-c", "dev", "ps"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = cv().args(["rm", "dev"]).output().unwrap();
    assert!(!o.status.success(), "rm of a running machine needs --force");
    cv().args(["rm", "--force", "dev"]).assert().success();
    assert!(!env.home.path().join("machines/dev").exists());
    let o = podman()
        .args(["system", "connection", "list"])
        .output()
        .unwrap();
    // A podman that failed lists nothing: only its success makes "no dev" mean removed.
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("dev"),
        "connection removed"
    );
}
