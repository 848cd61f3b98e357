//! `create` without booting: concurrent creates of one name, bad references, no leftovers.

mod common;

use common::Env;

fn machines_listing(env: &Env) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(env.home.path().join("machines"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
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
                .args(["create", "dev", "--disk-size", "1"])
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
