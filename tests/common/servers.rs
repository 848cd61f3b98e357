//! Real servers on loopback: nginx (static files, Range support) and Debian's docker-registry.
//! Each waits for its port to answer (bounded), and is killed on drop.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port the OS hands out: free now, not reserved. Whoever binds it later may find it taken
/// by another test's process meanwhile, and must try another ([`on_a_free_port`]).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How often a server is started on a fresh port after its port was taken.
const PORT_TRIES: usize = 5;

/// The header each test server adds to its answers, with a value of its own: an answer on its
/// port is then known to be its own, not another test's server's that took the port first.
const MARK: &str = "X-Carbon-Vm-Test";

/// Starts a server (`spawn`, on the port it is given, answering with [`MARK`]: `mark`) and waits
/// until `GET path` answers. A port taken between [`free_port`] and the server's bind (tests run
/// side by side) makes the server exit at start-up saying so in its `log`: then another port, a
/// few times. Any other exit fails.
fn on_a_free_port(
    what: &str,
    path: &str,
    mark: &str,
    log: &Path,
    mut spawn: impl FnMut(u16) -> Child,
) -> (Child, u16) {
    for _ in 0..PORT_TRIES {
        let port = free_port();
        let mut child = spawn(port);
        let Err(status) = wait_http(port, path, mark, &mut child, what) else {
            return (child, port);
        };
        let log = std::fs::read_to_string(log).unwrap_or_default();
        assert!(
            log.to_ascii_lowercase().contains("address already in use"),
            "{what} exited during start-up: {status}\n{log}"
        );
        eprintln!("{what}: port {port} was taken before it bound it; another");
    }
    panic!("{what}: {PORT_TRIES} ports in a row were taken before it bound them")
}

/// Polls `GET path` until the child answers (its `mark`), for at most 30 s; the child's status if
/// it exits first.
fn wait_http(
    port: u16,
    path: &str,
    mark: &str,
    child: &mut Child,
    what: &str,
) -> Result<(), ExitStatus> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Err(status);
        }
        // Bounded read: whoever holds a port taken from under the server may never answer.
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port))
            && s.set_read_timeout(Some(Duration::from_secs(1))).is_ok()
        {
            let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
            let mut answer = String::new();
            let _ = s.take(1 << 16).read_to_string(&mut answer);
            if answer.starts_with("HTTP/1.") && answer.contains(&format!("{MARK}: {mark}\r\n")) {
                return Ok(());
            }
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not answer on port {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// nginx serving `root` on 127.0.0.1.
pub fn nginx(root: &Path) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("nginx.conf");
    let log = dir.path().join("error.log");
    let mark = dir.path().file_name().unwrap().to_str().unwrap();
    let (child, port) = on_a_free_port("nginx", "/", mark, &log, |port| {
        std::fs::write(
            &conf,
            format!(
                "daemon off; master_process off; user root; worker_processes 1;\n\
                 pid {d}/nginx.pid; error_log {l};\n\
                 events {{ worker_connections 64; }}\n\
                 http {{ access_log off; sendfile on;\n\
                   client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};\n\
                   uwsgi_temp_path {d}; scgi_temp_path {d};\n\
                   server {{ listen 127.0.0.1:{port}; root {r};\n\
                     add_header {MARK} {mark} always; }} }}\n",
                d = dir.path().display(),
                l = log.display(),
                r = root.display()
            ),
        )
        .unwrap();
        Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("nginx is installed (scripts/install-deps)")
    });
    Server {
        child,
        port,
        _dir: dir,
    }
}

/// Debian's docker-registry (distribution) with filesystem storage on 127.0.0.1.
pub fn registry() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("config.yml");
    let log = dir.path().join("registry.log");
    let mark = dir.path().file_name().unwrap().to_str().unwrap();
    let (child, port) = on_a_free_port("docker-registry", "/v2/", mark, &log, |port| {
        std::fs::write(
            &conf,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}/data\n\
                 http:\n  addr: 127.0.0.1:{port}\n  headers:\n    {MARK}: [{mark}]\n",
                dir.path().display()
            ),
        )
        .unwrap();
        Command::new("docker-registry")
            .arg("serve")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("docker-registry is installed (scripts/install-deps)")
    });
    Server {
        child,
        port,
        _dir: dir,
    }
}
