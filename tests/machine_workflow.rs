//! The everyday workflow, end to end on one QEMU (TCG) machine with real virtiofsd, gvproxy,
//! podman, docker and compose: host folders reach containers through `-v` both ways (the home
//! directory at its own path, a folder at a path of its own); a container's `-p` reaches the host
//! (on 127.0.0.1 unless the user names a host IP) and stops reaching it when the container stops;
//! a taken host port fails the container's start with gvproxy's reason and leaves the machine
//! working; UDP too; the docker CLI and compose publish and bind-mount the same way; containers
//! reach the host's own services at host.containers.internal and host.docker.internal. Folders
//! that do not exist, or are gone by `start`, are refused with the path named. A full guest disk
//! fails a pull at once, saying so.

mod common;

use common::net::{listeners, loopback};

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

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

/// Publishes a container's port (`publish`, given the host port) on a port the OS just handed
/// out. Another test's process may take it before gvproxy binds it: the container's start then
/// fails with "address already in use", `clear` removes what that left, and another port is
/// tried (a few times). Any other failure fails the test. Returns the port published.
fn published(what: &str, mut publish: impl FnMut(u16) -> Output, mut clear: impl FnMut()) -> u16 {
    const TRIES: usize = 5;
    for _ in 0..TRIES {
        let port = common::servers::free_port();
        let o = publish(port);
        if o.status.success() {
            return port;
        }
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("address already in use"),
            "{what}: {}\n{err}",
            o.status
        );
        eprintln!("{what}: port {port} was taken before gvproxy bound it; another");
        clear();
    }
    panic!("{what}: {TRIES} ports in a row were taken before gvproxy bound them")
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
fn folders_ports_and_clients_work_as_with_podman_machine() {
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
    // The user's home (shared by default, at its own path) and a project shared as /work, named
    // relative to the current directory as `-v .:/work` users do.
    let home = env.home.path().join("home");
    let www = home.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "hello-from-a-host-folder\n").unwrap();
    let project = tempfile::tempdir().unwrap();
    std::fs::write(project.path().join("a.txt"), "in-the-project").unwrap();
    let home_s = home.to_str().unwrap();
    let dflt = env
        .cmd()
        .env("HOME", &home)
        .args(["--json", "create", "dflt", "--memory", "2048"])
        .assert()
        .success();
    let dflt: serde_json::Value = serde_json::from_slice(&dflt.get_output().stdout).unwrap();
    assert_eq!(
        dflt["volumes"],
        serde_json::json!([{"host": home_s, "guest": home_s}]),
        "the home directory is shared at its own path by default"
    );
    env.cmd().args(["rm", "dflt"]).assert().success();
    env.cmd()
        .current_dir(project.path())
        .args(["create", "dev", "--memory", "2048", "--disk-size", "8"])
        .args(["--volume", home_s, "--volume", ".:/work"])
        .assert()
        .success();
    folders_refused_with_the_path_named(&env);
    env.cmd().args(["start", "dev"]).assert().success();

    // Host folders, both ways: a host file read in a container, a container's file on the host,
    // owned by the user who runs the machine.
    std::fs::write(home.join("from-host.txt"), "written-on-the-host").unwrap();
    let read = ok(
        &podman(&[
            "run",
            "--rm",
            "-v",
            &format!("{home_s}:/x"),
            "localhost/carbon-venus:latest",
            "sh",
            "-c",
            "cat /x/from-host.txt && echo written-in-a-container > /x/from-container.txt",
        ]),
        "podman run -v HOME:/x",
    );
    assert_eq!(read, "written-on-the-host");
    let written = home.join("from-container.txt");
    assert_eq!(
        std::fs::read_to_string(&written).unwrap(),
        "written-in-a-container\n"
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(&written).unwrap().uid(),
        std::fs::metadata(env.home.path()).unwrap().uid(),
        "the container's file belongs to the machine's user"
    );
    let read = ok(
        &podman(&[
            "run",
            "--rm",
            "-v",
            "/work:/w:ro",
            "localhost/carbon-venus:latest",
            "cat",
            "/w/a.txt",
        ]),
        "podman run -v /work:/w",
    );
    assert_eq!(read, "in-the-project");

    // A web server: busybox's httpd.
    let ctx = common::busybox_image_context(
        "RUN mkdir /www && echo hello-from-a-container > /www/index.html\n",
    );
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
    let serve = |name: &str, publish: &str| podman(&web_server(name, publish));
    let clear = |name: &str| {
        podman(&["rm", "-f", "-t", "0", name]);
    };
    // `-p PORT:80`: the host's 127.0.0.1 answers, nothing else listens; stopping closes it.
    let port = published(
        "podman run -p",
        |port| serve("web", &format!("{port}:80")),
        || clear("web"),
    );
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
    // Podman restarting the container opens the port again.
    ok(&podman(&["restart", "-t", "0", "web"]), "podman restart");
    eventually(
        Duration::from_secs(60),
        "the published port answers after a restart",
        || http_get(&addr).is_some_and(|a| a.contains("hello-from-a-container")),
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
    let port = published(
        "podman run -p IP:..",
        |port| serve("named", &format!("127.0.0.2:{port}:80")),
        || clear("named"),
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
    let port = published(
        "podman run -p ../udp",
        |port| {
            podman(&[
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
            ])
        },
        || clear("udp"),
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

    // The docker CLI, by the context `start` registered, and compose v2, pointed at the machine by
    // `carbon-vm env` as a shell evaluates it, publish the same way.
    let docker_host = env.json(&["env", "dev"])["DOCKER_HOST"]
        .as_str()
        .unwrap()
        .to_owned();
    let evaluated = Command::new("sh")
        .arg("-c")
        .arg(r#"eval "$("$0" env dev)" && printf %s "$DOCKER_HOST""#)
        .arg(assert_cmd::cargo::cargo_bin("carbon-vm"))
        .env("CARBON_VM_HOME", env.home.path())
        .output()
        .unwrap();
    assert_eq!(ok(&evaluated, "eval carbon-vm env"), docker_host);
    let docker = |program: &str, args: &[&str]| {
        let mut c = Command::new(program);
        c.env("DOCKER_CONFIG", env.docker_config());
        if program == "docker" {
            c.args(["--context", "dev"]);
        } else {
            c.env("DOCKER_HOST", &docker_host);
        }
        c.args(args)
            .output()
            .unwrap_or_else(|e| panic!("{program} (scripts/install-deps installs it): {e}"))
    };
    // Each serves the host folder's page over its own: a published port and a bind mount at once.
    let mount = format!("{}:/www:ro", www.display());
    let port = published(
        "docker run -p -v",
        |port| {
            let publish = format!("{port}:80");
            let mut run = web_server("by-docker", &publish).to_vec();
            run.splice(2..2, ["-v", mount.as_str()]);
            docker("docker", &run)
        },
        || {
            docker("docker", &["rm", "-f", "by-docker"]);
        },
    );
    let addr = format!("127.0.0.1:{port}");
    eventually(
        Duration::from_secs(60),
        "docker's published port serves the host folder",
        || http_get(&addr).is_some_and(|a| a.contains("hello-from-a-host-folder")),
    );
    ok(
        &docker("docker", &["rm", "-f", "by-docker"]),
        "docker rm -f",
    );
    // Attached runs: the docker CLI half-closes its side of the attach connection (at once
    // without -i, at the end of its input with it), and the output must still come back.
    let o = docker(
        "docker",
        &["run", "--rm", "localhost/web", "echo", "attached-output"],
    );
    assert_eq!(ok(&o, "docker run (attached)").trim(), "attached-output");
    // Bounded: a lost half-close leaves cat waiting for the end of its input.
    let mut cat = Command::new("timeout")
        .args(["120", "docker", "--context", "dev", "run", "--rm", "-i"])
        .args(["localhost/web", "cat"])
        .env("DOCKER_CONFIG", env.docker_config())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    cat.stdin
        .take()
        .unwrap()
        .write_all(b"from-stdin\n")
        .unwrap();
    let o = cat.wait_with_output().unwrap();
    assert_eq!(
        ok(&o, "docker run -i (stdin to its end)").trim(),
        "from-stdin"
    );
    // A compose project in the home directory, its bind mount relative to it (compose makes it
    // absolute on the host: the same path in the guest).
    let compose = home.join("compose.yaml");
    let compose = compose.to_str().unwrap();
    let port = published(
        "compose up",
        |port| {
            std::fs::write(
                compose,
                format!(
                    "services:\n  web:\n    image: localhost/web\n    command: busybox httpd -f -p 80 -h /www\n    \
                     ports: [\"{port}:80\"]\n    volumes: [\"./www:/www:ro\"]\n"
                ),
            )
            .unwrap();
            docker("docker-compose", &["-f", compose, "up", "-d"])
        },
        || {
            docker("docker-compose", &["-f", compose, "down", "-t", "0"]);
        },
    );
    let addr = format!("127.0.0.1:{port}");
    eventually(
        Duration::from_secs(60),
        "compose's published port serves the host folder",
        || http_get(&addr).is_some_and(|a| a.contains("hello-from-a-host-folder")),
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
    // Polled to a deadline: containers that never connect fail the test instead of holding it.
    host.set_nonblocking(true).unwrap();
    let server = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(600);
        for _ in 0..2 {
            let mut c = loop {
                match host.accept() {
                    Ok((c, _)) => break c,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        assert!(
                            Instant::now() < deadline,
                            "no container reached the host's service within 10 minutes"
                        );
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            };
            c.set_nonblocking(false).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
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

    // A full guest disk: a pull fails at once saying so (no stuck pull), and works once there is
    // room again. The image comes from a registry on the host's loopback, pushed by the guest.
    let registry = common::servers::registry();
    let blob = format!("host.containers.internal:{}/blob:1", registry.port);
    let guest = |script: &str| {
        env.process()
            .args(["ssh", "dev", "--", script])
            .output()
            .unwrap()
    };
    ok(
        &guest(&format!(
            "mkdir -p /tmp/blob && head -c 4000000 /dev/urandom >/tmp/blob/b && \
             printf 'FROM scratch\\nCOPY b /b\\n' >/tmp/blob/Containerfile && \
             podman build -q -t localhost/blob /tmp/blob && \
             podman push -q --tls-verify=false localhost/blob {blob} && podman rmi localhost/blob"
        )),
        "an image pushed to the host's registry",
    );
    // fallocate stops at ENOSPC, leaving ext4's last few blocks.
    ok(
        &guest(
            "fallocate -l $(($(stat -f -c '%f*%S' /))) /var/fill; [ $(stat -f -c %f /) -lt 8192 ]",
        ),
        "the guest's disk filled",
    );
    let o = podman(&["pull", "--tls-verify=false", &blob]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("no space left on device"),
        "{err}"
    );
    ok(&guest("rm /var/fill"), "room made");
    ok(
        &podman(&["pull", "-q", "--tls-verify=false", &blob]),
        "pull",
    );

    env.cmd().args(["rm", "--force", "dev"]).assert().success();
    let o = Command::new("docker")
        .env("DOCKER_CONFIG", env.docker_config())
        .args(["context", "inspect", "dev"])
        .output()
        .unwrap();
    assert!(!o.status.success(), "rm removes the docker context");
}

/// Bad folders get a usage error naming them and leave no machine; a folder removed after
/// `create` fails that machine's `start` before anything runs.
fn folders_refused_with_the_path_named(env: &common::Env) {
    let gone = tempfile::tempdir().unwrap();
    let missing = gone.path().join("missing");
    for (arg, says) in [
        (missing.to_str().unwrap().to_owned(), "No such file"),
        (format!("{}:/etc", gone.path().display()), "/etc"),
    ] {
        let o = env
            .process()
            .args(["create", "bad", "-v", &arg])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "--volume {arg}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(says), "--volume {arg}: {err}");
    }
    env.cmd()
        .args(["create", "gone", "--memory", "2048", "-v"])
        .arg(gone.path())
        .assert()
        .success();
    let path = gone.path().to_owned();
    drop(gone);
    let o = env.process().args(["start", "gone"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains(path.to_str().unwrap()),
        "{err}"
    );
    let list = env.json(&["list"]);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["dev", "gone"], "no machine named bad");
    assert_eq!(list[1]["state"], "stopped");
    env.cmd().args(["rm", "gone"]).assert().success();
}
