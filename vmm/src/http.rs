//! One HTTP/1.1 request per connection on a local stream (a unix socket or loopback TCP), for the
//! small control APIs carbon-vm talks to: krunkit's REST API, gvproxy's forwarder, Podman's
//! `_ping`. The request goes out in a single write (pre-1.3 krunkit reads it with one read) and
//! the answer is read to the end (every server here closes the connection after it); httparse
//! reads the head. The workspace's hyper would need an async runtime for one local request.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// An answer: its status and its body (cut to its Content-Length when it has one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A request as one buffer; a body is sent as JSON.
pub fn request(method: &str, path: &str, body: Option<&str>) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some(b) = body {
        r.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        ));
    } else {
        r.push_str("\r\n");
    }
    r.into_bytes()
}

/// Sends `req` and reads the raw answer until the server closes the connection.
pub fn exchange(mut s: impl Read + Write, req: &[u8]) -> io::Result<Vec<u8>> {
    s.write_all(req)?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)?;
    Ok(answer)
}

/// [`exchange`] on a unix socket, each read and write bounded by `timeout`; `None` when the
/// answer is not HTTP.
pub fn unix(socket: &Path, req: &[u8], timeout: Duration) -> io::Result<Option<Response>> {
    let s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    Ok(parse(&exchange(s, req)?))
}

/// Parses a complete answer; `None` when its head is not HTTP or its body is shorter than its
/// Content-Length.
pub fn parse(raw: &[u8]) -> Option<Response> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return None,
    };
    let length = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| {
            std::str::from_utf8(h.value)
                .ok()?
                .trim()
                .parse::<usize>()
                .ok()
        });
    let rest = &raw[head_len..];
    let body = match length {
        Some(n) => rest.get(..n)?,
        None => rest,
    };
    Some(Response {
        status: resp.code?,
        body: body.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_buffer_with_a_json_body() {
        let r = String::from_utf8(request("POST", "/a", Some("{\"x\":1}"))).unwrap();
        assert!(r.starts_with("POST /a HTTP/1.1\r\n"));
        assert!(r.ends_with("Content-Length: 7\r\n\r\n{\"x\":1}"));
        let g = String::from_utf8(request("GET", "/_ping", None)).unwrap();
        assert!(g.starts_with("GET /_ping HTTP/1.1\r\n") && g.ends_with("\r\n\r\n"));
    }

    #[test]
    fn answers_are_cut_to_their_length_and_checked() {
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOKjunk").unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "OK"));
        let r = parse(b"HTTP/1.0 500 Internal Server Error\r\n\r\nno").unwrap();
        assert_eq!((r.status, r.text().as_str()), (500, "no"));
        assert_eq!(parse(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n{}"),
            None
        );
    }

    #[test]
    fn a_unix_exchange_reads_to_the_close() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s.sock");
        let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut buf = [0u8; 256];
            let n = c.read(&mut buf).unwrap();
            assert!(buf[..n].starts_with(b"GET /_ping "));
            c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")
                .unwrap();
        });
        let r = unix(
            &sock,
            &request("GET", "/_ping", None),
            Duration::from_secs(5),
        )
        .unwrap()
        .unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "OK"));
        server.join().unwrap();
    }
}
