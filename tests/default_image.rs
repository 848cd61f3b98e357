//! The default guest image, built by the recipe (scripts/guest-image), served by a real nginx and
//! a real docker-registry and pulled both ways; then what the recipe put inside is checked.

mod common;

use common::{Env, servers};

#[test]
fn default_image_pulls_over_http_and_oci_and_bundles_venus() {
    let Some(image) = common::default_image() else {
        return;
    };
    let sha = common::sha256_file(&image);
    let dir = image.parent().unwrap();
    let name = image.file_name().unwrap().to_str().unwrap();

    // HTTP, from nginx.
    let web = servers::nginx(dir);
    let env = Env::new();
    let v = env.pull(&format!("http://127.0.0.1:{}/{name}", web.port), Some(&sha));
    assert_eq!(v["id"], sha);
    assert_eq!(v["arch"], "x86_64");
    assert!(
        v["kernel_version"].as_str().unwrap().starts_with("6.12"),
        "{v}"
    );
    assert!(
        v["mesa_version"].as_str().unwrap().starts_with("25."),
        "{v}"
    );
    assert_eq!(
        v["venus_library"],
        "/usr/lib/x86_64-linux-gnu/libvulkan_virtio.so"
    );
    assert_eq!(v["container_images"][0], "localhost/carbon-venus:latest");
    env.cmd().args(["image", "verify", &sha]).assert().success();

    // What the recipe put in the root filesystem.
    let disk = std::path::PathBuf::from(v["disk"].as_str().unwrap());
    let root = guest_image::inspect::open_partition(&disk, "carbon-root").unwrap();
    for path in [
        "/usr/lib/carbon-vm/ready",
        "/etc/systemd/system/multi-user.target.wants/carbon-ready.service",
        "/usr/lib/carbon-vm/gpu-devices",
        "/etc/systemd/system/multi-user.target.wants/carbon-gpu-devices.service",
        "/etc/udev/rules.d/70-carbon-render.rules",
        "/etc/systemd/system/sockets.target.wants/podman.socket",
        "/usr/bin/vulkaninfo",
        "/usr/bin/podman",
        "/usr/sbin/sshd",
        "/usr/bin/socat",
        "/etc/systemd/system/multi-user.target.wants/carbon-coldplug.service",
    ] {
        assert!(root.exists(path).unwrap(), "{path} missing from the guest");
    }
    // The boot waits for nothing it need not (docs/internals.md, "The guest's boot"): no root
    // device in fstab, and Podman's boot-time clean-up kept out of the boot's own tmpfiles run
    // (carbon-podman-tmpfiles.service does it before Podman starts), the rest of podman's kept.
    let fstab = String::from_utf8(root.read("/etc/fstab").unwrap()).unwrap();
    assert!(
        fstab
            .lines()
            .all(|l| l.starts_with('#') || l.trim().is_empty()),
        "{fstab}"
    );
    let tmpfiles = String::from_utf8(root.read("/etc/tmpfiles.d/podman.conf").unwrap()).unwrap();
    assert!(!tmpfiles.contains("D! /run/podman"), "{tmpfiles}");
    assert!(tmpfiles.contains("x /tmp/podman-run-*"), "{tmpfiles}");
    assert!(
        !root.exists("/etc/ssh/ssh_host_ed25519_key").unwrap(),
        "host keys must be made per machine, not baked into the image"
    );
    // The bundled container is an OCI archive podman can load under its advertised name.
    let oci = root
        .read("/usr/share/carbon-vm/containers/venus.oci.tar")
        .unwrap();
    let mut a = tar::Archive::new(&oci[..]);
    let index = a
        .entries()
        .unwrap()
        .map(Result::unwrap)
        .find(|e| e.path().unwrap().to_str() == Some("index.json"))
        .map(|mut e| {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut e, &mut s).unwrap();
            s
        })
        .expect("index.json in the container archive");
    assert!(index.contains("localhost/carbon-venus:latest"), "{index}");

    // OCI, from docker-registry: push, then pull by digest with nothing else pinning it.
    let reg = servers::registry();
    let dest = format!("oci://127.0.0.1:{}/carbon/guest:trixie", reg.port);
    let pushed = env.push(&image, &dest, &sha);
    let env2 = Env::new();
    let v = env2.pull(pushed["reference"].as_str().unwrap(), None);
    assert_eq!(v["id"], sha);
    assert_eq!(v["downloaded"], true);
}
