//! A real GPU workload through Venus on two `--gpu` machines running at once (QEMU has no
//! one-GPU-machine limit; krunkit has, docs/gpu.md): llama.cpp (Debian's, ggml's Vulkan backend,
//! scripts/llama-root) decodes a fixed prompt greedily in a container on each machine's Venus
//! device, every layer offloaded, with the same tokens as llama.cpp's CPU backend in that
//! container and as llama.cpp on the host's own Vulkan device. One machine gets the image the
//! documented way (`scripts/llama-root image NAME`), the other runs the root from a shared folder.

mod common;

use common::gpu::{GpuEnv, ok, passed_on_venus, with_stall_retry};
use machine::host::LLAMA_COMPLETION;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};

#[test]
fn two_gpu_machines_decode_with_llama_cpp_on_venus_as_the_cpu_and_the_host_do() {
    with_stall_retry(llama_cpp_on_two_gpu_machines);
}

fn llama_cpp_on_two_gpu_machines() {
    let (Some(image), Some(root), Some(llama)) = (
        common::default_image(),
        common::gpu_root(),
        common::llama_root(),
    ) else {
        return;
    };
    let g = GpuEnv::new(root);
    g.env
        .pull(image.to_str().unwrap(), Some(&common::sha256_file(&image)));
    let machine = ["--gpu", "--memory", "2048", "--disk-size", "8"];
    let shared = format!("{}:/opt/carbon-llama-root", llama.display());
    ok(
        &g.carbon_vm(&[&["create", "one"][..], &machine, &["--no-volumes"]].concat()),
        "create one",
    );
    ok(
        &g.carbon_vm(&[&["create", "two"][..], &machine, &["--volume", &shared]].concat()),
        "create two",
    );
    // Both start at the same time.
    let starts: Vec<_> = ["one", "two"]
        .map(|name| {
            g.inside(&assert_cmd::cargo::cargo_bin("carbon-vm"))
                .args(["start", name])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .into_iter()
        .collect();
    for s in starts {
        ok(&s.wait_with_output().unwrap(), "start");
    }
    let list: Value = serde_json::from_str(&ok(&g.carbon_vm(&["--json", "list"]), "list")).unwrap();
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|m| m["state"] == "running"),
        "{list:#}"
    );

    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts");
    ok(
        &Command::new(scripts.join("llama-root"))
            .args(["image", "one"])
            .env("CONTAINERS_CONF", common::podman_conf(&g.xdg))
            .output()
            .unwrap(),
        "scripts/llama-root image one",
    );
    let mut texts = Vec::new();
    for (name, workload_image) in [
        ("one", "localhost/carbon-llama:latest"),
        ("two", "/opt/carbon-llama-root"),
    ] {
        let args = [
            "--json",
            "gpu",
            "check",
            name,
            "--workload",
            "llama",
            "--workload-image",
            workload_image,
        ];
        let r = passed_on_venus(&g.carbon_vm(&args), &format!("gpu check of {name}"));
        let w = &r["workload"];
        let (n, of) = w["layers"].as_str().unwrap().split_once('/').unwrap();
        assert!(n == of && n.parse::<u32>().unwrap() > 0, "{w:#}");
        let text = w["vulkan_text"].as_str().unwrap().to_owned();
        assert_eq!(text, w["cpu_text"].as_str().unwrap(), "{w:#}");
        let generated = text
            .trim()
            .strip_prefix("carbon-vm runs llama.cpp")
            .unwrap();
        assert!(generated.trim().len() > 16, "{text:?}");
        texts.push(text);
    }
    assert_eq!(texts[0], texts[1], "the two machines decoded alike");

    // llama.cpp on the host's own Vulkan device (lavapipe here, a GPU elsewhere), no VM between.
    // Run again (twice at most) when its text lacks its closing blank line: llama-completion's
    // log thread can lose its last writes at exit, as the check's runs do (venus/src/llama.rs).
    let host_run = || {
        Command::new(scripts.join("llama-root"))
            .args(["run", "llama-completion"])
            .args(LLAMA_COMPLETION)
            .args(["--device", "Vulkan0", "-ngl", "999"])
            .env("GGML_VK_VISIBLE_DEVICES", "0")
            .output()
            .unwrap()
    };
    let mut host = host_run();
    for _ in 0..2 {
        if !host.status.success() || host.stdout.ends_with(b"\n\n") {
            break;
        }
        host = host_run();
    }
    let log = String::from_utf8_lossy(&host.stderr);
    assert!(
        host.status.success() && log.contains("using device Vulkan0"),
        "{log}"
    );
    assert_eq!(
        String::from_utf8_lossy(&host.stdout),
        texts[0],
        "the host's Vulkan device decoded alike"
    );

    // An image the machine does not have fails the check, naming what is missing.
    let o = g.carbon_vm(&[
        "gpu",
        "check",
        "one",
        "--workload",
        "llama",
        "--workload-image",
        "localhost/nothing-here",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(8), "{err}");
    assert!(err.contains("not in the machine"), "{err}");

    for name in ["one", "two"] {
        ok(&g.carbon_vm(&["rm", "--force", name]), "rm");
    }
}
