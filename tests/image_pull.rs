//! `image pack` / `pull` / `ls` / `verify` / `rm` against the real pipeline: local files, a real
//! nginx, a real docker-registry, and hand-crafted hostile archives that must be refused with the
//! exact check named and the cache left as it was.

mod common;

use common::archive::{self, Entry, boot_members, entries, manifest, tar_bytes, zstd_bytes};
use common::{Env, servers};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A small but real image (GPT, ext4 root with the Venus ICD, EFI partition), packed once per
/// test binary and copied into each test's directory.
fn mini_image(dir: &Path) -> (PathBuf, String) {
    static MINI: std::sync::OnceLock<(tempfile::TempDir, PathBuf, String)> =
        std::sync::OnceLock::new();
    let (_, art, sha) = MINI.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        let (a, s) = common::pack_mini(d.path());
        (d, a, s)
    });
    let copy = dir.join("mini.tar.zst");
    std::fs::copy(art, &copy).unwrap();
    (copy, sha.clone())
}

/// Pulls `source`, expects exit `code` and `needle` in stderr, and an untouched cache.
fn refused(env: &Env, source: &str, pin: Option<&str>, code: i32, needle: &str) {
    let before = env.cache_listing();
    let mut c = env.cmd();
    c.args(["image", "pull", source]);
    if let Some(p) = pin {
        c.args(["--sha256", p]);
    }
    let out = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{source}: {stderr}");
    assert!(
        stderr.contains(needle),
        "{source}: expected {needle:?} in:\n{stderr}"
    );
    assert!(
        stderr.contains("cannot pull"),
        "error names the image: {stderr}"
    );
    assert_eq!(env.cache_listing(), before, "{source}: cache changed");
}

#[test]
fn pack_pull_ls_verify_rm_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (art, sha) = mini_image(dir.path());
    let env = Env::new();
    let v = env.pull(art.to_str().unwrap(), Some(&sha));
    assert_eq!(v["id"], sha);
    assert_eq!(v["downloaded"], true);
    assert_eq!(v["name"], "mini");
    assert_eq!(v["kernel_version"], "6.12.0-test");
    assert_eq!(v["mesa_version"], "25.0.7-2");
    assert_eq!(
        v["venus_library"],
        "/usr/lib/x86_64-linux-gnu/libvulkan_virtio.so"
    );
    assert_eq!(v["container_images"][0], "localhost/carbon-venus:latest");
    let disk = PathBuf::from(v["disk"].as_str().unwrap());
    assert!(disk.starts_with(env.images_dir().join(&sha)));
    assert!(v["cmdline"].as_str().unwrap().starts_with("root=PARTUUID="));

    // A second pull finds it cached and downloads nothing.
    let again = env.pull(art.to_str().unwrap(), Some(&sha));
    assert_eq!(again["downloaded"], false);

    let ls: Value = serde_json::from_slice(
        &env.cmd()
            .args(["--json", "image", "ls"])
            .assert()
            .success()
            .get_output()
            .stdout,
    )
    .unwrap();
    assert_eq!(ls.as_array().unwrap().len(), 1);
    env.cmd()
        .args(["image", "verify", &sha[..12]])
        .assert()
        .success();

    // Tampering with the cached disk is caught by verify.
    let mut f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(1 << 20)).unwrap();
    f.write_all(b"tampered").unwrap();
    drop(f);
    let out = env
        .cmd()
        .args(["image", "verify", &sha[..12]])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("disk.raw"));

    env.cmd()
        .args(["image", "rm", &sha[..8]])
        .assert()
        .success();
    assert_eq!(env.cache_listing(), Vec::<String>::new());
    let out = env.cmd().args(["image", "rm", &sha[..8]]).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn pack_takes_a_root_without_dpkg_or_systemd_boot_given_what_it_cannot_read() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("rootfs");
    archive::synthetic_rootfs(&root, true);
    std::fs::remove_dir_all(root.join("var/lib/dpkg")).unwrap();
    let boot = root.join("usr/lib/systemd/boot");
    let loader = dir.path().join("systemd-bootx64.efi");
    std::fs::rename(boot.join("efi/systemd-bootx64.efi"), &loader).unwrap();
    std::fs::remove_dir_all(&boot).unwrap();
    let out = dir.path().join("x.tar.zst");
    let env = Env::new();
    let pack = |extra: &[&str]| {
        env.cmd()
            .args(["--json", "image", "pack", "--arch", "x86_64"])
            .arg(&root)
            .arg("-o")
            .arg(&out)
            .args(extra)
            .output()
            .unwrap()
    };
    // Each missing piece is named with the flag that supplies it, and nothing is written.
    for (extra, needle) in [
        (&[][..], "pass --mesa-version"),
        (
            &["--mesa-version", "25.1.4-1.fc42"][..],
            "--bootloader FILE",
        ),
    ] {
        let o = pack(extra);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(needle), "{err}");
        assert!(!out.exists());
    }
    let o = pack(&[
        "--mesa-version",
        "25.1.4-1.fc42",
        "--bootloader",
        loader.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{o:?}");
    let sha = common::sha256_file(&out);
    let v = env.pull(out.to_str().unwrap(), Some(&sha));
    assert_eq!(v["mesa_version"], "25.1.4-1.fc42");
    std::fs::remove_file(&out).unwrap();

    // A Fedora-style root: Mesa's version from its rpm database (/usr/lib/sysimage/rpm), read by
    // the host's rpm (a real package, built and registered here with rpmbuild and rpm).
    let top = dir.path().join("rpmbuild");
    let spec = dir.path().join("mesa.spec");
    std::fs::write(
        &spec,
        "Name: mesa-vulkan-drivers\nVersion: 25.1.9\nRelease: 2.fc43\nSummary: test\n\
         License: MIT\nBuildArch: noarch\n%description\ntest\n%files\n",
    )
    .unwrap();
    let run = |c: &mut std::process::Command| {
        let o = c.output().expect("rpm and rpmbuild (scripts/install-deps)");
        assert!(o.status.success(), "{c:?}: {o:?}");
    };
    run(std::process::Command::new("rpmbuild")
        .args(["-bb", "--quiet", "--define"])
        .arg(format!("_topdir {}", top.display()))
        .arg(&spec));
    let rpm = top.join("RPMS/noarch/mesa-vulkan-drivers-25.1.9-2.fc43.noarch.rpm");
    let db = [
        "--root",
        root.to_str().unwrap(),
        "--dbpath",
        "/usr/lib/sysimage/rpm",
    ];
    std::fs::create_dir_all(root.join("usr/lib/sysimage/rpm")).unwrap();
    run(std::process::Command::new("rpm").args(db).arg("--initdb"));
    run(std::process::Command::new("rpm")
        .args(db)
        .args(["-i", "--nodeps", "--justdb", "--noscripts"])
        .arg(&rpm));
    let o = pack(&["--bootloader", loader.to_str().unwrap()]);
    assert!(o.status.success(), "{o:?}");
    let sha = common::sha256_file(&out);
    let v = env.pull(out.to_str().unwrap(), Some(&sha));
    assert_eq!(v["mesa_version"], "25.1.9-2.fc43");
}

#[test]
fn pack_refuses_a_root_without_venus_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("rootfs");
    archive::synthetic_rootfs(&root, false);
    let out = dir.path().join("x.tar.zst");
    let env = Env::new();
    let o = env
        .cmd()
        .args(["image", "pack"])
        .arg(&root)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("mesa-vulkan-drivers"));
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        left,
        vec![std::ffi::OsString::from("rootfs")],
        "no partial output"
    );
}

#[test]
fn hostile_archives_are_refused_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::new();
    let members = boot_members();
    let good = manifest(&members);
    let with = |extra: Vec<Entry>| {
        let mut e = entries(&good, &members);
        e.extend(extra);
        zstd_bytes(&tar_bytes(&e))
    };
    let swap_member = |idx: usize, replacement: Entry| {
        let mut e = entries(&good, &members);
        e[idx] = replacement;
        zstd_bytes(&tar_bytes(&e))
    };
    let mut bad_sizes = good.clone();
    bad_sizes["members"][0]["size"] = 3.into();
    let mut bad_digest = good.clone();
    bad_digest["members"][1]["sha256"] = archive::sha256(b"other").into();
    let good_bytes = zstd_bytes(&tar_bytes(&entries(&good, &members)));
    let mut corrupt = good_bytes.clone();
    // Byte 4 is the zstd frame header descriptor: flipping it breaks the frame itself.
    corrupt[4] ^= 0xff;
    // 2 GiB of zeros after the archive: tiny compressed, far beyond what the manifest allows.
    let mut bomb_tar = tar_bytes(&entries(&good, &members));
    let bomb = {
        let mut enc = zstd::Encoder::new(Vec::new(), 3).unwrap();
        enc.write_all(&bomb_tar).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..2048 {
            enc.write_all(&zeros).unwrap();
        }
        enc.finish().unwrap()
    };
    bomb_tar.clear();

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated",
            good_bytes[..good_bytes.len() / 2].to_vec(),
            "corrupt or truncated compressed data",
        ),
        ("corrupt", corrupt, "corrupt or truncated compressed data"),
        (
            "not-in-manifest",
            with(vec![Entry::file("evil.sh", b"#!/bin/sh")]),
            "\"evil.sh\" is not listed in the manifest",
        ),
        (
            "absolute",
            with(vec![Entry::file("/etc/cron.d/evil", b"x")]),
            "\"/etc/cron.d/evil\" is not a plain relative path",
        ),
        (
            "dotdot",
            with(vec![Entry::file("boot/../../evil", b"x")]),
            "\"boot/../../evil\" is not a plain relative path",
        ),
        (
            "symlink",
            swap_member(
                3,
                Entry::special("disk.raw", tar::EntryType::Symlink, Some("/etc/shadow")),
            ),
            "\"disk.raw\" is a symlink",
        ),
        (
            "through-symlink",
            with(vec![Entry::special(
                "boot",
                tar::EntryType::Symlink,
                Some("/etc"),
            )]),
            "\"boot\" is a symlink",
        ),
        (
            "hardlink",
            swap_member(
                1,
                Entry::special("boot/vmlinuz", tar::EntryType::Link, Some("/etc/passwd")),
            ),
            "\"boot/vmlinuz\" is a hard link",
        ),
        (
            "device",
            with(vec![Entry::special("dev-null", tar::EntryType::Char, None)]),
            "\"dev-null\" is a character device",
        ),
        (
            "fifo",
            with(vec![Entry::special("pipe", tar::EntryType::Fifo, None)]),
            "\"pipe\" is a fifo",
        ),
        (
            "size-mismatch",
            zstd_bytes(&tar_bytes(&entries(&bad_sizes, &members))),
            "\"boot/vmlinuz\" is 6 bytes, the manifest says 3",
        ),
        (
            "digest-mismatch",
            zstd_bytes(&tar_bytes(&entries(&bad_digest, &members))),
            "\"boot/initrd.img\" has sha256",
        ),
        (
            "missing",
            zstd_bytes(&tar_bytes(&entries(&good, &members[..2]))),
            "\"disk.raw\" is listed in the manifest but missing",
        ),
        (
            "duplicate",
            with(vec![Entry::file("disk.raw", &members[2].1)]),
            "\"disk.raw\" appears twice",
        ),
        (
            "no-manifest-first",
            zstd_bytes(&tar_bytes(&[Entry::file("boot/vmlinuz", b"kernel")])),
            "not manifest.json",
        ),
        (
            "bad-manifest",
            zstd_bytes(&tar_bytes(&[Entry::file(
                "manifest.json",
                b"{\"schema\": 1",
            )])),
            "manifest is not valid JSON",
        ),
        ("bomb", bomb, "decompression bomb"),
    ];
    for (name, bytes, needle) in cases {
        let path = dir.path().join(format!("{name}.tar.zst"));
        std::fs::write(&path, &bytes).unwrap();
        let pin = archive::sha256(&bytes);
        refused(&env, path.to_str().unwrap(), Some(&pin), 4, needle);
    }
    // A valid archive under the wrong pin.
    let path = dir.path().join("good.tar.zst");
    std::fs::write(&path, &good_bytes).unwrap();
    refused(
        &env,
        path.to_str().unwrap(),
        Some(&"0".repeat(64)),
        4,
        "artifact digest mismatch",
    );
    // Nothing pins it and it is unsigned.
    refused(&env, path.to_str().unwrap(), None, 4, "nothing pins it");
    assert!(env.cache_listing().is_empty());
}

#[test]
fn an_image_without_venus_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (art, _) = mini_image(dir.path());
    let mut parts = archive::read_artifact(&art);
    let mut m: Value = serde_json::from_slice(&parts[0].1).unwrap();
    m["bundles"]["venus_icd"] = "/usr/share/vulkan/icd.d/nothing.json".into();
    parts[0].1 = serde_json::to_vec(&m).unwrap();
    let e: Vec<Entry> = parts.iter().map(|(n, d)| Entry::file(n, d)).collect();
    let bytes = zstd_bytes(&tar_bytes(&e));
    let path = dir.path().join("novenus.tar.zst");
    std::fs::write(&path, &bytes).unwrap();
    let env = Env::new();
    refused(
        &env,
        path.to_str().unwrap(),
        Some(&archive::sha256(&bytes)),
        4,
        "does not bundle a usable Venus driver",
    );
}

#[test]
fn signed_manifests_verify_against_trusted_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (art, _) = mini_image(dir.path());
    let parts = archive::read_artifact(&art);
    let kp = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    let sign = |data: &[u8]| {
        minisign::sign(Some(&kp.pk), &kp.sk, data, Some("carbon-vm test"), None)
            .unwrap()
            .to_string()
    };
    let build = |sig: String| {
        let mut e = vec![
            Entry::file("manifest.json", &parts[0].1),
            Entry::file("manifest.json.minisig", sig.as_bytes()),
        ];
        e.extend(parts[1..].iter().map(|(n, d)| Entry::file(n, d)));
        zstd_bytes(&tar_bytes(&e))
    };
    let env = Env::new();
    let keys = env.home.path().join("config/trusted-keys");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::write(keys.join("test.pub"), kp.pk.to_box().unwrap().to_string()).unwrap();

    let forged = dir.path().join("forged.tar.zst");
    std::fs::write(&forged, build(sign(b"some other manifest"))).unwrap();
    refused(
        &env,
        forged.to_str().unwrap(),
        None,
        4,
        "manifest signature rejected",
    );

    let signed = dir.path().join("signed.tar.zst");
    std::fs::write(&signed, build(sign(&parts[0].1))).unwrap();
    let v = env.pull(signed.to_str().unwrap(), None);
    assert_eq!(v["signed"], true);
}

/// A throwaway minisign key pair: (secret key file, public key text).
fn keypair(dir: &Path, name: &str) -> (PathBuf, String) {
    // An empty password: an unencrypted key with its checksum, as `minisign -G -W` writes.
    let kp = minisign::KeyPair::generate_encrypted_keypair(Some(String::new())).unwrap();
    let sk = dir.join(format!("{name}.key"));
    std::fs::write(&sk, kp.sk.to_box(None).unwrap().to_string()).unwrap();
    (sk, kp.pk.to_box().unwrap().to_string())
}

/// A home whose trusted keys are `pk` (a minisign `.pub` text).
fn env_trusting(pk: &str) -> Env {
    let env = Env::new();
    let keys = env.home.path().join("config/trusted-keys");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::write(keys.join("release.pub"), pk).unwrap();
    env
}

/// `image pack ROOT -o OUT --name mini EXTRA...`; returns its record.
fn pack_mini(env: &Env, root: &Path, out: &Path, extra: &[&str]) -> Value {
    let args = [
        &[
            "image",
            "pack",
            root.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--name",
            "mini",
        ][..],
        extra,
    ]
    .concat();
    env.json(&args)
}

#[test]
fn pack_and_sign_write_signatures_that_pull_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let (sk, pk) = keypair(dir.path(), "release");
    let (other_sk, _) = keypair(dir.path(), "other");
    let env = env_trusting(&pk);

    // `image pack --sign-key`: signed at birth, pulled with no pin.
    let root = dir.path().join("rootfs");
    archive::synthetic_rootfs(&root, true);
    let packed = dir.path().join("packed.tar.zst");
    let v = pack_mini(&env, &root, &packed, &["--sign-key", sk.to_str().unwrap()]);
    assert_eq!(v["sha256"], common::sha256_file(&packed));
    let parts = archive::read_artifact(&packed);
    assert_eq!(parts[1].0, "manifest.json.minisig", "the second member");
    assert_eq!(env.pull(packed.to_str().unwrap(), None)["signed"], true);

    // `image sign` on an unsigned artifact: the rest of the file is copied, not recompressed.
    let (art, unsigned_sha) = mini_image(dir.path());
    let signed = dir.path().join("signed.tar.zst");
    let v = env.json(&[
        "image",
        "sign",
        art.to_str().unwrap(),
        "--key",
        sk.to_str().unwrap(),
        "-o",
        signed.to_str().unwrap(),
    ]);
    let signed_sha = v["sha256"].as_str().unwrap().to_owned();
    assert_eq!(signed_sha, common::sha256_file(&signed));
    assert_ne!(signed_sha, unsigned_sha);
    assert_eq!(
        common::sha256_file(&art),
        unsigned_sha,
        "the input is left alone"
    );
    let members = |p: &Path| -> Vec<(String, Vec<u8>)> {
        archive::read_artifact(p)
            .into_iter()
            .filter(|(n, _)| !n.ends_with(".minisig"))
            .collect()
    };
    assert_eq!(
        members(&signed),
        members(&art),
        "the same members, plus the signature"
    );
    assert_eq!(
        env_trusting(&pk).pull(signed.to_str().unwrap(), None)["signed"],
        true
    );

    // Re-signed in place by another key: the old signature is replaced, and no longer trusted.
    env.json(&[
        "image",
        "sign",
        signed.to_str().unwrap(),
        "--key",
        other_sk.to_str().unwrap(),
    ]);
    let sigs = archive::read_artifact(&signed)
        .iter()
        .filter(|(n, _)| n.ends_with(".minisig"))
        .count();
    assert_eq!(sigs, 1, "one signature member");
    refused(
        &env_trusting(&pk),
        signed.to_str().unwrap(),
        None,
        4,
        "manifest signature rejected",
    );

    // A key that is not one, or an artifact that is not an image: exit 2, nothing written.
    let before = common::sha256_file(&art);
    let not_image = dir.path().join("not-an-image");
    std::fs::write(&not_image, zstd_bytes(b"plain text, compressed")).unwrap();
    for (file, key, needle) in [
        (&art, &art, "is not a minisign secret key"),
        (&not_image, &sk, "does not start with its manifest"),
    ] {
        let o = env
            .cmd()
            .args(["image", "sign"])
            .arg(file)
            .arg("--key")
            .arg(key)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains(needle), "{err}");
    }
    assert_eq!(common::sha256_file(&art), before);
    let stray: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".carbon-"))
        .collect();
    assert!(stray.is_empty(), "scratch files left: {stray:?}");
}

#[test]
fn concurrent_pulls_of_one_image_download_once() {
    let dir = tempfile::tempdir().unwrap();
    let (art, sha) = mini_image(dir.path());
    let env = Env::new();
    let children: Vec<_> = (0..3)
        .map(|_| {
            env.process()
                .args(["--json", "image", "pull"])
                .arg(&art)
                .args(["--sha256", &sha])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let downloaded: Vec<bool> = children
        .into_iter()
        .map(|c| {
            let o = c.wait_with_output().unwrap();
            assert!(o.status.success());
            let v: Value = serde_json::from_slice(&o.stdout).unwrap();
            assert_eq!(v["id"], sha);
            v["downloaded"].as_bool().unwrap()
        })
        .collect();
    assert_eq!(
        downloaded.iter().filter(|d| **d).count(),
        1,
        "{downloaded:?}"
    );
    assert_eq!(env.cache_listing(), vec![sha]);
}

#[test]
fn http_pull_from_nginx_and_fetch_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (art, sha) = mini_image(dir.path());
    let web = servers::nginx(dir.path());
    let env = Env::new();
    let url = format!(
        "http://127.0.0.1:{}/{}",
        web.port,
        art.file_name().unwrap().to_str().unwrap()
    );
    let v = env.pull(&url, Some(&sha));
    assert_eq!(v["source"], url);
    let env2 = Env::new();
    refused(
        &env2,
        &format!("http://127.0.0.1:{}/missing.tar.zst", web.port),
        Some(&sha),
        5,
        "404",
    );
}

/// A TCP proxy in front of nginx that cuts the first response after `cut` bytes, like a dropped
/// connection; later connections pass through. Records each request head.
fn flaky_proxy(upstream: u16, cut: usize) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let h = heads.clone();
    std::thread::spawn(move || {
        for (n, client) in listener.incoming().enumerate() {
            let mut client = client.unwrap();
            let mut up = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && client.read(&mut b).unwrap() == 1 {
                head.push(b[0]);
            }
            h.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&head).into_owned());
            up.write_all(&head).unwrap();
            let limit = if n == 0 { cut } else { usize::MAX };
            std::thread::spawn(move || {
                let mut sent = 0;
                let mut buf = vec![0u8; 16 * 1024];
                while sent < limit {
                    let k = match up.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => k.min(limit - sent),
                    };
                    if client.write_all(&buf[..k]).is_err() {
                        break;
                    }
                    sent += k;
                }
                let _ = client.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    (port, heads)
}

#[test]
fn interrupted_http_download_resumes_with_range() {
    let dir = tempfile::tempdir().unwrap();
    let (art, sha) = mini_image(dir.path());
    let size = std::fs::metadata(&art).unwrap().len() as usize;
    let web = servers::nginx(dir.path());
    let (port, heads) = flaky_proxy(web.port, size / 2);
    let env = Env::new();
    let url = format!("http://127.0.0.1:{port}/mini.tar.zst");
    let v = env.pull(&url, Some(&sha));
    assert_eq!(v["id"], sha);
    let heads = heads.lock().unwrap();
    assert!(heads.len() >= 2, "expected a reconnect: {heads:?}");
    assert!(
        heads[1].to_ascii_lowercase().contains("range: bytes="),
        "second request resumes: {}",
        heads[1]
    );
}

#[test]
fn oci_push_and_pull_by_tag_and_digest() {
    let dir = tempfile::tempdir().unwrap();
    let (art, sha) = mini_image(dir.path());
    let reg = servers::registry();
    let env = Env::new();
    let tag = format!("oci://127.0.0.1:{}/carbon/mini:test", reg.port);
    let pushed = env.push(&art, &tag, &sha);
    let by_digest = pushed["reference"].as_str().unwrap().to_owned();
    assert!(by_digest.contains("@sha256:"));

    // A tag alone pins nothing.
    refused(&env, &tag, None, 4, "nothing pins it");
    // A wrong pin is caught from the registry manifest, before any download.
    refused(&env, &tag, Some(&"1".repeat(64)), 4, "but it is pinned to");
    // A digest reference pins the manifest, and so the layer.
    let v = env.pull(&by_digest, None);
    assert_eq!(v["id"], sha);
    assert_eq!(v["downloaded"], true);
    let env2 = Env::new();
    let v = env2.pull(&tag, Some(&sha));
    assert_eq!(v["id"], sha);
}

#[test]
fn a_multi_arch_index_gives_each_architecture_its_own_image() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("rootfs");
    archive::synthetic_rootfs(&root, true);
    let env = Env::new();
    let pack = |arch: &str| {
        let out = dir.path().join(format!("mini-{arch}.tar.zst"));
        let v = pack_mini(&env, &root, &out, &["--arch", arch]);
        (out, v["sha256"].as_str().unwrap().to_owned())
    };
    let (x86, x86_sha) = pack("x86_64");
    let (arm, arm_sha) = pack("aarch64");
    let reg = servers::registry();
    let tag = format!("oci://127.0.0.1:{}/carbon/multi:v1", reg.port);
    let v = env.json(&[
        "image",
        "push",
        x86.to_str().unwrap(),
        arm.to_str().unwrap(),
        &tag,
    ]);
    let by_index = v["reference"].as_str().unwrap().to_owned();
    assert!(
        by_index.ends_with(&format!("@sha256:{}", v["index"].as_str().unwrap())),
        "{v}"
    );
    let archs: Vec<&str> = v["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["arch"].as_str().unwrap())
        .collect();
    assert_eq!(archs, ["x86_64", "aarch64"]);

    // The index digest pins both; each architecture gets its own artifact.
    for (arch, sha) in [("x86_64", &x86_sha), ("aarch64", &arm_sha)] {
        let e = Env::new();
        let p = e.json(&["image", "pull", &by_index, "--arch", arch]);
        assert_eq!(
            (p["arch"].as_str(), p["id"].as_str()),
            (Some(arch), Some(sha.as_str()))
        );
    }
    // By tag, pinned by the artifact digest; the host's architecture by default.
    let host_sha = if std::env::consts::ARCH == "aarch64" {
        &arm_sha
    } else {
        &x86_sha
    };
    let p = Env::new().json(&["image", "pull", &tag, "--sha256", host_sha]);
    assert_eq!(p["id"].as_str(), Some(host_sha.as_str()));

    // An architecture the index lacks, and a forged index digest: refused, nothing cached.
    let e = Env::new();
    let o = e
        .cmd()
        .args(["image", "pull", &by_index, "--arch", "riscv64"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("has no linux/riscv64 image; it has [linux/amd64, linux/arm64]"),
        "{err}"
    );
    assert_ne!(o.status.code(), Some(0));
    assert!(e.cache_listing().is_empty(), "nothing cached");
    let forged = format!("{}{}", &by_index[..by_index.len() - 4], "0000");
    refused(&Env::new(), &forged, None, 5, "");
    // One index holds one artifact per architecture.
    let o = env
        .cmd()
        .args(["image", "push"])
        .arg(&x86)
        .arg(&x86)
        .arg(&tag)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("two artifacts are for x86_64"),
        "{o:?}"
    );
}

/// A catalog entry with a key and no pin takes a cached image of its name only if that key
/// verified it (the cache record says which key did): an image another trusted key signed is not
/// taken for it, and the entry's source is pulled instead (here: missing, so nothing is created).
#[test]
fn a_keyed_catalog_entry_takes_only_what_its_key_verified() {
    let dir = tempfile::tempdir().unwrap();
    let (sk_a, pk_a) = keypair(dir.path(), "a");
    let (_, pk_b) = keypair(dir.path(), "b");
    let env = env_trusting(&format!("{pk_a}\n{pk_b}"));
    let root = dir.path().join("rootfs");
    archive::synthetic_rootfs(&root, true);
    let packed = dir.path().join("a.tar.zst");
    pack_mini(
        &env,
        &root,
        &packed,
        &["--sign-key", sk_a.to_str().unwrap()],
    );
    let pulled = env.pull(packed.to_str().unwrap(), None);
    let key_line = |pk: &str| pk.lines().last().unwrap().trim().to_owned();
    let catalog = |pk: &str| {
        let path = dir.path().join("catalog.json");
        let entry = serde_json::json!({
            "name": "mini", "arch": std::env::consts::ARCH, "key": key_line(pk),
            "source": dir.path().join("missing.tar.zst").to_str().unwrap(),
        });
        std::fs::write(
            &path,
            serde_json::json!({"default": "mini", "images": [entry]}).to_string(),
        )
        .unwrap();
        path
    };
    let create = |name: &str, pk: &str| {
        env.cmd()
            .env("CARBON_VM_CATALOG", catalog(pk))
            .args(["create", name, "--disk-size", "1", "--no-volumes"])
            .output()
            .unwrap()
    };
    let o = create("by-b", &pk_b);
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("missing.tar.zst"),
        "an image key A signed was taken for key B's entry: {o:?}"
    );
    let o = create("by-a", &pk_a);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(env.json(&["inspect", "by-a"])["image"], pulled["id"]);
    assert!(!env.home.path().join("machines/by-b").exists());
}
