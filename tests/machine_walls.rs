//! The walls between a machine's containers and carbon-vm's plumbing, attacked from inside one
//! booted QEMU (TCG) machine, each attack asserted refused and the host unchanged:
//! - gvproxy's API at the gateway (192.168.127.1:80), from an unprivileged container on the
//!   default network, from a `--network host` container, and from a guest user outside
//!   containers: `expose` on the host's 0.0.0.0, `expose` of a unix socket over a host file,
//!   `unexpose` of carbon-vm's own SSH forward;
//! - the forwarder (127.0.0.1:80 in the guest), from a `--network host` container;
//! - the forwarder's checks, from root in the guest (where Podman asks): a published port without
//!   a host IP, in any JSON spelling, opens on the host's loopback only and closes again; a unix
//!   socket, a listing, the SSH forward's unexpose and an idle connection are refused;
//! - carbon-vm's control ports on the host's loopback through host.containers.internal
//!   (192.168.127.254, which gvproxy NATs to the host's 127.0.0.1): the SSH forward, from a
//!   container and from root in the guest, while the user's own loopback service still answers;
//!   and the SSH forward of a machine started after this one;
//! - ssh (`carbon-vm ssh`) ignores the user's ~/.ssh/config;
//! - a shared folder that holds carbon-vm's own state (the image cache, other machines), from a
//!   rootful container that mounts it: writing the cached kernel or another machine's disk,
//!   moving the state aside, a setuid or setgid file, a device node. carbon-vm runs as an
//!   ordinary user here (scripts/lib/as-test-user); the root case is the same walls.
//!
//! Publishing ports through Podman, docker and compose is tests/machine_workflow.rs's, unchanged.

mod common;

use common::net::{listeners, loopback};
use std::process::{Command, Output};

const MACHINE: &str = "walls";
const GATEWAY: &str = "192.168.127.1";

/// An HTTP request to gvproxy's forwarder API, as Podman sends it.
fn request(verb: &str, body: &str) -> String {
    format!(
        "POST /services/forwarder/{verb} HTTP/1.1\r\nHost: gateway.containers.internal\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// `s` as a bash `$'...'` word (every byte escaped), for a command line run in the guest.
fn bash_bytes(s: &str) -> String {
    let escaped: String = s.bytes().map(|b| format!("\\x{b:02x}")).collect();
    format!("$'{escaped}'")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

struct Machine {
    env: common::Env,
    /// A HOME whose ~/.ssh/config would break or subvert any ssh that read it.
    home: tempfile::TempDir,
}

impl Machine {
    fn cv(&self, args: &[&str]) -> Output {
        self.env
            .process()
            .env("HOME", self.home.path())
            .args(args)
            .output()
            .unwrap()
    }

    fn podman(&self, args: &[&str]) -> Output {
        Command::new("podman")
            .env(
                "CONTAINERS_CONF",
                common::podman_conf(&self.env.home.path().join("xdg")),
            )
            .args(["-c", MACHINE])
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs `script` (bash) as root in the guest, outside any container.
    fn guest(&self, script: &str) -> String {
        let o = self.cv(&[
            "ssh",
            MACHINE,
            "--",
            &format!("bash -c {}", bash_bytes(script)),
        ]);
        text(&o)
    }

    /// Sends `req` to `addr` (HOST PORT) from a container run with `opts`, through busybox nc;
    /// returns what the container printed (gvproxy's or the forwarder's answer, or nc's error).
    fn in_container(&self, opts: &[&str], addr: &str, req: &str) -> String {
        let mut args = vec!["run", "--rm", "-e"];
        let var = format!("REQ={req}");
        args.push(&var);
        args.extend_from_slice(opts);
        let script = format!("printf %s \"$REQ\" | busybox nc -w 10 {addr} 2>&1; echo nc-exit=$?");
        args.extend_from_slice(&["localhost/attacker", "sh", "-c", &script]);
        let o = self.podman(&args);
        assert!(o.status.success(), "podman run {opts:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn ssh_port(&self) -> u16 {
        self.ssh_port_of(MACHINE)
    }

    fn ssh_port_of(&self, machine: &str) -> u16 {
        let o = self.cv(&["--json", "inspect", machine]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["ssh_port"]
            .as_u64()
            .expect("a running machine's ssh_port") as u16
    }

    /// `carbon-vm ssh` still reaches the guest: its SSH forward was not cut.
    fn assert_ssh_works(&self, after: &str) {
        let o = self.cv(&["ssh", MACHINE, "--", "echo still-reachable"]);
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim(),
            "still-reachable",
            "carbon-vm ssh after {after}: {}",
            text(&o)
        );
    }
}

/// What an attack must have left: no answer from gvproxy (nor the forwarder), only a refusal.
fn assert_refused(answer: &str, what: &str) {
    assert!(
        answer.contains("Connection refused") && !answer.contains("HTTP/1."),
        "{what} was not refused: {answer}"
    );
}

#[test]
fn containers_cannot_reach_carbon_vms_plumbing() {
    let Some(image) = common::default_image() else {
        return;
    };
    let m = Machine {
        env: common::Env::new(),
        home: tempfile::tempdir().unwrap(),
    };
    // Any ssh that read this would fail to connect (and would hand the user's agent over).
    let dot_ssh = m.home.path().join(".ssh");
    std::fs::create_dir_all(&dot_ssh).unwrap();
    std::fs::write(
        dot_ssh.join("config"),
        "Host *\n  ProxyCommand /bin/false\n  ForwardAgent yes\n",
    )
    .unwrap();
    m.env
        .pull(image.to_str().unwrap(), Some(&common::sha256_file(&image)));
    // The folder shared is the one that holds carbon-vm's state, with another machine in it.
    let share = m.env.home.path().to_owned();
    let o = m.cv(&["create", "other", "--memory", "2048", "--no-volumes"]);
    assert!(o.status.success(), "create other: {}", text(&o));
    let o = m.cv(&[
        "create",
        MACHINE,
        "--memory",
        "2048",
        "--volume",
        share.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "create: {}", text(&o));
    let o = m.cv(&["start", MACHINE]);
    assert!(
        o.status.success(),
        "start, with a hostile ~/.ssh/config: {}",
        text(&o)
    );
    m.assert_ssh_works("start, with a hostile ~/.ssh/config");

    // The attacker: busybox's nc.
    let ctx = common::busybox_image_context("");
    let o = m.podman(&[
        "build",
        "-q",
        "-t",
        "localhost/attacker",
        ctx.path().to_str().unwrap(),
    ]);
    assert!(o.status.success(), "podman build: {}", text(&o));

    let ssh_port = m.ssh_port();
    let victim_dir = tempfile::tempdir().unwrap();
    let victim = victim_dir.path().join("victim.conf");
    std::fs::write(&victim, "the user's file\n").unwrap();
    let attack_port = common::servers::free_port();
    let attacks = [
        (
            "expose on the host's 0.0.0.0",
            request(
                "expose",
                &format!(r#"{{"local":"0.0.0.0:{attack_port}","remote":"192.168.127.2:22"}}"#),
            ),
        ),
        (
            "expose of a unix socket over a host file",
            request(
                "expose",
                &format!(
                    r#"{{"local":"{}","remote":"192.168.127.2:22","protocol":"unix"}}"#,
                    victim.display()
                ),
            ),
        ),
        (
            "unexpose of carbon-vm's SSH forward",
            request(
                "unexpose",
                &format!(r#"{{"local":"127.0.0.1:{ssh_port}"}}"#),
            ),
        ),
    ];
    let gateway = format!("{GATEWAY} 80");
    for (what, req) in &attacks {
        let unprivileged = ["--user", "65534:65534", "--cap-drop", "all"];
        assert_refused(
            &m.in_container(&unprivileged, &gateway, req),
            &format!("{what}, to gvproxy, from an unprivileged container"),
        );
        assert_refused(
            &m.in_container(&["--network", "host"], &gateway, req),
            &format!("{what}, to gvproxy, from a --network host container"),
        );
        assert_refused(
            &m.in_container(&["--network", "host"], "127.0.0.1 80", req),
            &format!("{what}, to the forwarder, from a --network host container"),
        );
    }
    // A guest user outside containers (what a rootless container's pasta connects as).
    let as_nobody = m.guest(&format!(
        "for addr in {GATEWAY} 127.0.0.1; do \
           out=$(runuser -u nobody -- bash -c \"exec 3<>/dev/tcp/$addr/80\" 2>&1); \
           case $out in *'Connection refused'*) echo refused $addr;; *) echo reached $addr: $out;; esac; \
         done"
    ));
    assert_eq!(
        as_nobody.lines().collect::<Vec<_>>(),
        [format!("refused {GATEWAY}"), "refused 127.0.0.1".to_owned()],
        "a guest user outside containers reached gvproxy or the forwarder"
    );
    // The host is as it was.
    assert!(
        !listeners("tcp", attack_port).contains(&"tcp:00000000".to_owned()),
        "port {attack_port} opened on the host's 0.0.0.0"
    );
    let meta = std::fs::symlink_metadata(&victim).unwrap();
    assert!(meta.file_type().is_file(), "the host file was replaced");
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "the user's file\n"
    );
    m.assert_ssh_works("the unexpose attacks");

    // The forwarder, asked as Podman asks (root in the guest): a port without a host IP, spelled
    // with spaces, opens on the host's 127.0.0.1 only, and unexposing it closes it.
    let forwarder = |req: &str| {
        m.guest(&format!(
            "exec 3<>/dev/tcp/127.0.0.1/80 && printf %s {} >&3 && timeout 60 cat <&3",
            bash_bytes(req)
        ))
    };
    let mut published = None;
    for _ in 0..5 {
        let port = common::servers::free_port();
        let answer = forwarder(&request(
            "expose",
            &format!(r#"{{ "local" : ":{port}", "remote" : ":{port}", "protocol" : "tcp" }}"#),
        ));
        if answer.starts_with("HTTP/1.1 200") {
            published = Some(port);
            break;
        }
        assert!(
            answer.contains("address already in use"),
            "expose: {answer}"
        );
    }
    let port = published.expect("a free port within 5 tries");
    assert_eq!(listeners("tcp", port), vec![loopback("tcp", 1)]);
    let answer = forwarder(&request("unexpose", &format!(r#"{{"local":":{port}"}}"#)));
    assert!(answer.starts_with("HTTP/1.1 200"), "unexpose: {answer}");
    assert_eq!(listeners("tcp", port), Vec::<String>::new());

    // What the forwarder refuses, whoever asks.
    let unix = forwarder(&request(
        "expose",
        &format!(
            r#"{{"local":"{}","remote":"192.168.127.2:22","protocol":"unix"}}"#,
            victim.display()
        ),
    ));
    assert!(unix.starts_with("HTTP/1.1 400"), "unix expose: {unix}");
    assert!(std::fs::symlink_metadata(&victim).unwrap().is_file());
    let ssh = forwarder(&request(
        "unexpose",
        &format!(r#"{{"local":"127.0.0.1:{ssh_port}","protocol":"tcp"}}"#),
    ));
    assert!(
        ssh.starts_with("HTTP/1.1 403"),
        "SSH forward unexpose: {ssh}"
    );
    m.assert_ssh_works("the forwarder's refusal to unexpose it");
    let all = forwarder("GET /services/forwarder/all HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(all.starts_with("HTTP/1.1 403"), "listing: {all}");
    let idle = m.guest("exec 3<>/dev/tcp/127.0.0.1/80 && timeout 60 cat <&3");
    assert!(
        idle.starts_with("HTTP/1.1 408"),
        "an idle connection: {idle}"
    );

    control_ports(&m, ssh_port);
    share_attacks(&m, &share);

    let o = m.cv(&["rm", "--force", MACHINE]);
    assert!(o.status.success(), "rm: {}", text(&o));
}

/// host.containers.internal reaches the user's services on the host's loopback, not carbon-vm's.
fn control_ports(m: &Machine, ssh_port: u16) {
    let service = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = service.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in service.incoming().flatten() {
            use std::io::Write;
            let _ = c.write_all(b"the user's service\n");
        }
    });
    let host = "192.168.127.254";
    // nc's input stays open until the service has answered and closed: gvproxy may end a
    // connection whose guest side already sent its FIN before it relays the host's answer.
    let o = m.podman(&[
        "run",
        "--rm",
        "localhost/attacker",
        "sh",
        "-c",
        &format!("(echo hello; sleep 10) | busybox nc -w 10 {host} {port} 2>&1"),
    ]);
    let answer = text(&o);
    assert!(
        answer.contains("the user's service"),
        "the user's loopback service through {host}: {answer}"
    );
    let answer = m.in_container(&[], &format!("{host} {ssh_port}"), "");
    assert_refused(
        &answer,
        "carbon-vm's SSH forward through host.containers.internal",
    );
    assert!(!answer.contains("SSH-"), "{answer}");
    let from_guest = m.guest(&format!(
        "exec 3<>/dev/tcp/{host}/{ssh_port} 2>&1 && timeout 10 head -c 4 <&3"
    ));
    assert!(
        from_guest.contains("Connection refused") && !from_guest.contains("SSH-"),
        "the SSH forward, from root in the guest: {from_guest}"
    );

    // A machine started after this one: its SSH forward joins this guest's walls at once.
    let o = m.cv(&["start", "other"]);
    assert!(o.status.success(), "start other: {}", text(&o));
    let other_port = m.ssh_port_of("other");
    let answer = m.in_container(&[], &format!("{host} {other_port}"), "");
    assert_refused(&answer, "a machine started later: its SSH forward");
    assert!(!answer.contains("SSH-"), "{answer}");
    let o = m.cv(&["stop", "other"]);
    assert!(o.status.success(), "stop other: {}", text(&o));
}

/// What a shared folder holding carbon-vm's state must keep from a rootful container that mounts
/// it (root in the guest, with podman's default capabilities: CAP_MKNOD and CAP_FSETID among them).
fn share_attacks(m: &Machine, share: &std::path::Path) {
    let images = share.join("cache/images");
    let kernel = std::fs::read_dir(&images)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("boot/vmlinuz"))
        .find(|k| k.is_file())
        .expect("the cached image's kernel");
    let kernel_digest = common::sha256_file(&kernel);
    let disk = share.join("machines/other/disk.raw");
    let disk_before = std::fs::metadata(&disk).unwrap();
    let vol = format!("{}:/s", share.display());
    let script = "cd /s
        k=$(find cache -name vmlinuz 2>/dev/null | head -1)
        [ -n \"$k\" ] && echo saw-kernel
        echo evil 2>/dev/null > cache/images/planted && echo planted-in-cache
        [ -e machines/other/disk.raw ] && echo saw-disk
        echo evil 2>/dev/null >> machines/other/disk.raw && echo wrote-disk
        mv cache c2 2>/dev/null && echo moved-cache
        mv machines m2 2>/dev/null && echo moved-machines
        rmdir config 2>/dev/null && echo removed-config
        mkdir -p planted && cp /bin/busybox planted/suid
        chmod 4755 planted/suid 2>/dev/null && echo setuid
        chmod 2755 planted/suid 2>/dev/null && echo setgid
        mknod planted/mem c 1 1 2>/dev/null && echo char-device
        mknod planted/sda b 8 0 2>/dev/null && echo block-device
        echo ok > planted/plain && echo plain-file";
    let o = m.podman(&[
        "run",
        "--rm",
        "-v",
        &vol,
        "localhost/attacker",
        "sh",
        "-c",
        script,
    ]);
    assert!(o.status.success(), "podman run -v: {}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "plain-file",
        "what the container got through the share (only a plain file may be made): {}",
        text(&o)
    );
    // The host is as it was; what the guest made is the user's, without privilege.
    assert_eq!(
        common::sha256_file(&kernel),
        kernel_digest,
        "the cached kernel"
    );
    let disk_after = std::fs::metadata(&disk).unwrap();
    assert_eq!(
        (disk_after.len(), disk_after.modified().unwrap()),
        (disk_before.len(), disk_before.modified().unwrap()),
        "the other machine's disk"
    );
    assert!(!images.join("planted").exists() && share.join("machines").is_dir());
    use std::os::unix::fs::MetadataExt;
    let planted = share.join("planted");
    let uid = rustix::process::getuid().as_raw();
    for f in std::fs::read_dir(&planted).unwrap().flatten() {
        let meta = f.metadata().unwrap();
        assert!(
            meta.file_type().is_file() && meta.mode() & 0o6000 == 0 && meta.uid() == uid,
            "{}: mode {:o}, owner {}",
            f.path().display(),
            meta.mode(),
            meta.uid()
        );
    }
}
