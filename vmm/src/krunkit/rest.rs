//! krunkit's REST API (`--restful-uri unix://PATH`): `GET /vm/state` and `POST /vm/state`.
//!
//! Two wire protocols exist (krunkit src/status.rs):
//! - 1.3 and later parse the request and answer with a Content-Length and a JSON body
//!   `{"state":"VirtualMachineStateRunning","canStart":false,...,"canStop":true,"canHardStop":true}`;
//!   `POST {"state":"Stop"}` and `{"state":"HardStop"}` answer `VirtualMachineStateStopping`.
//! - Earlier versions answer fixed strings without Content-Length, terminated by a NUL byte:
//!   `{"state": "VirtualMachineStateRunning"}\0` to anything, or
//!   `{"state": "VirtualMachineStateStopping"}\0` to any request containing "POST" (every POST
//!   stops the VM).
//!
//! Both versions serve one request per connection and close it, and both read the request with
//! a single read, so it is sent with a single write. A missing socket or a refused connection
//! means no krunkit is serving it: the VM is gone.
//!
//! krunkit serves either a unix socket or a TCP port ([`Endpoint`]).
//!
//! The exchange is crate::http's.

use crate::http;
use serde::Deserialize;
use std::io;
use std::net::{Ipv4Addr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

const PATH: &str = "/vm/state";
const IO_TIMEOUT: Duration = Duration::from_secs(5);

pub const RUNNING: &str = "VirtualMachineStateRunning";
pub const STOPPING: &str = "VirtualMachineStateStopping";

/// Where krunkit serves its REST API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A unix socket (in the machine's private runtime directory): only its user reaches it.
    Unix(PathBuf),
    /// `127.0.0.1:PORT`, for Podman, which talks to krunkit over HTTP on TCP only. Any local
    /// user can reach it, and so stop the VM.
    Loopback(u16),
}

impl Endpoint {
    /// krunkit's `--restful-uri` value.
    pub fn uri(&self) -> String {
        match self {
            Endpoint::Unix(p) => format!("unix://{}", p.display()),
            Endpoint::Loopback(port) => format!("tcp://{}:{port}", Ipv4Addr::LOCALHOST),
        }
    }
}

/// The state krunkit reports, e.g. [`RUNNING`] or [`STOPPING`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct VmState {
    pub state: String,
    /// Absent from pre-1.3 answers.
    #[serde(rename = "canStop")]
    pub can_stop: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateChange {
    /// Asks the guest to shut down.
    Stop,
    HardStop,
}

impl StateChange {
    fn name(self) -> &'static str {
        match self {
            StateChange::Stop => "Stop",
            StateChange::HardStop => "HardStop",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RestError {
    #[error("krunkit is not serving its REST API (the VM is gone)")]
    Gone,
    #[error("cannot talk to krunkit's REST API")]
    Io(#[source] io::Error),
    #[error("krunkit answered HTTP {0}: {1}")]
    Status(u16, String),
    #[error("krunkit's answer is not its REST protocol: {0:?}")]
    Protocol(String),
}

impl From<io::Error> for RestError {
    fn from(e: io::Error) -> Self {
        use io::ErrorKind::*;
        match e.kind() {
            NotFound | ConnectionRefused | ConnectionReset => RestError::Gone,
            _ => RestError::Io(e),
        }
    }
}

pub fn get_state(at: &Endpoint) -> Result<VmState, RestError> {
    exchange(at, &request("GET", None))
}

pub fn change_state(at: &Endpoint, change: StateChange) -> Result<VmState, RestError> {
    let body = serde_json::json!({ "state": change.name() }).to_string();
    exchange(at, &request("POST", Some(&body)))
}

fn request(method: &str, body: Option<&str>) -> Vec<u8> {
    http::request(method, PATH, body)
}

fn exchange(at: &Endpoint, req: &[u8]) -> Result<VmState, RestError> {
    match at {
        Endpoint::Unix(path) => {
            let s = UnixStream::connect(path)?;
            s.set_read_timeout(Some(IO_TIMEOUT))
                .map_err(RestError::Io)?;
            s.set_write_timeout(Some(IO_TIMEOUT))
                .map_err(RestError::Io)?;
            talk(s, req)
        }
        Endpoint::Loopback(port) => {
            let addr = (Ipv4Addr::LOCALHOST, *port).into();
            let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
            s.set_read_timeout(Some(IO_TIMEOUT))
                .map_err(RestError::Io)?;
            s.set_write_timeout(Some(IO_TIMEOUT))
                .map_err(RestError::Io)?;
            talk(s, req)
        }
    }
}

fn talk(s: impl io::Read + io::Write, req: &[u8]) -> Result<VmState, RestError> {
    let answer = http::exchange(s, req)?;
    if answer.is_empty() {
        // Closed without a word: krunkit is exiting.
        return Err(RestError::Gone);
    }
    parse_response(&answer)
}

/// Parses either protocol's answer.
pub fn parse_response(raw: &[u8]) -> Result<VmState, RestError> {
    let text = || String::from_utf8_lossy(raw).into_owned();
    let answer = http::parse(raw).ok_or_else(|| RestError::Protocol(text()))?;
    // Pre-1.3 answers end with a NUL byte.
    let body = answer.text();
    let body = body.trim_end_matches(['\0', '\r', '\n', ' ']);
    if answer.status != 200 {
        return Err(RestError::Status(answer.status, body.to_owned()));
    }
    serde_json::from_str(body).map_err(|_| RestError::Protocol(text()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_protocol() {
        let body = "{\"state\":\"VirtualMachineStateRunning\",\"canStart\":false,\
            \"canPause\":false,\"canResume\":false,\"canStop\":true,\"canHardStop\":true}";
        let raw = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let s = parse_response(raw.as_bytes()).unwrap();
        assert_eq!(s.state, RUNNING);
        assert_eq!(s.can_stop, Some(true));
    }

    #[test]
    fn pre_1_3_fixed_strings() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-type: application/json\r\n\r\n\
            {\"state\": \"VirtualMachineStateStopping\"}\0";
        let s = parse_response(raw).unwrap();
        assert_eq!(s.state, STOPPING);
        assert_eq!(s.can_stop, None);
    }

    #[test]
    fn errors_carry_the_status_and_body() {
        let body = "{\"error\":\"unsupported state change: Pause\"}";
        let raw = format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        match parse_response(raw.as_bytes()) {
            Err(RestError::Status(400, b)) => assert!(b.contains("unsupported"), "{b}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_response(b"SSH-2.0-OpenSSH\r\n"),
            Err(RestError::Protocol(_))
        ));
        // A truncated body is not a state.
        assert!(matches!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n{}"),
            Err(RestError::Protocol(_))
        ));
    }

    #[test]
    fn requests_are_one_buffer_with_a_json_body() {
        let r = String::from_utf8(request("POST", Some("{\"state\":\"HardStop\"}"))).unwrap();
        assert!(r.starts_with("POST /vm/state HTTP/1.1\r\n"));
        assert!(r.ends_with("Content-Length: 20\r\n\r\n{\"state\":\"HardStop\"}"));
        let g = String::from_utf8(request("GET", None)).unwrap();
        assert!(g.starts_with("GET /vm/state HTTP/1.1\r\n") && g.ends_with("\r\n\r\n"));
        assert!(
            !g.contains("POST"),
            "pre-1.3 krunkit stops on any request containing POST"
        );
    }

    #[test]
    fn a_missing_or_dead_socket_means_gone() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("rest.sock");
        let at = Endpoint::Unix(sock.clone());
        assert!(matches!(get_state(&at), Err(RestError::Gone)));
        // A socket file left by a dead krunkit: nobody listens.
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        assert!(sock.exists());
        assert!(matches!(get_state(&at), Err(RestError::Gone)));
    }

    #[test]
    fn a_port_nobody_listens_on_means_gone() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port(); // closed again at once
        assert!(matches!(
            get_state(&Endpoint::Loopback(port)),
            Err(RestError::Gone)
        ));
    }

    #[test]
    fn endpoints_as_krunkit_takes_them() {
        assert_eq!(
            Endpoint::Unix("/r/dev/rest.sock".into()).uri(),
            "unix:///r/dev/rest.sock"
        );
        assert_eq!(Endpoint::Loopback(50124).uri(), "tcp://127.0.0.1:50124");
    }
}
