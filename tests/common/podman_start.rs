//! What `podman machine start` launches for a libkrun machine, modelled from Podman's source at
//! each release tag from v5.2.0 to v6.0 (pkg/machine/apple/apple.go `StartGenericAppleVM`,
//! pkg/machine/libkrun/stubber.go, pkg/machine/vmconfigs/sockets_darwin.go, the vendored vfkit's
//! `ToCmdLine`): the krunkit command line Podman builds from a machine file. Podman reads only
//! `Resources`, the stored bootloader, `ImagePath`, `Mounts`, `LastUp` and the REST endpoint from
//! the file; the sockets come from its own runtime and data directories.
//!
//! A model, not Podman: it lets Linux check that the file carbon-vm writes makes a Mac's Podman
//! launch what krunkit accepts and the guest needs. Only a Mac with Podman can confirm it.

use serde_json::Value;
use std::path::Path;

/// gvproxy's DHCP server leases 192.168.127.2 to this MAC; Podman always passes it.
const MAC: &str = "5a:94:ef:e4:0c:ee";

/// Whether podman `minor` (5.x or 6.x) treats the file as a first boot (then it serves Ignition
/// on vsock 1024): 5.2 to 5.4 compare `LastUp` with the zero time parsed in UTC, later ones ask
/// whether it is the zero instant.
fn first_boot(file: &Value) -> bool {
    file["LastUp"]
        .as_str()
        .is_none_or(|t| t.starts_with("0001-01-01T00:00:00"))
}

/// The krunkit arguments podman `major.minor` passes for `file`; `runtime` is its runtime
/// directory (`$TMPDIR/podman`), `data` its machine data directory.
pub fn krunkit_args(
    major: u32,
    minor: u32,
    file: &Value,
    runtime: &Path,
    data: &Path,
) -> Vec<String> {
    let name = file["Name"].as_str().expect("Name");
    let at = |p: &Path, f: String| p.join(f).display().to_string();
    let mut a = Vec::new();
    let res = &file["Resources"];
    for (flag, v) in [("--cpus", &res["CPUs"]), ("--memory", &res["Memory"])] {
        if v.as_u64().unwrap_or(0) != 0 {
            a.extend([flag.to_owned(), v.to_string()]);
        }
    }
    // The stored bootloader; Go matches its keys case-insensitively (vfkit 0.5 capitalised them).
    let boot = &file["LibKrunHypervisor"]["KRun"]["VirtualMachine"]["bootloader"];
    let key = |k: &str| {
        boot.as_object()
            .and_then(|o| o.iter().find(|(n, _)| n.eq_ignore_ascii_case(k)))
            .map(|(_, v)| v.clone())
            .unwrap_or(Value::Null)
    };
    assert_eq!(boot["kind"], "efiBootloader", "podman starts EFI machines");
    let mut bootloader = format!(
        "efi,variable-store={}",
        key("efiVariableStorePath")
            .as_str()
            .expect("a variable store")
    );
    if key("createVariableStore") == Value::Bool(true) {
        bootloader.push_str(",create");
    }
    a.extend(["--bootloader".into(), bootloader]);
    let dev = |a: &mut Vec<String>, d: String| a.extend(["--device".into(), d]);
    dev(
        &mut a,
        format!(
            "virtio-blk,path={}",
            file["ImagePath"]["Path"].as_str().unwrap()
        ),
    );
    dev(&mut a, "virtio-rng".into());
    dev(
        &mut a,
        format!(
            "virtio-vsock,port=1025,socketURL={},listen",
            at(runtime, format!("{name}.sock"))
        ),
    );
    dev(
        &mut a,
        format!(
            "virtio-serial,logFilePath={}",
            at(runtime, format!("{name}.log"))
        ),
    );
    dev(
        &mut a,
        format!(
            "virtio-net,unixSocketPath={},mac={MAC}",
            at(runtime, format!("{name}-gvproxy.sock"))
        ),
    );
    for m in file["Mounts"].as_array().into_iter().flatten() {
        let tag = m["Tag"].as_str().unwrap_or_default();
        let mut d = format!("virtio-fs,sharedDir={}", m["Source"].as_str().unwrap());
        if !tag.is_empty() {
            d.push_str(&format!(",mountTag={tag}"));
        }
        dev(&mut a, d);
    }
    if major >= 6 {
        a.extend(["--timesync".into(), "vsockPort=1234".into()]);
    }
    let endpoint = file["LibKrunHypervisor"]["KRun"]["Endpoint"]
        .as_str()
        .expect("an endpoint");
    let hostport = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("tcp://"))
        .unwrap_or_else(|| panic!("podman refuses the endpoint {endpoint:?} (tcp or http only)"));
    assert!(
        !hostport.contains('/'),
        "podman refuses a path in {endpoint:?}"
    );
    a.extend(["--restful-uri".into(), format!("tcp://{hostport}")]);
    if (major, minor) >= (5, 6) {
        a.push("--nested".into());
    }
    if first_boot(file) {
        dev(
            &mut a,
            format!(
                "virtio-vsock,port=1024,socketURL={},listen",
                at(data, format!("{name}-ignition.sock"))
            ),
        );
    }
    a
}
