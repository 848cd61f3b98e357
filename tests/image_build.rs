//! `image build` stopped by a signal. The recipe's real mmdebstrap runs (packages from the Debian
//! mirror, CARBON_VM_DEBIAN_MIRROR or deb.debian.org) until it has mounted /proc and /sys in a root
//! it builds; then carbon-vm alone gets SIGTERM, as from `kill` or a service manager stopping it.
//! Nothing of the build may outlive carbon-vm: no process (and so no mount namespace of its
//! tools'), no mount on the host, no scratch, no artifact.
//! Runs as root (mmdebstrap needs it: .config/nextest.toml keeps root for this test).

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Mount points at or under `dir`, from this process's view.
fn mounts_under(dir: &Path) -> Vec<String> {
    mounts_seen_by("self", dir)
}

/// Mount points at or under `dir`, as process `pid` sees them (nothing once it is gone).
fn mounts_seen_by(pid: &str, dir: &Path) -> Vec<String> {
    let prefix = dir.to_str().unwrap();
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

/// Processes whose command line names `dir` or whose working directory is in it.
fn processes_in(dir: &Path) -> Vec<String> {
    let needle = dir.to_str().unwrap();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let p = e.path();
        if !e
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        let cmdline = std::fs::read(p.join("cmdline"))
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .unwrap_or_default();
        let cwd = std::fs::read_link(p.join("cwd")).unwrap_or_default();
        if cmdline.contains(needle) || cwd.starts_with(dir) {
            found.push(format!("{}: {cmdline}", e.file_name().to_string_lossy()));
        }
    }
    found
}

/// What a failed run leaves is undone before the directory is removed: its processes killed and
/// its mounts detached (a removal must not walk into a mounted /proc, /sys or /dev).
struct Workdir(tempfile::TempDir);

impl Drop for Workdir {
    fn drop(&mut self) {
        let dir = self.0.path();
        for p in processes_in(dir) {
            let pid = p.split(':').next().unwrap();
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
        for m in mounts_under(dir).iter().rev() {
            let _ = Command::new("umount").args(["--lazy", m]).status();
        }
    }
}

#[test]
fn a_build_stopped_by_sigterm_leaves_nothing_behind() {
    assert!(
        rustix::process::geteuid().is_root()
            && std::env::var_os("CARBON_VM_TEST_KEEPS_ROOT").is_some(),
        "image build runs mmdebstrap, which needs root: run through scripts/test"
    );
    // Not /tmp: the build's scratch is large; mmdebstrap's own temporary files go in it too.
    let work = Workdir(
        tempfile::Builder::new()
            .prefix("carbon-build")
            .tempdir_in("/var/tmp")
            .unwrap(),
    );
    let dir = work.0.path();
    let tmp = dir.join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let env = common::Env::new();
    let mut build = env
        .process()
        .args(["image", "build", "--output"])
        .arg(dir.join("out.tar.zst"))
        .env("TMPDIR", &tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(env.home.path().join("build.err")).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(env.home.path().join("build.err")).unwrap_or_default();

    // mmdebstrap at its worst moment: a root's API filesystems mounted (where its processes see
    // them: carbon-vm gives them a mount namespace of their own), its workers running.
    let mounting = || {
        processes_in(dir)
            .iter()
            .any(|p| !mounts_seen_by(p.split(':').next().unwrap(), dir).is_empty())
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    while !mounting() {
        if let Some(st) = build.try_wait().unwrap() {
            panic!(
                "image build ended ({st}) before mmdebstrap mounted anything:\n{}",
                log()
            );
        }
        assert!(
            Instant::now() < deadline,
            "no mount after 10 minutes:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = processes_in(dir);
    assert!(
        before.iter().any(|p| p.contains("mmdebstrap")),
        "no mmdebstrap running: {before:?}"
    );

    rustix::process::kill_process(
        rustix::process::Pid::from_child(&build),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(st) = build.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "image build still running 5 minutes after SIGTERM:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };

    // It ends as SIGTERM ends a process, once it has said why.
    assert_eq!(status.signal(), Some(15), "{status}:\n{}", log());
    assert!(log().contains("interrupted by SIGTERM"), "{}", log());
    assert_eq!(mounts_under(dir), Vec::<String>::new(), "{}", log());
    assert_eq!(processes_in(dir), Vec::<String>::new(), "{}", log());
    let mut left: Vec<_> = walk(dir);
    left.sort();
    assert_eq!(left, ["tmp"], "the build left files behind:\n{}", log());
}

/// Every path under `dir`, relative to it.
fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out
}
