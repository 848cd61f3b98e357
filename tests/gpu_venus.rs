//! Venus end to end, for real: a `--gpu` machine on QEMU 10 + virglrenderer 1.1 (in the trixie
//! host root, see scripts/gpu-root) whose guest and containers see "Virtio-GPU Venus (HOST DEVICE)"
//! and run the project's Vulkan compute workload from a shared host folder (virtio-fs through the
//! root's virtiofsd), checked against the CPU, through
//! `podman -c NAME run --device /dev/dri`. A machine without --gpu fails `gpu check` saying so.

mod common;

use common::gpu::{GpuEnv, ok, passed_on_venus};
use serde_json::Value;
use std::process::Command;

#[test]
fn gpu_machine_runs_vulkan_compute_in_a_container_through_venus() {
    let (Some(image), Some(root)) = (common::default_image(), common::gpu_root()) else {
        return;
    };
    let g = GpuEnv::new(root);
    g.env
        .pull(image.to_str().unwrap(), Some(&common::sha256_file(&image)));
    // doctor asks the root's real QEMU, render server and Vulkan loader: every GPU link is there.
    let doctor: Value = serde_json::from_slice(&g.carbon_vm(&["--json", "doctor"]).stdout).unwrap();
    let gpu_checks: Vec<&Value> = doctor["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["needed_for"] == "--gpu (qemu)")
        .collect();
    assert_eq!(gpu_checks.len(), 4, "{doctor:#}");
    for c in gpu_checks {
        assert_eq!(c["ok"], true, "{c:#}");
    }

    // The project's compute workload sits in a host folder the machine shares (virtio-fs beside
    // Venus, both on the guest's shared memory).
    let work = tempfile::tempdir_in(g.env.home.path()).unwrap();
    std::fs::copy(
        common::workspace_bin("carbon-vk-compute", "carbon-vk-compute"),
        work.path().join("carbon-vk-compute"),
    )
    .unwrap();
    let work_path = work.path().to_str().unwrap();
    ok(
        &g.carbon_vm(&[
            "create",
            "--gpu",
            "gpu",
            "--memory",
            "2048",
            "--disk-size",
            "8",
            "--volume",
            &format!("{work_path}:/work"),
        ]),
        "create --gpu",
    );
    // Outside the root, a host whose own QEMU cannot serve Venus (Debian bookworm's 7.2) is
    // refused before anything starts.
    let host_doctor: Value = serde_json::from_slice(
        &g.env
            .cmd()
            .args(["--json", "doctor"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let host_has_venus = host_doctor["checks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["requirement"] == "qemu venus device" && c["ok"] == true);
    if !host_has_venus {
        let o = g
            .env
            .cmd()
            .env("XDG_CONFIG_HOME", &g.xdg)
            .env("CONTAINERS_CONF", common::podman_conf(&g.xdg))
            .args(["start", "gpu"])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(6), "{o:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("cannot give the machine its Venus GPU"),
            "{err}"
        );
        let list: Value = serde_json::from_slice(
            &g.env
                .cmd()
                .args(["--json", "list"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        assert_eq!(list[0]["state"], "stopped", "nothing was started: {list}");
    }

    let o = g.carbon_vm(&["start", "gpu"]);
    ok(&o, "start");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!stderr.contains("warning"), "start warned: {stderr}");

    // gpu check: Venus in the VM and in the bundled container.
    let check = passed_on_venus(
        &g.carbon_vm(&["--json", "gpu", "check", "gpu"]),
        "gpu check",
    );
    let device = check["device"].as_str().unwrap();
    // Any host Vulkan device will do (lavapipe here, a real GPU elsewhere): Venus names it.
    let inner = device
        .strip_prefix("Virtio-GPU Venus (")
        .and_then(|d| d.strip_suffix(')'))
        .unwrap_or_default();
    assert!(!inner.is_empty(), "{device}");
    assert!(
        !check["host_device"].as_str().unwrap_or_default().is_empty(),
        "{check:#}"
    );
    for side in ["vm_devices", "container_devices"] {
        assert!(
            check[side]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["driver_id"] == "DRIVER_ID_MESA_VENUS"),
            "{side}: {check:#}"
        );
    }

    // Headless: the GPU's DRM nodes are there, no framebuffer console on it (the image turns
    // fbdev emulation off, so console text makes no virtio-gpu traffic beside Venus).
    let nodes = ok(
        &g.carbon_vm(&[
            "ssh",
            "gpu",
            "--",
            "ls /dev/dri; ls /dev | grep -c '^fb' || true",
        ]),
        "ssh ls /dev/dri",
    );
    assert!(nodes.contains("renderD128"), "{nodes}");
    assert_eq!(nodes.lines().last(), Some("0"), "a framebuffer: {nodes}");

    // The compute workload, run from the shared folder with --device /dev/dri on the Venus device,
    // its product checked against the CPU.
    let out = ok(
        &g.podman(&[
            "-c",
            "gpu",
            "run",
            "--rm",
            "--device",
            "/dev/dri",
            "-v",
            "/work:/work:ro",
            "localhost/carbon-venus:latest",
            "/work/carbon-vk-compute",
            "--n",
            "128",
            "--driver",
            "DRIVER_ID_MESA_VENUS",
        ]),
        "compute workload in a container",
    );
    let run: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(run["verified"], true, "{run}");
    assert_eq!(run["driver_id"], "DRIVER_ID_MESA_VENUS");
    assert!(run["gflops"].as_f64().unwrap() > 0.0);

    // The Mac's 16 KiB page check bites on this 4 KiB-page guest (tests/gpu_aarch64.rs passes
    // it): Venus works here, but its ring (131268 bytes, page-rounded to 135168) and small
    // buffers would not map on a Mac host.
    let o = g.carbon_vm(&["--json", "gpu", "check", "gpu", "--mac-pages"]);
    assert_eq!(o.status.code(), Some(8), "{o:?}");
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["ok"], true, "Venus itself works: {r:#}");
    let b = &r["blobs"];
    eprintln!("x86_64 guest blobs: {b}");
    assert_eq!(b["mac_ok"], false, "{b:#}");
    assert!(b["unaligned"].as_u64().unwrap() > 0, "{b:#}");
    assert!(
        b["unaligned_sizes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s.as_u64().unwrap() % 4096 == 0),
        "page-rounded by the 4 KiB guest: {b:#}"
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("would not map on a Mac host"),
        "{o:?}"
    );

    // The connection carbon-vm registered from inside the root (its podman is 5) serves the host's
    // own podman client too (4 on bookworm): both read the containers.conf entry.
    let host_podman = || {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", common::podman_conf(&g.xdg));
        c
    };
    let versions = [
        ok(&g.podman(&["--version"]), "podman --version"),
        ok(
            &host_podman().arg("--version").output().unwrap(),
            "podman --version",
        ),
    ];
    let images = ok(
        &host_podman()
            .args(["-c", "gpu", "images", "--format", "{{.Repository}}"])
            .output()
            .unwrap(),
        "the host's podman over the connection",
    );
    assert!(
        images.lines().any(|l| l == "localhost/carbon-venus"),
        "{versions:?}: {images}"
    );

    // A machine created without --gpu fails the check, saying why.
    ok(&g.carbon_vm(&["create", "plain"]), "create");
    let o = g.carbon_vm(&["--json", "gpu", "check", "plain"]);
    assert_eq!(o.status.code(), Some(8), "the GPU check's exit code");
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["ok"], false);
    assert_eq!(r["missing"]["link"], "no-gpu");
    assert!(String::from_utf8_lossy(&o.stderr).contains("--gpu"));

    ok(&g.carbon_vm(&["stop", "gpu"]), "stop");
    ok(&g.carbon_vm(&["rm", "gpu"]), "rm");
    ok(&g.carbon_vm(&["rm", "plain"]), "rm");
}
