//! Published ports and host services, end to end on QEMU (TCG) with real gvproxy and podman: a
//! container's `-p` reaches the host (on 127.0.0.1 unless the user names a host IP) and stops
//! reaching it when the container stops; a taken host port fails the container's start with
//! gvproxy's reason and leaves the machine working; UDP too; the docker CLI and compose publish the
//! same way; containers reach the host's own services at host.containers.internal and
//! host.docker.internal.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Listening sockets for `port` in /proc/net/{proto}{,6}: each one's address, as /proc spells it
/// (hex), so that "127.0.0.1 only" and "nowhere" can both be asserted.
fn listeners(proto: &str, port: u16) -> Vec<String> {
    let mut out = Vec::new();
    for file in [proto.to_owned(), format!("{proto}6")] {
        let text = std::fs::read_to_string(format!("/proc/net/{file}")).unwrap();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (addr, p) = f[1].split_once(':').unwrap();
            // TCP lists listeners in state 0A; UDP's bound sockets are 07.
            let listening = if proto == "tcp" {
                f[3] == "0A"
            } else {
                f[3] == "07"
            };
            if listening && u16::from_str_radix(p, 16).unwrap() == port {
                out.push(format!("{file}:{addr}"));
            }
        }
    }
    out
}

/// How [`listeners`] spells a `proto` socket on 127.0.0.x (/proc's little-endian hex).
fn loopback(proto: &str, last: u8) -> String {
    let ip = u32::from_le_bytes(Ipv4Addr::new(127, 0, 0, last).octets());
    format!("{proto}:{ip:08X}")
}

/// Polls `cond` until it holds, at most `limit`: a port opens or closes asynchronously (the
/// container's server starts listening; Podman's cleanup closes the port after `stop` returns).
fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `run` arguments (podman's and docker's alike) for a detached web server container publishing
/// its port 80 as `publish`.
fn web_server<'a>(name: &'a str, publish: &'a str) -> [&'a str; 14] {
    [
        "run",
        "-d",
        "--name",
        name,
        "-p",
        publish,
        "localhost/web",
        "busybox",
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]
}

fn http_get(addr: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    Some(answer)
}

fn ok(o: &Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what}: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn published_ports_reach_the_host_on_loopback_and_containers_reach_host_services() {
    let Some(image) = common::default_image() else {
        return;
    };
    let env = common::Env::new();
    let xdg = env.home.path().join("xdg");
    let podman = |args: &[&str]| {
        Command::new("podman")
            .env("CONTAINERS_CONF", common::podman_conf(&xdg))
            .args(["-c", "dev"])
            .args(args)
            .output()
            .unwrap()
    };
    env.pull(image.to_str().unwrap(), Some(&common::sha256_file(&image)));
    env.cmd()
        .args(["create", "dev", "--memory", "2048", "--disk-size", "8"])
        .assert()
        .success();
    env.cmd().args(["start", "dev"]).assert().success();

    // A web server: the bundled image plus the host's static busybox (scripts/install-deps).
    let ctx = tempfile::tempdir().unwrap();
    std::fs::copy("/bin/busybox", ctx.path().join("busybox")).expect("busybox-static");
    std::fs::write(
        ctx.path().join("Containerfile"),
        "FROM localhost/carbon-venus:latest\nCOPY busybox /bin/busybox\n\
         RUN mkdir /www && echo hello-from-a-container > /www/index.html\n",
    )
    .unwrap();
    ok(
        &podman(&[
            "build",
            "-q",
            "-t",
            "localhost/web",
            ctx.path().to_str().unwrap(),
        ]),
        "podman build",
    );
    let free_port = || {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let serve = |name: &str, publish: &str| podman(&web_server(name, publish));
    // `-p PORT:80`: the host's 127.0.0.1 answers, nothing else listens; stopping closes it.
    let port = free_port();
    ok(&serve("web", &format!("{port}:80")), "podman run -p");
    let addr = format!("127.0.0.1:{port}");
    eventually(
        Duration::from_secs(60),
        "the published port answers",
        || http_get(&addr).is_some_and(|a| a.contains("hello-from-a-container")),
    );
    assert_eq!(
        listeners("tcp", port),
        [loopback("tcp", 1)],
        "on loopback only"
    );
    ok(&podman(&["stop", "-t", "0", "web"]), "podman stop");
    eventually(
        Duration::from_secs(60),
        "the port closes after stop",
        || listeners("tcp", port).is_empty(),
    );
    assert!(
        http_get(&addr).is_none(),
        "a stopped container still answers"
    );

    // A host IP named by the user is the one used.
    let port = free_port();
    ok(
        &serve("named", &format!("127.0.0.2:{port}:80")),
        "podman run -p IP:..",
    );
    assert_eq!(listeners("tcp", port), [loopback("tcp", 2)]);
    ok(&podman(&["rm", "-f", "-t", "0", "named"]), "podman rm -f");
    eventually(Duration::from_secs(60), "the port closes after rm", || {
        listeners("tcp", port).is_empty()
    });

    // A host port already taken: the start fails saying so, and the machine keeps working.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let o = serve("clash", &format!("{port}:80"));
    assert!(!o.status.success(), "a taken port was skipped silently");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("address already in use"), "{err}");
    ok(&podman(&["ps"]), "podman ps after a refused port");

    // UDP: opened on loopback for the container's life.
    let port = free_port();
    ok(
        &podman(&[
            "run",
            "-d",
            "--name",
            "udp",
            "-p",
            &format!("{port}:5353/udp"),
            "localhost/web",
            "busybox",
            "sleep",
            "600",
        ]),
        "podman run -p ../udp",
    );
    assert_eq!(
        listeners("udp", port),
        [loopback("udp", 1)],
        "UDP on loopback"
    );
    ok(&podman(&["rm", "-f", "-t", "0", "udp"]), "podman rm -f");
    eventually(Duration::from_secs(60), "the UDP port closes", || {
        listeners("udp", port).is_empty()
    });

    // The docker CLI and compose v2, pointed at the machine by `carbon-vm env`, publish the same way.
    let docker_host = env.json(&["env", "dev"])["DOCKER_HOST"]
        .as_str()
        .unwrap()
        .to_owned();
    let docker = |program: &str, args: &[&str]| {
        Command::new(program)
            .env("DOCKER_HOST", &docker_host)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{program} (scripts/install-deps installs it): {e}"))
    };
    let port = free_port();
    ok(
        &docker("docker", &web_server("by-docker", &format!("{port}:80"))),
        "docker run -p",
    );
    let addr = format!("127.0.0.1:{port}");
    eventually(
        Duration::from_secs(60),
        "docker's published port answers",
        || http_get(&addr).is_some_and(|a| a.contains("hello-from-a-container")),
    );
    ok(
        &docker("docker", &["rm", "-f", "by-docker"]),
        "docker rm -f",
    );
    let port = free_port();
    let project = tempfile::tempdir().unwrap();
    let compose = project.path().join("compose.yaml");
    std::fs::write(
        &compose,
        format!(
            "services:\n  web:\n    image: localhost/web\n    command: busybox httpd -f -p 80 -h /www\n    \
             ports: [\"{port}:80\"]\n"
        ),
    )
    .unwrap();
    let compose = compose.to_str().unwrap();
    ok(
        &docker("docker-compose", &["-f", compose, "up", "-d"]),
        "compose up",
    );
    let addr = format!("127.0.0.1:{port}");
    eventually(
        Duration::from_secs(60),
        "compose's published port answers",
        || http_get(&addr).is_some_and(|a| a.contains("hello-from-a-container")),
    );
    assert_eq!(listeners("tcp", port), [loopback("tcp", 1)]);
    ok(
        &docker("docker-compose", &["-f", compose, "down", "-t", "0"]),
        "compose down",
    );
    eventually(
        Duration::from_secs(60),
        "compose's port closes after down",
        || listeners("tcp", port).is_empty(),
    );

    // The host's own service, listening on its loopback, from a container by both names.
    let host = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = host.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        for _ in 0..2 {
            let (mut c, _) = host.accept().unwrap();
            let mut buf = [0; 1024];
            let _ = c.read(&mut buf).unwrap();
            c.write_all(b"HTTP/1.0 200 OK\r\n\r\nhello-from-the-host")
                .unwrap();
        }
    });
    for name in ["host.containers.internal", "host.docker.internal"] {
        let answer = ok(
            &podman(&[
                "run",
                "--rm",
                "localhost/web",
                "busybox",
                "wget",
                "-qO-",
                &format!("http://{name}:{port}/"),
            ]),
            name,
        );
        assert_eq!(answer.trim(), "hello-from-the-host", "{name}");
    }
    server.join().unwrap();

    env.cmd().args(["rm", "--force", "dev"]).assert().success();
}
