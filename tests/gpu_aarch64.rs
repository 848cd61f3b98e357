//! The Apple Silicon guest, proven on this host: the aarch64 default image as a `--gpu` machine
//! under qemu-system-aarch64 (TCG, `-machine virt -cpu max`, QEMU 10 + virglrenderer in
//! scripts/gpu-root). Venus works in the VM, in the bundled container (the image's Mesa) and in a
//! container with Debian sid's stock Mesa running llama.cpp's Vulkan backend (scripts/llama-root
//! --arch aarch64, from a shared folder), and every GPU blob the guest created meanwhile is a
//! multiple of 16 KiB, as a Mac host's Hypervisor.framework needs (QEMU's blob trace read by
//! `gpu check --mac-pages`). tests/gpu_venus.rs runs the same audit on the 4 KiB-page x86_64
//! guest and sees it fail: the check bites.

mod common;

use common::gpu::{GpuEnv, ok, passed_on_venus, with_stall_retry};
use serde_json::Value;

#[test]
fn aarch64_gpu_machine_runs_venus_with_every_blob_a_16k_multiple() {
    with_stall_retry(aarch64_gpu_machine);
}

fn aarch64_gpu_machine() {
    let (Some(image), Some(root), Some(llama)) = (
        common::aarch64_image(),
        common::gpu_root(),
        common::aarch64_llama_root(),
    ) else {
        return;
    };
    let g = GpuEnv::new(root);
    let id = &g.pull_aarch64(&image);
    let shared = format!("{}:/opt/carbon-llama-root", llama.display());
    let o = g.carbon_vm(&[
        "--json",
        "create",
        "--gpu",
        "--image",
        id,
        "--memory",
        "2048",
        "--disk-size",
        "8",
        "--volume",
        &shared,
        "arm",
    ]);
    ok(&o, "create --gpu (aarch64 image)");
    let o = g.carbon_vm(&["start", "arm"]);
    ok(&o, "start");
    let inspect: Value =
        serde_json::from_str(&ok(&g.carbon_vm(&["--json", "inspect", "arm"]), "inspect")).unwrap();
    assert_eq!(inspect["arch"], "aarch64", "{inspect:#}");
    let uname = ok(
        &g.carbon_vm(&["ssh", "arm", "--", "uname -m; getconf PAGESIZE"]),
        "ssh uname",
    );
    assert_eq!(
        uname.split_whitespace().collect::<Vec<_>>(),
        ["aarch64", "16384"]
    );

    // Venus in the VM and the bundled container, then llama.cpp on Venus in the stock-Mesa
    // container; the audit is read after all of them.
    let o = g.carbon_vm(&[
        "--json",
        "gpu",
        "check",
        "arm",
        "--mac-pages",
        "--workload",
        "llama",
        "--workload-image",
        "/opt/carbon-llama-root",
    ]);
    let r = passed_on_venus(&o, "gpu check --mac-pages --workload llama");
    let w = &r["workload"];
    assert_eq!(w["vulkan_text"], w["cpu_text"], "{w:#}");
    let b = &r["blobs"];
    assert_eq!(b["mac_ok"], true, "{b:#}");
    assert_eq!(b["unaligned"], 0, "{b:#}");
    // The Venus rings and the workload's buffers: more than a handful, the largest above the ring.
    assert!(b["blobs"].as_u64().unwrap() >= 4, "{b:#}");
    assert!(b["max_size"].as_u64().unwrap() >= 131072, "{b:#}");
    eprintln!("aarch64 guest blobs: {b}");
    let human = ok(
        &g.carbon_vm(&["gpu", "check", "arm", "--mac-pages"]),
        "gpu check",
    );
    assert!(human.contains("GPU blobs are 16 KiB multiples"), "{human}");

    ok(&g.carbon_vm(&["stop", "arm"]), "stop");
    ok(&g.carbon_vm(&["rm", "arm"]), "rm");
}
