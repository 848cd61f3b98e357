//! scripts/release end to end, against a real registry (Debian's docker-registry): both default
//! images (x86_64 and the Apple Silicon aarch64) signed with a throwaway minisign key, pushed as
//! one multi-arch OCI index, and the catalog it prints taken by `create`, which pulls this host's
//! architecture and verifies the signature against the catalog's key. A wrong key or artifact
//! digest: exit 4, nothing cached, no machine.

mod common;

use common::{Env, servers};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

#[test]
fn release_publishes_both_architectures_and_create_takes_this_hosts() {
    let (Some(x86), Some(arm)) = (common::default_image(), common::aarch64_image()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let keypair = |name: &str| {
        let kp = minisign::KeyPair::generate_encrypted_keypair(Some(String::new())).unwrap();
        let sk = dir.path().join(name);
        std::fs::write(&sk, kp.sk.to_box(None).unwrap().to_string()).unwrap();
        let pk = kp.pk.to_box().unwrap().to_string();
        std::fs::write(dir.path().join(format!("{name}.pub")), &pk).unwrap();
        (sk, kp.pk.to_base64())
    };
    let (key, pub_b64) = keypair("release.key");
    let (_, other_b64) = keypair("other.key");
    let reg = servers::registry();
    let repo = format!("127.0.0.1:{}/carbon/guest", reg.port);
    let o = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/release"))
        .args([&repo, "v1"])
        .arg(&x86)
        .arg(&arm)
        .env("CARBON_VM_SIGN_KEY", &key)
        .env("CARBON_VM_BIN", assert_cmd::cargo::cargo_bin("carbon-vm"))
        .output()
        .unwrap();
    assert!(o.status.success(), "scripts/release: {o:?}");
    let catalog: Value = serde_json::from_slice(&o.stdout).unwrap();
    let images = catalog["images"].as_array().unwrap();
    let archs: Vec<&str> = images.iter().map(|i| i["arch"].as_str().unwrap()).collect();
    assert_eq!(archs, ["x86_64", "aarch64"], "{catalog:#}");
    let source = images[0]["source"].as_str().unwrap();
    assert!(
        source.starts_with(&format!("oci://{repo}@sha256:")),
        "{source}"
    );
    assert!(
        images
            .iter()
            .all(|i| i["source"] == source && i["key"] == pub_b64.as_str())
    );
    // Signed copies: their digests are not the unsigned inputs'.
    for (i, input) in images.iter().zip([&x86, &arm]) {
        assert_ne!(i["sha256"].as_str().unwrap(), common::sha256_file(input));
    }

    let host = images
        .iter()
        .find(|i| i["arch"] == std::env::consts::ARCH)
        .unwrap();
    let with_catalog = |catalog: &Value| {
        let env = Env::new();
        let path = env.home.path().join("catalog.json");
        std::fs::write(&path, catalog.to_string()).unwrap();
        (env, path)
    };
    let (env, path) = with_catalog(&catalog);
    let o = env
        .cmd()
        .env("CARBON_VM_CATALOG", &path)
        .args(["--json", "create", "--no-volumes", "rel"])
        .output()
        .unwrap();
    assert!(o.status.success(), "create from the release catalog: {o:?}");
    let ls = env.json(&["image", "ls"]);
    let ls = ls.as_array().unwrap();
    assert_eq!(ls.len(), 1, "{ls:?}");
    assert_eq!(ls[0]["id"], host["sha256"]);
    assert_eq!(ls[0]["arch"], std::env::consts::ARCH);
    assert_eq!(ls[0]["signed"], true, "verified against the catalog's key");

    // The other architecture from the same index, by its artifact digest (its signature must
    // verify too: the release key becomes one of this user's trusted keys).
    let keys = env.home.path().join("config/trusted-keys");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::copy(dir.path().join("release.key.pub"), keys.join("release.pub")).unwrap();
    let other = images
        .iter()
        .find(|i| i["arch"] != std::env::consts::ARCH)
        .unwrap();
    let v = env.json(&[
        "image",
        "pull",
        source,
        "--arch",
        other["arch"].as_str().unwrap(),
        "--sha256",
        other["sha256"].as_str().unwrap(),
    ]);
    assert_eq!((&v["arch"], &v["signed"]), (&other["arch"], &true.into()));

    // A catalog naming another key, or another artifact digest: refused before anything stays.
    for (field, value, needle) in [
        ("key", other_b64.as_str(), "signature"),
        ("sha256", &"0".repeat(64)[..], "pinned to"),
    ] {
        let mut bad = catalog.clone();
        for i in bad["images"].as_array_mut().unwrap() {
            i[field] = value.into();
        }
        let (env, path) = with_catalog(&bad);
        let o = env
            .cmd()
            .env("CARBON_VM_CATALOG", &path)
            .args(["create", "--no-volumes", "rel"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(4), "{field}: {err}");
        assert!(err.contains(needle), "{field}: {err}");
        assert!(env.cache_listing().is_empty(), "{field}: cached");
        assert_eq!(
            env.json(&["list"]),
            serde_json::json!([]),
            "{field}: a machine"
        );
    }
}
