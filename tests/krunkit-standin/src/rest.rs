//! krunkit's REST API (1.3 protocol, src/status): one request per connection, answered and
//! closed.

use crate::Event;
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;

#[derive(Clone)]
pub enum Uri {
    Tcp(String),
    Unix(String),
    None,
}

impl std::str::FromStr for Uri {
    type Err = String;

    fn from_str(s: &str) -> Result<Uri, String> {
        let (scheme, value) = s.split_once("://").ok_or("invalid scheme input")?;
        match scheme {
            "tcp" => {
                let (host, port) = value
                    .split_once(':')
                    .ok_or("restful URI formatted incorrectly")?;
                port.parse::<u16>()
                    .map_err(|_| "restful URI port number formatted incorrectly")?;
                let host = if host == "localhost" {
                    "127.0.0.1"
                } else {
                    host
                };
                Ok(Uri::Tcp(format!("{host}:{port}")))
            }
            "unix" if value.is_empty() => Err("empty unix socket path".into()),
            "unix" => Ok(Uri::Unix(value.to_owned())),
            "none" => Ok(Uri::None),
            _ => Err("invalid scheme input".into()),
        }
    }
}

impl Uri {
    /// What the stand-in would serve, as a URI.
    pub fn describe(&self) -> String {
        match self {
            Uri::Tcp(addr) => format!("tcp://{addr}"),
            Uri::Unix(path) => format!("unix://{path}"),
            Uri::None => "none://".into(),
        }
    }
}

/// Starts serving `uri` in the background; shutdown requests go to `tx`.
pub fn serve(uri: Uri, tx: Sender<Event>) -> Result<(), String> {
    match uri {
        Uri::None => {}
        Uri::Tcp(addr) => {
            let l = TcpListener::bind(&addr)
                .map_err(|e| format!("Unable to bind to TCP listener: {e}"))?;
            std::thread::spawn(move || {
                for s in l.incoming().flatten() {
                    handle(s, &tx);
                }
            });
        }
        Uri::Unix(path) => {
            // krunkit removes a stale REST socket itself (unlike its vsock sockets).
            let _ = std::fs::remove_file(&path);
            let l = UnixListener::bind(&path)
                .map_err(|e| format!("Unable to bind to unix socket: {e}"))?;
            std::thread::spawn(move || {
                for s in l.incoming().flatten() {
                    handle(s, &tx);
                }
            });
        }
    }
    Ok(())
}

static STOPPING: AtomicBool = AtomicBool::new(false);

fn state_body(state: &str, can_stop: bool) -> String {
    json!({
        "state": state,
        "canStart": false,
        "canPause": false,
        "canResume": false,
        "canStop": can_stop,
        "canHardStop": can_stop,
    })
    .to_string()
}

fn respond(s: &mut impl Write, status: &str, body: &str) {
    let _ = write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
}

/// Reads one request: its head, then as much body as its Content-Length says (a client may
/// send them in separate writes, as Go's does).
fn read_request(s: &mut impl Read) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return (!buf.is_empty()).then_some(buf);
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(head)) => {
                let len = content_length(req.headers);
                if buf.len() >= head + len {
                    return Some(buf);
                }
            }
            Ok(httparse::Status::Partial) if buf.len() < 65536 => {}
            _ => return Some(buf),
        }
    }
}

fn content_length(headers: &[httparse::Header]) -> usize {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
        .unwrap_or(0)
}

fn handle(mut s: impl Read + Write, tx: &Sender<Event>) {
    let Some(buf) = read_request(&mut s) else {
        return;
    };
    let n = buf.len();
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(head)) = req.parse(&buf) else {
        return respond(&mut s, "400 Bad Request", "");
    };
    let path = req.path.unwrap_or_default();
    let path = path.split('?').next().unwrap_or_default();
    if path.strip_suffix('/').unwrap_or(path) != "/vm/state" {
        return respond(&mut s, "404 Not Found", "");
    }
    match req.method {
        Some("GET") => {
            let body = if STOPPING.load(Ordering::SeqCst) {
                state_body("VirtualMachineStateStopping", false)
            } else {
                state_body("VirtualMachineStateRunning", true)
            };
            respond(&mut s, "200 OK", &body);
        }
        Some("POST") => {
            let len = content_length(req.headers);
            let body = &buf[head..(head + len).min(n)];
            let state = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v["state"].as_str().map(str::to_owned));
            let change = match state.as_deref() {
                Some("Stop") => Event::Stop,
                Some("HardStop") => Event::HardStop,
                Some(other) => {
                    let e = json!({ "error": format!("unsupported state change: {other}") });
                    return respond(&mut s, "400 Bad Request", &e.to_string());
                }
                None => {
                    let e = json!({ "error": "missing or invalid 'state' field" });
                    return respond(&mut s, "400 Bad Request", &e.to_string());
                }
            };
            STOPPING.store(true, Ordering::SeqCst);
            respond(
                &mut s,
                "200 OK",
                &state_body("VirtualMachineStateStopping", false),
            );
            drop(s);
            let _ = tx.send(change);
        }
        _ => respond(&mut s, "405 Method Not Allowed", ""),
    }
}
