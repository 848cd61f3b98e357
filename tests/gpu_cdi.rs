//! The GPU machine's CDI device, `carbon-vm.dev/gpu=all`, for images that were not built for Venus,
//! end to end on one `--gpu` machine (QEMU 10 + virglrenderer 1.1 in the trixie host root):
//! - Debian 12 with its own Mesa (lavapipe, no Venus driver) sees no Venus without the device, and
//!   through it sees exactly one `Virtio-GPU Venus` and runs the project's Vulkan compute workload
//!   on it, checked against the CPU; `gpu check --image` says so both ways;
//! - Debian 11 (glibc 2.31) with only the Vulkan loader sees Venus through the device;
//! - the bundled `carbon-venus` image, which brings its own Venus Mesa, sees one Venus, not two;
//! - an image without a Vulkan loader: `gpu check` names that, and the bundle's loader serves it;
//! - an image whose C library is musl starts with the device, and `gpu check` names its C library;
//! - the docker CLI (`--device`) and compose (a `driver: cdi` device reservation), through the
//!   machine's Podman API;
//! - rootless podman in the guest.
//!
//! Images: scripts/vk-images (CARBON_VM_TEST_VK_IMAGES).

mod common;

use common::gpu::{GpuEnv, ok, passed_on_venus, with_stall_retry};
use serde_json::Value;
use std::process::{Command, Output};

const DEVICE: &str = "carbon-vm.dev/gpu=all";
const MACHINE: &str = "cdi";

#[test]
fn the_cdi_device_gives_venus_to_images_without_it() {
    with_stall_retry(cdi_device);
}

/// How many Venus devices a `vulkaninfo --summary` lists (by name: Debian 11's vulkaninfo does
/// not know Venus's driver ID).
fn venus_devices(summary: &str) -> usize {
    summary
        .lines()
        .filter(|l| l.trim_start().starts_with("deviceName") && l.contains("= Virtio-GPU Venus ("))
        .count()
}

fn cdi_device() {
    let (Some(image), Some(root), Some(images)) = (
        common::default_image(),
        common::gpu_root(),
        common::vk_images(),
    ) else {
        return;
    };
    let g = GpuEnv::new(root);
    let pulled = g
        .env
        .pull(image.to_str().unwrap(), Some(&common::sha256_file(&image)));
    // The image's manifest records its bundle, built from the guest's own Mesa.
    assert_eq!(
        pulled["container_driver"]["mesa_version"], pulled["mesa_version"],
        "{pulled:#}"
    );
    let work = tempfile::tempdir_in(g.env.home.path()).unwrap();
    std::fs::copy(
        common::workspace_bin("carbon-vk-compute", "carbon-vk-compute"),
        work.path().join("carbon-vk-compute"),
    )
    .unwrap();
    ok(
        &g.carbon_vm(&[
            "create",
            "--gpu",
            MACHINE,
            "--memory",
            "2048",
            "--disk-size",
            "8",
            "--volume",
            &format!("{}:/work", work.path().display()),
        ]),
        "create --gpu",
    );
    ok(&g.carbon_vm(&["start", MACHINE]), "start");
    let podman = |args: &[&str]| {
        let mut all = vec!["-c", MACHINE];
        all.extend_from_slice(args);
        g.podman(&all)
    };
    for name in [
        "bookworm-lavapipe",
        "bookworm-bare",
        "bullseye-loader",
        "musl",
    ] {
        let tar = images.join(format!("{name}.tar"));
        ok(
            &podman(&[
                "import",
                tar.to_str().unwrap(),
                &format!("localhost/{name}"),
            ]),
            &format!("podman import {name}"),
        );
    }
    let summary = |device: &[&str], image: &str| -> String {
        let mut args = vec!["run", "--rm"];
        args.extend_from_slice(device);
        args.extend_from_slice(&[image, "vulkaninfo", "--summary"]);
        let o = podman(&args);
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };

    // Debian 12's own Mesa has no Venus driver: /dev/dri alone gives lavapipe only.
    let lavapipe = "localhost/bookworm-lavapipe";
    let without = summary(&[], lavapipe);
    assert!(
        without.contains("llvmpipe") && venus_devices(&without) == 0,
        "{without}"
    );
    let with = summary(&["--device", DEVICE], lavapipe);
    assert_eq!(venus_devices(&with), 1, "{with}");
    assert!(!with.contains("DRIVER_ID_MESA_LLVMPIPE"), "{with}");
    // The project's compute workload on it, checked against the CPU.
    let out = ok(
        &podman(&[
            "run",
            "--rm",
            "--device",
            DEVICE,
            "-v",
            "/work:/work:ro",
            lavapipe,
            "/work/carbon-vk-compute",
            "--n",
            "128",
            "--driver",
            "DRIVER_ID_MESA_VENUS",
        ]),
        "compute workload through the CDI device",
    );
    let run: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(run["verified"], true, "{run}");
    assert_eq!(run["driver_id"], "DRIVER_ID_MESA_VENUS");
    // gpu check of that image runs it with the device.
    passed_on_venus(
        &g.carbon_vm(&["--json", "gpu", "check", MACHINE, "--image", lavapipe]),
        "gpu check --image of Debian 12",
    );

    // Debian 11: glibc 2.31 and the Vulkan loader 1.2 alone.
    let loader_only = "localhost/bullseye-loader";
    let with = summary(&["--device", DEVICE], loader_only);
    assert_eq!(venus_devices(&with), 1, "{with}");
    passed_on_venus(
        &g.carbon_vm(&["--json", "gpu", "check", MACHINE, "--image", loader_only]),
        "gpu check --image of Debian 11",
    );

    // An image with its own Venus Mesa: one Venus device through the device, as without it.
    let own = "localhost/carbon-venus:latest";
    assert_eq!(venus_devices(&summary(&[], own)), 1);
    let with = summary(&["--device", DEVICE], own);
    assert_eq!(venus_devices(&with), 1, "{with}");

    // No Vulkan loader at all: the check names it, and the bundle's own loader, asked for, serves
    // the compute workload.
    let bare = "localhost/bookworm-bare";
    let o = g.carbon_vm(&["--json", "gpu", "check", MACHINE, "--image", bare]);
    assert_eq!(o.status.code(), Some(8), "{o:?}");
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["missing"]["link"], "container-loader", "{r:#}");
    let out = ok(
        &podman(&[
            "run",
            "--rm",
            "--device",
            DEVICE,
            "-e",
            "LD_LIBRARY_PATH=/usr/lib/carbon-vm/venus/loader",
            "-v",
            "/work:/work:ro",
            bare,
            "/work/carbon-vk-compute",
            "--n",
            "128",
            "--driver",
            "DRIVER_ID_MESA_VENUS",
        ]),
        "compute workload with the bundle's loader",
    );
    let run: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(run["verified"], true, "{run}");

    // musl: the container starts with the device, and the check names the reason it gets no GPU.
    let started = ok(
        &podman(&[
            "run",
            "--rm",
            "--device",
            DEVICE,
            "localhost/musl",
            "sh",
            "-c",
            "ls /dev/dri; echo started",
        ]),
        "a musl container with the device",
    );
    assert!(
        started.contains("renderD128") && started.contains("started"),
        "{started}"
    );
    let o = g.carbon_vm(&[
        "--json",
        "gpu",
        "check",
        MACHINE,
        "--image",
        "localhost/musl",
    ]);
    assert_eq!(o.status.code(), Some(8), "{o:?}");
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["missing"]["link"], "container-libc", "{r:#}");
    assert!(
        r["missing"]["detail"].as_str().unwrap().contains("musl"),
        "{r:#}"
    );

    // The docker CLI and compose, through the machine's Podman API.
    let docker_host =
        serde_json::from_slice::<Value>(&g.carbon_vm(&["--json", "env", MACHINE]).stdout).unwrap()
            ["DOCKER_HOST"]
            .as_str()
            .unwrap()
            .to_owned();
    let docker = |program: &str, args: &[&str]| -> Output {
        Command::new(program)
            .env("DOCKER_HOST", &docker_host)
            .env("DOCKER_CONFIG", g.env.docker_config())
            .args(args)
            .output()
            .unwrap()
    };
    let by_docker = ok(
        &docker(
            "docker",
            &[
                "run",
                "--rm",
                "--device",
                DEVICE,
                lavapipe,
                "vulkaninfo",
                "--summary",
            ],
        ),
        "docker run --device",
    );
    assert_eq!(venus_devices(&by_docker), 1, "{by_docker}");
    // compose 2.26 (Debian 13's) passes a CDI name in `devices:` as a device path, which podman
    // 5.4's compat API then looks for as a file (podman#28495 fixed that upstream); a device
    // reservation with the CDI driver is a CDI request, as docker's --device sends.
    let compose_dir = tempfile::tempdir().unwrap();
    let compose = compose_dir.path().join("compose.yaml");
    std::fs::write(
        &compose,
        format!(
            "services:\n  vk:\n    image: {lavapipe}\n    command: [\"vulkaninfo\", \"--summary\"]\n    \
             deploy:\n      resources:\n        reservations:\n          devices:\n            \
             - driver: cdi\n              capabilities: [cdi]\n              device_ids: [\"{DEVICE}\"]\n"
        ),
    )
    .unwrap();
    let compose = compose.to_str().unwrap();
    let by_compose = ok(
        &docker("docker-compose", &["-f", compose, "run", "--rm", "vk"]),
        "compose run with a CDI device reservation",
    );
    assert_eq!(venus_devices(&by_compose), 1, "{by_compose}");

    // Rootless podman in the guest, as an ordinary user there.
    let rootless = ok(
        &g.carbon_vm(&[
            "ssh",
            MACHINE,
            "--",
            &format!(
                "id carbon-rootless >/dev/null 2>&1 || useradd --create-home carbon-rootless; \
                 runuser -l carbon-rootless -c 'podman load -q -i /usr/share/carbon-vm/containers/venus.oci.tar >/dev/null && \
                 podman run --rm --device {DEVICE} localhost/carbon-venus:latest vulkaninfo --summary' 2>&1"
            ),
        ]),
        "rootless podman with the device",
    );
    assert_eq!(venus_devices(&rootless), 1, "{rootless}");

    ok(&g.carbon_vm(&["rm", "--force", MACHINE]), "rm");
}
