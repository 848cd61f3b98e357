//! The CLI contract: usage errors, exit codes, JSON on empty state, drivers not yet available here.

mod common;

use common::Env;

#[test]
fn usage_errors_exit_2() {
    let env = Env::new();
    env.cmd().arg("frobnicate").assert().code(2);
    let o = env
        .cmd()
        .args(["create", "dev", "--driver", "vbox"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown driver \"vbox\""));
    let o = env
        .cmd()
        .args(["image", "pull", "x.tar", "--sha256", "abc"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("is not a sha256 digest"));
}

#[test]
fn empty_state_lists_as_json() {
    let env = Env::new();
    let o = env
        .cmd()
        .args(["--json", "image", "ls"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&o).unwrap(),
        serde_json::json!([])
    );
    let o = env.cmd().args(["image", "rm", "abcdef"]).output().unwrap();
    assert_eq!(o.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&o.stderr).contains("image ls"));
}

#[test]
fn missing_source_is_a_fetch_error_naming_the_image() {
    let env = Env::new();
    let o = env
        .cmd()
        .args(["image", "pull", "/nonexistent/guest.tar.zst", "--sha256"])
        .arg("a".repeat(64))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(5));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cannot pull /nonexistent/guest.tar.zst"),
        "{err}"
    );
    assert!(
        err.contains("cannot read /nonexistent/guest.tar.zst"),
        "{err}"
    );
}

#[test]
fn drivers_not_yet_available_here_exit_7_before_anything_is_written() {
    let env = Env::new();
    for driver in ["krunkit", "libkrun"] {
        let o = env
            .cmd()
            .args(["create", "dev", "--driver", driver])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(7), "{driver}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&format!("the {driver} driver is not available")),
            "{err}"
        );
        assert!(!env.home.path().join("machines").join("dev").exists());
    }
}

#[test]
fn unknown_machines_are_not_found() {
    let env = Env::new();
    for args in [
        &["start", "nope"][..],
        &["stop", "nope"],
        &["inspect", "nope"],
        &["rm", "nope"],
        &["gpu", "check", "nope"],
    ] {
        let o = env.cmd().args(args).output().unwrap();
        assert_eq!(o.status.code(), Some(3), "{args:?}");
        assert!(String::from_utf8_lossy(&o.stderr).contains("no machine named \"nope\""));
    }
    let v = env.json(&["list"]);
    assert_eq!(v, serde_json::json!([]));
}

#[test]
fn state_root_follows_carbon_vm_home() {
    let env = Env::new();
    let o = env.cmd().args(["--json", "doctor"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let home = env.home.path().to_str().unwrap();
    for k in ["config", "images", "machines", "runtime"] {
        assert!(
            v["state"][k].as_str().unwrap().starts_with(home),
            "{k}: {v}"
        );
    }
    // KVM is probed, and only costs speed when missing: it never fails doctor on its own.
    let kvm = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["requirement"] == "kvm")
        .unwrap_or_else(|| panic!("no kvm check: {v}"));
    assert_eq!(kvm["optional"], true);
    assert!(!kvm["found"].as_str().unwrap().is_empty());
    // Host folders: the test host has virtiofsd 1.x, and its walls go up for this (ordinary) user.
    for req in ["virtiofsd", "folder walls"] {
        let c = v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["requirement"] == req)
            .unwrap_or_else(|| panic!("no {req} check: {v}"));
        assert_eq!(
            (&c["ok"], &c["optional"]),
            (&true.into(), &false.into()),
            "{c}"
        );
    }
}
