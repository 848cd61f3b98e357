//! GPU machines for the tests: carbon-vm and podman run inside scripts/gpu-root (the Venus host
//! stack), with the test's own state and Podman configuration.

use super::Env;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// The longest a carbon-vm command may take here (a `start` under TCG on a loaded host takes a
/// few minutes; carbon-vm's own limit to Ready is 15).
const CARBON_VM_LIMIT: Duration = Duration::from_secs(20 * 60);
/// The longest a podman command may take: a container's Vulkan run takes seconds to a minute or
/// two under TCG. A guest whose virtio-gpu stopped answering (seen once in CI: QEMU's control
/// queue stalled, the guest's tasks blocked in `virtio_gpu_vram_mmap`) fails here, with the
/// console that shows it, instead of holding the run until CI's own limit.
const PODMAN_LIMIT: Duration = Duration::from_secs(10 * 60);

pub struct GpuEnv {
    pub env: Env,
    /// scripts/gpu-root.
    pub root: PathBuf,
    pub xdg: PathBuf,
    /// More environment for what runs inside.
    vars: Vec<(String, PathBuf)>,
}

impl GpuEnv {
    pub fn new(root: PathBuf) -> GpuEnv {
        let env = Env::new();
        let xdg = env.home.path().join("xdg");
        GpuEnv {
            env,
            root,
            xdg,
            vars: Vec::new(),
        }
    }

    /// Pulls the aarch64 default image (pinned by its digest), checks it is the Apple Silicon
    /// one (16 KiB pages), and returns its short id.
    pub fn pull_aarch64(&self, image: &Path) -> String {
        let v = self
            .env
            .pull(image.to_str().unwrap(), Some(&super::sha256_file(image)));
        assert_eq!(
            (&v["arch"], &v["page_size"]),
            (&"aarch64".into(), &16384.into()),
            "{v}"
        );
        v["short_id"].as_str().unwrap().to_owned()
    }

    /// Sets `var` for every command run inside.
    pub fn with_var(mut self, var: &str, value: impl Into<PathBuf>) -> GpuEnv {
        self.vars.push((var.into(), value.into()));
        self
    }

    /// A command run inside the GPU host root, with the test's own state and Podman config.
    pub fn inside(&self, program: &Path) -> Command {
        let mut c = Command::new(&self.root);
        c.arg("run").arg(program);
        self.env.configure(&mut c);
        c.env("XDG_CONFIG_HOME", &self.xdg)
            .envs(self.vars.iter().map(|(k, v)| (k, v)));
        c
    }

    pub fn carbon_vm(&self, args: &[&str]) -> Output {
        let mut c = self.inside(&assert_cmd::cargo::cargo_bin("carbon-vm"));
        c.args(args);
        self.bounded(c, CARBON_VM_LIMIT)
    }

    pub fn podman(&self, args: &[&str]) -> Output {
        let mut c = self.inside(Path::new("/usr/bin/podman"));
        c.args(args);
        self.bounded(c, PODMAN_LIMIT)
    }

    /// Runs `c` to its end or kills it at `limit`, then panics with the tails of the consoles of
    /// this test's machines (the panic's unwinding removes them).
    fn bounded(&self, c: Command, limit: Duration) -> Output {
        let what = format!("{c:?}");
        let o = assert_cmd::Command::from_std(c)
            .timeout(limit)
            .output()
            .unwrap();
        if o.status.code().is_none() {
            panic!(
                "{what} was killed ({}; limit {} s)\n{}\n{}\n{}",
                o.status,
                limit.as_secs(),
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr),
                self.machine_logs("console.log", 6000)
            );
        }
        o
    }

    /// The tail of file `log` of each of this test's machines, each under its path.
    fn machine_logs(&self, log: &str, bytes: usize) -> String {
        let machines = self.env.home.path().join("machines");
        super::listing(&machines)
            .iter()
            .map(|m| {
                let path = machines.join(m).join(log);
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                format!("--- {}:\n{}", path.display(), super::tail(&text, bytes))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A failed GPU test's machines are removed with its state: their logs go to the test's output
/// first, since what failed in the host's Venus stack (QEMU, virglrenderer) is only in vmm.log.
impl Drop for GpuEnv {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "the machines' logs at the failure:\n{}\n{}",
                self.machine_logs("vmm.log", 8000),
                self.machine_logs("console.log", 6000)
            );
        }
    }
}

/// The report of a `--json gpu check` that passed on Venus (its workload's too, if it ran one).
pub fn passed_on_venus(o: &Output, what: &str) -> serde_json::Value {
    let r: serde_json::Value = serde_json::from_str(&ok(o, what)).unwrap();
    let on_venus = |v: &serde_json::Value| {
        v["ok"] == true
            && v["device"]
                .as_str()
                .is_some_and(|d| d.starts_with("Virtio-GPU Venus ("))
    };
    assert!(on_venus(&r), "{what}: {r:#}");
    let w = &r["workload"];
    assert!(w.is_null() || on_venus(w), "{what}: {r:#}");
    r
}

/// `o`'s stdout, once it succeeded; else a panic naming `what` with both outputs.
pub fn ok(o: &Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what} failed ({}):\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The documented TCG virtio-gpu stall (docs/gpu.md, Known problems: QEMU 10's virtio-gpu stopped
/// serving its control queue under TCG), as the guest's console shows it: a hung-task report
/// whose task is blocked in `virtio_gpu_vram_mmap`.
const STALL_FRAME: &str = "virtio_gpu_vram_mmap";
const HUNG_TASK: &str = "blocked for more than";

/// The GPU check's own name for a Venus that stopped answering (docs/gpu.md, Known problems): one
/// of its `vulkaninfo` runs hit the check's bound.
const CHECK_STALL: &str = "venus-stalled";

/// The lines that show a stall in a failure `message`: the GPU check's `venus-stalled` report,
/// or, for a command [`GpuEnv`] bounded (it kills the command and appends the consoles), the
/// last hung-task report up to its `virtio_gpu_vram_mmap` frame. None for any other failure.
fn stall_in(message: &str) -> Option<String> {
    if let Some(line) = message.lines().find(|l| l.contains(CHECK_STALL)) {
        return Some(line.trim().to_owned());
    }
    if !message.contains(" was killed (") {
        return None;
    }
    let lines: Vec<&str> = message.lines().collect();
    let frame = lines.iter().rposition(|l| l.contains(STALL_FRAME))?;
    let report = lines[..frame].iter().rposition(|l| l.contains(HUNG_TASK))?;
    Some(lines[report..=frame].join("\n"))
}

/// Runs a GPU test's `body`, and once more, on a fresh machine (the body makes its own), only
/// when its first try failed on the documented stall ([`stall_in`]), with a `RETRY:` line and
/// the lines that showed the stall. Any other first-try failure fails the test: a retry for every failure
/// would turn any hang into a pass.
pub fn with_stall_retry(body: impl Fn()) {
    let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(&body)) else {
        return;
    };
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or_default();
    let Some(excerpt) = stall_in(message) else {
        std::panic::resume_unwind(panic);
    };
    eprintln!(
        "RETRY: the machine's GPU stalled under TCG (docs/gpu.md, Known problems); the test \
         runs once more on a fresh machine. What showed it:\n{excerpt}"
    );
    body();
}
