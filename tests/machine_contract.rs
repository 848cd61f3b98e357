//! The driver contract's fault cases through the real binary, QEMU and gvproxy: another user's
//! runtime directory, specs out of bounds, an image in use, a create onto a nearly full
//! filesystem, QEMU failing to spawn or to start, concurrent verbs on one machine, a guest that
//! never signals Ready. After each: a clear error, the exit code docs/cli.md gives, nothing left
//! running, nothing half-written.

mod common;

use common::Env;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Output, Stdio};

/// PIDs of processes whose command line contains `needle` (e.g. a machine's disk path).
fn pids_with(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline)
            .replace('\0', " ")
            .contains(needle)
            && pid != std::process::id() as i32
        {
            out.push(pid);
        }
    }
    out
}

/// Nothing of machine `name` runs: no VMM on its disk, no gvproxy or tunnel on its sockets.
fn assert_nothing_runs(env: &Env, name: &str) {
    let disk = env.home.path().join("machines").join(name).join("disk.raw");
    let run = env.home.path().join("run").join(name);
    for needle in [disk, run] {
        let left = pids_with(&needle.display().to_string());
        assert!(
            left.is_empty(),
            "still running for {}: {left:?}",
            needle.display()
        );
    }
}

fn code(o: &Output) -> Option<i32> {
    o.status.code()
}

/// `o` failed with exit `want` and its stderr says `says`.
fn fails(o: &Output, want: i32, says: &str) {
    let err = stderr(o);
    assert_eq!(code(o), Some(want), "{err}");
    assert!(err.contains(says), "wanted {says:?} in: {err}");
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn run(env: &Env, args: &[&str]) -> Output {
    env.process()
        .env("XDG_CONFIG_HOME", env.home.path().join("xdg"))
        .args(args)
        .output()
        .unwrap()
}

fn machine_entries(env: &Env) -> Vec<String> {
    common::listing(&env.home.path().join("machines"))
}

/// Another user's runtime directory, open to all: refused before anything is written there.
/// Keeps root (.config/nextest.toml): only root can make a directory another user owns.
#[test]
fn another_users_runtime_directory_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (art, sha) = common::pack_mini(dir.path());
    let env = Env::new();
    env.pull(art.to_str().unwrap(), Some(&sha));
    let o = run(
        &env,
        &[
            "create",
            "dev",
            "--image",
            &sha,
            "--disk-size",
            "1",
            "--no-volumes",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let runtime = env.home.path().join("run");
    std::fs::create_dir(&runtime).unwrap();
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o777)).unwrap();
    rustix::fs::chown(
        &runtime,
        Some(rustix::fs::Uid::from_raw(65534)),
        Some(rustix::fs::Gid::from_raw(65534)),
    )
    .expect("the test keeps root to make another user's directory");
    let o = run(&env, &["start", "dev"]);
    assert_eq!(code(&o), Some(6), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("is not private to this user (owned by uid 65534"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read_dir(&runtime).unwrap().count(), 0);
    assert!(!env.home.path().join("machines/dev/gvproxy.pid").exists());
    assert_nothing_runs(&env, "dev");
}

#[test]
fn bad_specs_images_in_use_and_qemu_failures_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let (art, sha) = common::pack_mini(dir.path());
    let env = Env::new();
    env.pull(art.to_str().unwrap(), Some(&sha));

    // Specs out of bounds: usage errors (2) naming the bounds, nothing created.
    for (args, want) in [
        (&["--cpus", "0"][..], "--cpus must be between 1 and"),
        (&["--memory", "10"], "--memory must be between 1024 and"),
        (
            &["--memory", "10", "--gpu"],
            "--memory must be between 1024 and",
        ),
        (&["--disk-size", "0"], "--disk-size must be between 1 and"),
    ] {
        let mut a = vec!["create", "bad", "--image", &sha];
        a.extend_from_slice(args);
        let o = run(&env, &a);
        assert_eq!(code(&o), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
        assert!(
            machine_entries(&env).is_empty(),
            "{:?}",
            machine_entries(&env)
        );
    }
    let o = run(&env, &["create", "Bad", "--image", &sha]);
    assert_eq!(code(&o), Some(2), "{}", stderr(&o));

    let o = run(
        &env,
        &["create", "dev", "--image", &sha, "--disk-size", "1"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // `set` checks as create does and changes nothing it refuses; a grown disk stays sparse.
    let disk = env.home.path().join("machines/dev/disk.raw");
    let spec = || std::fs::read(env.home.path().join("machines/dev/machine.json")).unwrap();
    let before = spec();
    fails(
        &run(&env, &["set", "dev", "--cpus", "0"]),
        2,
        "--cpus must be between 1 and",
    );
    fails(
        &run(&env, &["set", "dev", "--disk-size", "99999"]),
        2,
        "--disk-size must be between",
    );
    fails(&run(&env, &["set", "nope", "--cpus", "1"]), 3, "nope");
    assert_eq!(spec(), before, "a refused set left machine.json alone");
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 1 << 30);
    let o = run(&env, &["--json", "set", "dev", "--disk-size", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["disk_gib"], 3);
    let meta = std::fs::metadata(&disk).unwrap();
    assert_eq!(meta.len(), 3 << 30);
    assert!(
        std::os::unix::fs::MetadataExt::blocks(&meta) * 512 < 1 << 30,
        "the grown disk is sparse"
    );
    // The disk's partition table is the guest's to write: one the host cannot read (here its
    // primary header's signature gone) fails the growth with a clear error, the disk unchanged.
    let before = (spec(), std::fs::read(&disk).unwrap()[..1 << 20].to_vec());
    std::os::unix::fs::FileExt::write_all_at(
        &std::fs::File::options().write(true).open(&disk).unwrap(),
        b"NOT PART",
        512,
    )
    .unwrap();
    let table = std::fs::read(&disk).unwrap()[..1 << 20].to_vec();
    fails(
        &run(&env, &["set", "dev", "--disk-size", "4"]),
        1,
        "cannot grow the root partition of",
    );
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 3 << 30);
    assert_eq!(std::fs::read(&disk).unwrap()[..1 << 20], table[..]);
    assert_eq!(spec(), before.0, "a failed set left machine.json alone");
    std::os::unix::fs::FileExt::write_all_at(
        &std::fs::File::options().write(true).open(&disk).unwrap(),
        &before.1,
        0,
    )
    .unwrap();

    // QEMU missing from PATH: gvproxy started first is stopped again.
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    for tool in ["gvproxy", "ssh", "ssh-keygen"] {
        let path = which(tool);
        std::os::unix::fs::symlink(&path, bin.join(tool)).unwrap();
    }
    let o = env
        .process()
        .env("PATH", &bin)
        .env("CARBON_VM_ACCEL", "tcg")
        .args(["start", "dev"])
        .output()
        .unwrap();
    fails(&o, 6, "cannot run qemu-system-");
    assert_nothing_runs(&env, "dev");
    assert_eq!(env.json(&["list"])[0]["state"], "stopped");

    // The ggml device without a server to run: refused before anything starts.
    let o = run(
        &env,
        &[
            "create",
            "gg",
            "--image",
            &sha,
            "--ggml",
            "--disk-size",
            "1",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = env
        .process()
        .env(
            "CARBON_VM_GGML_SERVER",
            "/nonexistent/ggml-rpc-server -d Vulkan0",
        )
        .args(["start", "gg"])
        .output()
        .unwrap();
    fails(&o, 6, "/nonexistent/ggml-rpc-server is not an executable");
    assert_nothing_runs(&env, "gg");
    let o = env
        .process()
        .env("CARBON_VM_GGML_SERVER", "ggml-rpc-server 'unbalanced")
        .args(["start", "gg"])
        .output()
        .unwrap();
    fails(&o, 2, "CARBON_VM_GGML_SERVER is not a command line");
    assert_nothing_runs(&env, "gg");
    assert!(run(&env, &["rm", "gg"]).status.success());

    // The image is in use: `image rm` refuses, naming the machine; --force removes it anyway.
    let o = run(&env, &["image", "rm", &sha]);
    fails(&o, 1, "in use by machine(s) dev");
    assert_eq!(env.json(&["image", "ls"]).as_array().unwrap().len(), 1);
    let o = run(&env, &["image", "rm", "--force", &sha]);
    assert!(o.status.success(), "{}", stderr(&o));

    // QEMU starts but fails (the kernel went with the image): its message, nothing left running.
    let o = run(&env, &["start", "dev"]);
    fails(&o, 1, "qemu exited during start-up");
    assert_nothing_runs(&env, "dev");
    assert_eq!(env.json(&["list"])[0]["state"], "stopped");
    assert!(!env.home.path().join("run/dev").exists());
    let o = run(&env, &["rm", "dev"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(machine_entries(&env).is_empty());
}

fn which(tool: &str) -> PathBuf {
    which::which(tool).unwrap_or_else(|_| panic!("{tool} is installed (scripts/install-deps)"))
}

#[test]
fn a_create_onto_a_nearly_full_filesystem_is_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (art, sha) = common::pack_mini(dir.path());
    let Some(fs) = common::tmpfs::Tmpfs::mount("192m") else {
        return;
    };
    let home = fs.path();
    let cv = || {
        let mut c = assert_cmd::Command::cargo_bin("carbon-vm").unwrap();
        c.env("CARBON_VM_HOME", home);
        c
    };
    cv().args(["image", "pull", art.to_str().unwrap(), "--sha256", &sha])
        .assert()
        .success();
    let cache_before = common::listing(&home.join("cache/images"));
    // Fill the filesystem until less than the image's disk is free.
    let filler = home.join("filler");
    let st = rustix::fs::statvfs(home).unwrap();
    let free = st.f_bavail * st.f_frsize;
    let mut f = std::fs::File::create(&filler).unwrap();
    let block = vec![1u8; 64 << 10];
    for _ in 0..(free - (256 << 10)) / block.len() as u64 {
        std::io::Write::write_all(&mut f, &block).unwrap();
    }
    let o = cv()
        .args(["create", "dev", "--image", &sha, "--disk-size", "1"])
        .output()
        .unwrap();
    fails(&o, 1, "not enough space for the machine's disk");
    assert!(
        common::listing(&home.join("machines")).is_empty(),
        "nothing partial"
    );
    assert_eq!(common::listing(&home.join("cache/images")), cache_before);
}

#[test]
fn one_verb_at_a_time_stop_force_interrupts_a_start_and_a_silent_guest_times_out() {
    let Some(image) = common::default_image() else {
        return;
    };
    let env = Env::new();
    env.pull(image.to_str().unwrap(), Some(&common::sha256_file(&image)));
    let o = run(
        &env,
        &["create", "dev", "--memory", "2048", "--disk-size", "8"],
    );
    assert!(o.status.success(), "{}", stderr(&o));

    // While a start holds the machine, every other verb that changes it is refused (exit 9),
    // naming the holder; `stop --force` interrupts it, and nothing is left running.
    let start = env
        .process()
        .env("XDG_CONFIG_HOME", env.home.path().join("xdg"))
        .args(["start", "dev"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    common::wait_for_pid(&env.home.path().join("machines/dev/vmm.pid"));
    for verb in [&["start", "dev"][..], &["stop", "dev"], &["rm", "dev"]] {
        let o = run(&env, verb);
        assert_eq!(code(&o), Some(9), "{verb:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("is busy: `carbon-vm start` (pid"),
            "{verb:?}: {}",
            stderr(&o)
        );
    }
    let o = run(&env, &["stop", "--force", "dev"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = start.wait_with_output().unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("interrupted by `carbon-vm stop --force`"),
        "{}",
        stderr(&o)
    );
    assert_nothing_runs(&env, "dev");
    assert_eq!(env.json(&["list"])[0]["state"], "stopped");

    // A guest that never signals Ready: start gives up at its timeout with the console's tail
    // and stops everything it began.
    let spec_path = env.home.path().join("machines/dev/machine.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&spec_path).unwrap()).unwrap();
    let cmdline = spec["cmdline"].as_str().unwrap().to_owned();
    spec["cmdline"] = format!("{cmdline} systemd.mask=carbon-ready.service").into();
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let o = env
        .process()
        .env("XDG_CONFIG_HOME", env.home.path().join("xdg"))
        .env("CARBON_VM_START_TIMEOUT", "40")
        .args(["start", "dev"])
        .output()
        .unwrap();
    fails(
        &o,
        1,
        "the guest did not signal Ready within 40s; console log tail:",
    );
    assert!(
        stderr(&o).contains("hint: the machine's console.log"),
        "{}",
        stderr(&o)
    );
    assert!(
        !stderr(&o).contains('\x1b'),
        "console colour codes are escaped"
    );
    assert_nothing_runs(&env, "dev");
    assert_eq!(env.json(&["list"])[0]["state"], "stopped");
    let o = run(&env, &["rm", "dev"]);
    assert!(o.status.success(), "{}", stderr(&o));
}
