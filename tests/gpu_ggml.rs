//! The ggml device (`create --ggml`, docs/gpu.md): ggml's RPC server (Debian's ggml-rpc-server,
//! from scripts/llama-root, on this host's CPU backend) runs on the host for a GPU machine;
//! llama.cpp in a container that asks for carbon-vm.dev/ggml=all offloads every layer to it and
//! decodes as the container's CPU and the host's own llama.cpp do; a container that did not ask
//! cannot reach it, nor can anything on the host's network; the server comes back when it dies,
//! a server of another protocol is named as such, and a stopped machine leaves none running.

mod common;

use common::gpu::{GpuEnv, ok, with_stall_retry};
use machine::host::LLAMA_COMPLETION;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Where Debian's llama.cpp-tools-extra keeps the server.
fn debian_server() -> String {
    format!(
        "/usr/libexec/{}-linux-gnu/llama/bin/ggml-rpc-server",
        std::env::consts::ARCH
    )
}

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts")
}

fn inspect(g: &GpuEnv, name: &str) -> Value {
    serde_json::from_str(&ok(&g.carbon_vm(&["--json", "inspect", name]), "inspect")).unwrap()
}

/// The ggml device's status once its server runs and announced its protocol (the server takes
/// a moment after the supervisor is up); fails after `limit`.
fn serving(g: &GpuEnv, name: &str, starts: u64, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let v = inspect(g, name);
        let d = &v["ggml"];
        if d["running"] == true
            && d["server_pid"].is_i64()
            && d["rpc_version"].is_string()
            && d["starts"].as_u64() == Some(starts)
        {
            return d.clone();
        }
        assert!(Instant::now() < deadline, "no server serving: {v:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Whether process `pid` has ended (a zombie has) within `limit`.
fn ends(pid: i64, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
        if matches!(state, None | Some(Some('Z'))) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn kill(pid: i64) {
    let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
}

/// One llama.cpp completion in a container of the machine, with `args` before the image.
fn completion(g: &GpuEnv, name: &str, args: &[&str], rpc: &str) -> std::process::Output {
    let conn = format!("--connection={name}");
    let mut all = vec![conn.as_str(), "run", "--rm"];
    all.extend(args);
    all.extend(["localhost/carbon-llama:latest", "llama-completion"]);
    all.extend(LLAMA_COMPLETION);
    all.extend(["--rpc", rpc, "--device", "RPC0", "-ngl", "999"]);
    g.podman(&all)
}

#[test]
fn llama_cpp_through_the_ggml_device_runs_on_the_hosts_server_and_only_there() {
    with_stall_retry(ggml_device);
}

fn ggml_device() {
    let (Some(image), Some(root), Some(_llama)) = (
        common::default_image(),
        common::gpu_root(),
        common::llama_root(),
    ) else {
        return;
    };
    let server = format!(
        "{} run {}",
        scripts().join("llama-root").display(),
        debian_server()
    );
    let g = GpuEnv::new(root).with_var("CARBON_VM_GGML_SERVER", &server);
    g.env
        .pull(image.to_str().unwrap(), Some(&common::sha256_file(&image)));
    ok(
        &g.carbon_vm(&[
            "create",
            "gg",
            "--gpu",
            "--ggml",
            "--memory",
            "2048",
            "--disk-size",
            "8",
            "--no-volumes",
        ]),
        "create",
    );
    ok(&g.carbon_vm(&["start", "gg"]), "start");
    let dev = serving(&g, "gg", 1, Duration::from_secs(60));
    let server_pid = dev["server_pid"].as_i64().unwrap();
    let machine_dir = PathBuf::from(inspect(&g, "gg")["dir"].as_str().unwrap());
    let log = std::fs::read_to_string(machine_dir.join("ggml.log")).unwrap();
    assert!(log.contains("Starting RPC server v"), "{log}");

    // The server has a network of its own: nothing on the host's loopback reaches it, and the
    // only way in, the relay's socket, is the user's alone.
    let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    assert_ne!(ns(&server_pid.to_string()), ns("self"));
    let refused = std::net::TcpStream::connect("127.0.0.1:50052").unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    let run_dir = Path::new(inspect(&g, "gg")["podman_socket"].as_str().unwrap())
        .parent()
        .unwrap()
        .to_owned();
    let mode = |p: &Path| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions())
            & 0o777
    };
    assert_eq!(mode(&run_dir.join("ggml.sock")), 0o600);
    assert_eq!(mode(&run_dir), 0o700);

    ok(
        &Command::new(scripts().join("llama-root"))
            .args(["image", "gg"])
            .env("CONTAINERS_CONF", common::podman_conf(&g.xdg))
            .output()
            .unwrap(),
        "scripts/llama-root image gg",
    );

    // The workload: every layer on the RPC device, the same tokens as the container's CPU...
    let args = ["--json", "gpu", "check", "gg", "--workload", "llama-rpc"];
    let r: Value =
        serde_json::from_str(&ok(&g.carbon_vm(&args), "gpu check --workload llama-rpc")).unwrap();
    let w = &r["workload"];
    assert_eq!(w["ok"], true, "{w:#}");
    assert_eq!(w["device"], "RPC0 (127.0.0.1:50052)", "{w:#}");
    let (n, of) = w["layers"].as_str().unwrap().split_once('/').unwrap();
    assert!(n == of && n.parse::<u32>().unwrap() > 0, "{w:#}");
    let text = w["rpc_text"].as_str().unwrap();
    assert_eq!(text, w["cpu_text"].as_str().unwrap(), "{w:#}");
    assert!(
        text.starts_with(" carbon-vm runs llama.cpp") && text.len() > 40,
        "{text:?}"
    );
    // ...and as llama.cpp on the host's own CPU backend, the server's backend here.
    let host = Command::new(scripts().join("llama-root"))
        .args(["run", "llama-completion"])
        .args(LLAMA_COMPLETION)
        .args(["--device", "none", "-ngl", "0"])
        .output()
        .unwrap();
    assert!(
        host.status.success(),
        "{}",
        String::from_utf8_lossy(&host.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&host.stdout), text);
    // The server really served it.
    let log = std::fs::read_to_string(machine_dir.join("ggml.log")).unwrap();
    assert!(log.contains("Accepted client connection"), "{log}");

    // A container that did not ask for the device reaches no server: not at the device's
    // address in its own namespace, not at the host's loopback through the machine's network.
    for rpc in [
        "127.0.0.1:50052",
        "host.containers.internal:50052",
        "192.168.127.254:50052",
    ] {
        let o = completion(&g, "gg", &[], rpc);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{rpc}: {err}");
        assert!(err.contains("Failed to connect"), "{rpc}: {err}");
    }

    // A server that dies is started again, and serves.
    kill(server_pid);
    let dev = serving(&g, "gg", 2, Duration::from_secs(60));
    assert_ne!(dev["server_pid"].as_i64().unwrap(), server_pid);
    let o = completion(
        &g,
        "gg",
        &["--device", "carbon-vm.dev/ggml=all"],
        "127.0.0.1:50052",
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), text);
    assert!(err.contains("offloaded 3/3 layers"), "{err}");

    // The SSH tunnel that serves the device's socket in the guest, killed: the machine is
    // broken, and `start` opens it again (same VM) with the device serving.
    let tunnel: i64 = std::fs::read_to_string(machine_dir.join("tunnel.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let vmm = std::fs::read_to_string(machine_dir.join("vmm.pid")).unwrap();
    kill(tunnel);
    assert!(ends(tunnel, Duration::from_secs(30)));
    let v = inspect(&g, "gg");
    assert_eq!(v["state"], "broken", "{v:#}");
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("SSH tunnel to the guest"),
        "{v:#}"
    );
    ok(
        &g.carbon_vm(&["start", "gg"]),
        "start after the tunnel died",
    );
    assert_eq!(
        std::fs::read_to_string(machine_dir.join("vmm.pid")).unwrap(),
        vmm
    );
    let o = completion(
        &g,
        "gg",
        &["--device", "carbon-vm.dev/ggml=all"],
        "127.0.0.1:50052",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), text);

    // A server of another RPC protocol (a stand-in that answers ggml's HELLO with 99.0.0): the
    // supervisor is ended, `start` repairs the machine with it, and the check names both sides.
    let stub = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ggml-rpc-stub.py");
    let supervisor: i64 = std::fs::read_to_string(machine_dir.join("ggml.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    kill(supervisor);
    assert!(ends(supervisor, Duration::from_secs(30)));
    let v = inspect(&g, "gg");
    assert_eq!(v["state"], "broken", "{v:#}");
    let stubbed = format!(
        "{} run python3 {}",
        scripts().join("llama-root").display(),
        stub.display()
    );
    let g = g.with_var("CARBON_VM_GGML_SERVER", &stubbed);
    ok(
        &g.carbon_vm(&["start", "gg"]),
        "start with the stand-in server",
    );
    let dev = serving(&g, "gg", 1, Duration::from_secs(60));
    assert_eq!(dev["rpc_version"], "99.0.0", "{dev:#}");
    let o = g.carbon_vm(&["gpu", "check", "gg", "--workload", "llama-rpc"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(8), "{err}");
    assert!(
        err.contains("the host's server speaks 99.0.0")
            && err.contains("the image's ggml (")
            && err.contains("CARBON_VM_GGML_SERVER"),
        "{err}"
    );

    // A stopped machine leaves neither supervisor nor server.
    let stub_pid = dev["server_pid"].as_i64().unwrap();
    let supervisor: i64 = std::fs::read_to_string(machine_dir.join("ggml.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    ok(&g.carbon_vm(&["stop", "gg"]), "stop");
    assert!(ends(stub_pid, Duration::from_secs(10)) && ends(supervisor, Duration::from_secs(10)));
    assert!(inspect(&g, "gg")["ggml"]["running"] == false);
    ok(&g.carbon_vm(&["rm", "--force", "gg"]), "rm");
}
