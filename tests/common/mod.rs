//! Shared test fixtures: a private CARBON_VM_HOME, real nginx and docker-registry servers on
//! loopback, and archives crafted byte by byte for the hostile-input cases.
#![allow(dead_code, reason = "each test binary uses a different subset")]

pub mod archive;
pub mod boot;
pub mod gpu;
pub mod net;
pub mod podman_start;
pub mod servers;
pub mod tmpfs;

use assert_cmd::Command;
use std::path::{Path, PathBuf};

/// A carbon-vm invocation with its own state directory.
pub struct Env {
    pub home: tempfile::TempDir,
}

/// A test that fails half-way must not leave its VMs running (they would slow every later test):
/// whatever machines remain are force-removed.
impl Drop for Env {
    fn drop(&mut self) {
        let Ok(dir) = std::fs::read_dir(self.home.path().join("machines")) else {
            return;
        };
        for name in dir.flatten().map(|e| e.file_name()) {
            let _ = self
                .process()
                .arg("rm")
                .arg("--force")
                .arg(&name)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// The executable `bin` of another workspace package (Cargo gives tests only their own
/// package's): built by cargo where this user can run it (a no-op after a workspace build), and
/// named by its JSON messages; otherwise (the ordinary user scripts/test runs the tests as, after
/// its workspace build) the one beside the test's own binary.
pub fn workspace_bin(package: &str, bin: &str) -> PathBuf {
    let cargo = std::process::Command::new(env!("CARGO"))
        .args(["build", "-p", package, "--message-format=json"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output();
    let Ok(out) = cargo else {
        let exe = std::env::current_exe().unwrap();
        let built = exe.parent().and_then(Path::parent).unwrap().join(bin);
        assert!(
            built.is_file(),
            "{} is not built (cargo build --workspace)",
            built.display()
        );
        return built;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["target"]["name"] == bin && v["executable"].is_string())
        .map(|v| PathBuf::from(v["executable"].as_str().unwrap()))
        .unwrap_or_else(|| panic!("cargo names no executable {bin} of {package}"))
}

/// The containers.conf a test's podman clients and carbon-vm share, under the test's own config
/// home: as root, podman 4 would otherwise use the system's /etc/containers/containers.conf.
/// Created empty when missing: podman refuses to run with a CONTAINERS_CONF that does not exist.
pub fn podman_conf(xdg: &Path) -> PathBuf {
    let conf = xdg.join("containers/containers.conf");
    if !conf.exists() {
        std::fs::create_dir_all(conf.parent().unwrap()).unwrap();
        std::fs::write(&conf, "").unwrap();
    }
    conf
}

impl Env {
    /// A home for a test that runs carbon-vm as the ordinary user its users are; root only where
    /// nextest's wrapper kept it (.config/nextest.toml says which tests, and why).
    pub fn new() -> Env {
        assert!(
            !rustix::process::geteuid().is_root()
                || std::env::var_os("CARBON_VM_TEST_KEEPS_ROOT").is_some(),
            "the tests run machines as an ordinary user (scripts/lib/as-test-user)"
        );
        Env {
            home: tempfile::Builder::new()
                .prefix("cvh")
                .tempdir_in("/tmp")
                .unwrap(),
        }
    }

    pub fn cmd(&self) -> Command {
        Command::from_std(self.process())
    }

    /// A plain (not assert_cmd) carbon-vm command, for processes run concurrently or killed.
    pub fn process(&self) -> std::process::Command {
        let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin("carbon-vm"));
        self.configure(&mut c);
        c
    }

    /// Points `c` at this test's state: carbon-vm's home, docker's configuration and Podman's
    /// containers.conf, with none of the developer's own carbon-vm settings. Every test command
    /// that runs carbon-vm (here, inside the GPU root, or as krunkit's rehearsal runs it) starts
    /// from this; a test adds only what is its own.
    pub fn configure(&self, c: &mut std::process::Command) {
        c.env("CARBON_VM_HOME", self.home.path())
            .env("DOCKER_CONFIG", self.docker_config())
            .env(
                "CONTAINERS_CONF",
                podman_conf(&self.home.path().join("xdg")),
            )
            .env_remove("CARBON_VM_LOG")
            .env_remove("CARBON_VM_KRUNKIT")
            .env_remove("CARBON_VM_GVPROXY")
            .env_remove("CARBON_VM_CATALOG");
    }

    /// The docker CLI's configuration (its contexts) for this test: carbon-vm registers each
    /// started machine there, and the test's docker clients read it.
    pub fn docker_config(&self) -> PathBuf {
        self.home.path().join("docker")
    }

    /// Runs a verb with `--json`, expects success, returns its record.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self
            .cmd()
            .arg("--json")
            .args(args)
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        serde_json::from_slice(&out).unwrap()
    }

    /// `image pull SOURCE [--sha256 PIN]`, expecting success.
    pub fn pull(&self, source: &str, pin: Option<&str>) -> serde_json::Value {
        match pin {
            Some(p) => self.json(&["image", "pull", source, "--sha256", p]),
            None => self.json(&["image", "pull", source]),
        }
    }

    /// `image push FILE DEST`, expecting success; checks the pushed digest is `sha`.
    pub fn push(&self, file: &Path, dest: &str, sha: &str) -> serde_json::Value {
        let v = self.json(&["image", "push", file.to_str().unwrap(), dest]);
        assert_eq!(v["sha256"], sha);
        v
    }

    pub fn images_dir(&self) -> PathBuf {
        self.home.path().join("cache/images")
    }

    /// Everything in the image cache except lock files: what a failed pull must leave unchanged.
    pub fn cache_listing(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(self.images_dir())
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.ends_with(".lock"))
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }
}

/// A `podman build` context for an image with a shell's tools and no registry: the guest's
/// bundled image plus the host's static busybox (scripts/install-deps), and `more` (Containerfile
/// lines) on top.
pub fn busybox_image_context(more: &str) -> tempfile::TempDir {
    let ctx = tempfile::tempdir().unwrap();
    std::fs::copy("/bin/busybox", ctx.path().join("busybox")).expect("busybox-static");
    std::fs::write(
        ctx.path().join("Containerfile"),
        format!("FROM localhost/carbon-venus:latest\nCOPY busybox /bin/busybox\n{more}"),
    )
    .unwrap();
    ctx
}

pub fn sha256_file(p: &Path) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut std::fs::File::open(p).unwrap(), &mut h).unwrap();
    hex::encode(h.finalize())
}

/// The opt-in to skips: `CARBON_VM_ALLOW_SKIP=1`.
const ALLOW_SKIP: &str = "CARBON_VM_ALLOW_SKIP";

/// The one rule for a test that cannot run its subject (an input is missing, the host cannot do
/// what it needs), for `reason`: it fails, naming it. A skip passes, and nextest shows a skipped
/// test as green as a run one, so the developer must ask for skips (`CARBON_VM_ALLOW_SKIP=1`);
/// then this prints `SKIP: reason` and returns, and the caller returns. Under CI (`CI` set)
/// nothing is skipped, whatever the opt-in says.
pub fn skip(reason: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{reason} (under CI nothing is skipped, whatever {ALLOW_SKIP} says)");
    }
    if std::env::var_os(ALLOW_SKIP).is_none_or(|v| v != "1") {
        panic!("{reason}; set {ALLOW_SKIP}=1 to skip instead");
    }
    eprintln!("SKIP: {reason}");
}

/// What scripts/test provides in `var` (a built image or root); `build` says what builds it. Its
/// absence goes through [`skip`]: None only where skips were asked for.
fn provided(var: &str, build: &str) -> Option<PathBuf> {
    let path = std::env::var_os(var).map(PathBuf::from);
    if path.is_none() {
        skip(&format!(
            "{var} is not set: {build} (export its path), or run scripts/test"
        ));
    }
    path
}

/// The default guest image built by the recipe (scripts/guest-image).
pub fn default_image() -> Option<PathBuf> {
    provided(
        "CARBON_VM_TEST_IMAGE",
        "scripts/guest-image builds the default image",
    )
}

/// The aarch64 (Apple Silicon) default image (`scripts/guest-image aarch64`).
pub fn aarch64_image() -> Option<PathBuf> {
    provided(
        "CARBON_VM_TEST_IMAGE_AARCH64",
        "`scripts/guest-image aarch64` builds the aarch64 default image",
    )
}

/// `scripts/gpu-root`, to run commands in the Debian trixie root with the Venus host stack (QEMU
/// 10, virglrenderer 1.1, Mesa), once the test run built it (CARBON_VM_TEST_GPU_ROOT).
pub fn gpu_root() -> Option<PathBuf> {
    provided(
        "CARBON_VM_TEST_GPU_ROOT",
        "`scripts/gpu-root path` builds the GPU host root",
    )
    .map(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/gpu-root"))
}

/// The Debian sid root with llama.cpp and ggml's Vulkan backend (scripts/llama-root).
pub fn llama_root() -> Option<PathBuf> {
    provided(
        "CARBON_VM_TEST_LLAMA_ROOT",
        "`scripts/llama-root path` builds the llama.cpp root",
    )
}

/// The same root for aarch64 guests (`scripts/llama-root --arch aarch64`): Debian sid's stock
/// Mesa, not the image's.
pub fn aarch64_llama_root() -> Option<PathBuf> {
    provided(
        "CARBON_VM_TEST_LLAMA_ROOT_AARCH64",
        "`scripts/llama-root --arch aarch64 path` builds the aarch64 llama.cpp root",
    )
}

/// Container images without a Venus driver of their own (scripts/vk-images): a directory of
/// rootfs tarballs for `podman import`.
pub fn vk_images() -> Option<PathBuf> {
    provided(
        "CARBON_VM_TEST_VK_IMAGES",
        "`scripts/vk-images path` builds the container images without Venus",
    )
}

/// [`vk_images`] for aarch64 (`scripts/vk-images path arm64`).
pub fn vk_images_aarch64() -> Option<PathBuf> {
    provided(
        "CARBON_VM_TEST_VK_IMAGES_AARCH64",
        "`scripts/vk-images path arm64` builds the aarch64 container images without Venus",
    )
}

/// Writes an image catalog whose one (default) image is `name` from `source`, pinned by `sha256`
/// when given; returns its path, for CARBON_VM_CATALOG.
pub fn write_catalog(dir: &Path, name: &str, source: &str, sha256: Option<&str>) -> PathBuf {
    write_catalog_for(dir, name, std::env::consts::ARCH, source, sha256)
}

/// [`write_catalog`] with an entry for `arch`.
pub fn write_catalog_for(
    dir: &Path,
    name: &str,
    arch: &str,
    source: &str,
    sha256: Option<&str>,
) -> PathBuf {
    let mut entry = serde_json::json!({
        "name": name,
        "arch": arch,
        "source": source,
    });
    if let Some(sha) = sha256 {
        entry["sha256"] = sha.into();
    }
    let path = dir.join(format!("catalog-{name}.json"));
    let catalog = serde_json::json!({"default": name, "images": [entry]});
    std::fs::write(&path, catalog.to_string()).unwrap();
    path
}

/// Packs a small but real image from a synthetic root (see archive::synthetic_rootfs).
pub fn pack_mini(dir: &Path) -> (PathBuf, String) {
    pack_mini_for(dir, std::env::consts::ARCH)
}

/// [`pack_mini`] for `arch` (krunkit runs aarch64 images only).
pub fn pack_mini_for(dir: &Path, arch: &str) -> (PathBuf, String) {
    let root = dir.join("rootfs");
    archive::synthetic_rootfs(&root, true);
    let out = dir.join("mini.tar.zst");
    let env = Env::new();
    let o = env
        .cmd()
        .args(["--json", "image", "pack"])
        .arg(&root)
        .arg("-o")
        .arg(&out)
        .args(["--name", "mini", "--arch", arch])
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&o).unwrap();
    let sha = v["sha256"].as_str().unwrap().to_owned();
    assert_eq!(sha, sha256_file(&out), "pack prints the artifact's digest");
    (out, sha)
}

/// The last `bytes` of `text` or fewer, cut at a character boundary.
pub fn tail(text: &str, bytes: usize) -> &str {
    let mut from = text.len().saturating_sub(bytes);
    while !text.is_char_boundary(from) {
        from += 1;
    }
    &text[from..]
}

/// The names in `dir`, sorted (none when it does not exist).
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Whether the guest of machine `name` grew its root filesystem at this boot (systemd's
/// condition result for systemd-growfs-root: met only when `start` passed the carbon.grow-root
/// credential). `cv` is a carbon-vm command set up for the test's home.
pub fn root_growth_checked(mut cv: Command, name: &str) -> bool {
    let o = cv
        .args([
            "ssh",
            name,
            "--",
            "systemctl show -P ConditionResult systemd-growfs-root.service",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    match String::from_utf8_lossy(&o.stdout).trim() {
        "yes" => true,
        "no" => false,
        other => panic!("systemd-growfs-root's condition: {other:?}"),
    }
}

/// Waits (bounded) until `pidfile` names a live process.
pub fn wait_for_pid(pidfile: &Path) -> i32 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        if let Some(pid) = std::fs::read_to_string(pidfile)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            && Path::new(&format!("/proc/{pid}")).exists()
        {
            return pid;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} never appeared",
            pidfile.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Waits (at most 2 minutes) until `file` contains `text`: e.g. the guest kernel's first console
/// line, which shows that the VMM finished starting and runs the guest.
pub fn wait_for_text(file: &Path, text: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !std::fs::read_to_string(file).is_ok_and(|s| s.contains(text)) {
        assert!(
            std::time::Instant::now() < deadline,
            "{text:?} never appeared in {}",
            file.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
