//! `create` without booting: concurrent creates of one name, bad references, no leftovers.

mod common;

use common::{Env, servers};

fn machines_listing(env: &Env) -> Vec<String> {
    common::listing(&env.home.path().join("machines"))
}

#[test]
fn concurrent_creates_of_one_name_have_exactly_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let (art, sha) = common::pack_mini(dir.path());
    let env = Env::new();
    env.pull(art.to_str().unwrap(), Some(&sha));
    let children: Vec<_> = (0..3)
        .map(|_| {
            env.process()
                .args(["create", "dev", "--disk-size", "1", "--image", &sha])
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    assert_eq!(outs.iter().filter(|o| o.status.success()).count(), 1);
    for o in outs.iter().filter(|o| !o.status.success()) {
        assert!(String::from_utf8_lossy(&o.stderr).contains("machine \"dev\" already exists"));
    }
    assert_eq!(
        machines_listing(&env),
        vec!["dev"],
        "no scratch directories left"
    );
    let v = env.json(&["inspect", "dev"]);
    assert_eq!(v["state"], "stopped");
    assert_eq!(v["image"], sha);
    // The disk is the image's, grown to --disk-size; the key is private.
    let disk = std::fs::metadata(env.home.path().join("machines/dev/disk.raw")).unwrap();
    assert_eq!(disk.len(), 1 << 30);
    let key = std::fs::metadata(env.home.path().join("machines/dev/id_ed25519")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key.permissions()) & 0o077,
        0
    );
    env.cmd().args(["rm", "dev"]).assert().success();
    assert!(machines_listing(&env).is_empty());
}

#[test]
fn bad_references_leave_nothing_behind() {
    let env = Env::new();
    let o = env
        .cmd()
        .args(["create", "dev", "--image", "ffffff"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3));
    let o = env
        .cmd()
        .args(["create", "dev", "--driver", "vbox"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let o = env.cmd().args(["create", "Bad/Name"]).output().unwrap();
    assert!(!o.status.success());
    assert!(machines_listing(&env).is_empty());
}

/// `create` without `--image` takes the catalog's default: pulled from a real registry (verified
/// by the entry's pin) when not cached, the cached one afterwards; a wrong pin, an unpinned
/// entry or a bad catalog is refused with nothing cached or created.
#[test]
fn create_pulls_the_catalog_default() {
    let dir = tempfile::tempdir().unwrap();
    let (art, sha) = common::pack_mini(dir.path());
    let reg = servers::registry();
    let tag = format!("oci://127.0.0.1:{}/carbon/guest:mini", reg.port);
    Env::new().push(&art, &tag, &sha);
    let env = Env::new();
    let create = |catalog: &std::path::Path, name: &str, extra: &[&str]| {
        env.cmd()
            .env("CARBON_VM_CATALOG", catalog)
            .args(["create", name, "--disk-size", "1"])
            .args(extra)
            .output()
            .unwrap()
    };
    let stderr = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();

    let wrong = common::write_catalog(dir.path(), "wrong", &tag, Some(&"1".repeat(64)));
    let o = create(&wrong, "dev", &[]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(stderr(&o).contains("but it is pinned to"), "{}", stderr(&o));
    let unpinned = common::write_catalog(dir.path(), "mini", &tag, None);
    let o = create(&unpinned, "dev", &[]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(stderr(&o).contains("nothing pins it"), "{}", stderr(&o));
    assert!(stderr(&o).contains("image build"), "{}", stderr(&o));
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"default": "x", "images": []}"#).unwrap();
    let o = create(&bad, "dev", &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no image is named \"x\""),
        "{}",
        stderr(&o)
    );
    assert!(env.cache_listing().is_empty());
    assert!(machines_listing(&env).is_empty());

    let pinned = common::write_catalog(dir.path(), "mini", &tag, Some(&sha));
    let o = create(&pinned, "dev", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(env.json(&["inspect", "dev"])["image"], sha);
    let images = env.json(&["image", "ls"]);
    assert_eq!(images[0]["source"], tag.as_str());
    // Cached now: the registry is not asked again, by the default or by the catalog name.
    drop(reg);
    let o = create(&pinned, "again", &["--image", "mini"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(env.json(&["inspect", "again"])["image"], sha);
    // An unpinned entry is the newest cached image of its name.
    let o = create(&unpinned, "newest", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = create(&pinned, "nope", &["--image", "other"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert_eq!(machines_listing(&env), vec!["again", "dev", "newest"]);
}
