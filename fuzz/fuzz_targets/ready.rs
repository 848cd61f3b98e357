//! The guest's Ready line (`vmm::ready::ReadyChannel::wait`), through the real unix socket: the
//! input is what the guest writes, then a `Ready` line of the fuzzer's own so that every run
//! ends; the key returned must be the first `Ready` line's, as an independent reading says (a
//! line over `MAX_LINE` bytes, its newline included, is never the signal).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::Duration;
use vmm::ready::{MAX_LINE, ReadyChannel, ReadyError};

const SENTINEL: &str = "fuzz-sentinel";
/// The socket buffers all of it before the channel reads (the write would block beyond).
const MAX_INPUT: usize = 64 * 1024;

static CHANNEL: LazyLock<(tempfile::TempDir, ReadyChannel, PathBuf)> = LazyLock::new(|| {
    let dir = carbon_vm_fuzz::scratch();
    let socket = dir.path().join("ready.sock");
    let channel = ReadyChannel::bind(&socket).expect("binding the Ready socket");
    (dir, channel, socket)
});

#[derive(Debug, PartialEq)]
enum Seen {
    Key(String),
    NoHostKey,
}

/// The first complete line that is a Ready signal, read independently of `vmm::ready`.
fn expected(stream: &[u8]) -> Seen {
    for line in stream.split_inclusive(|&b| b == b'\n') {
        if !line.ends_with(b"\n") {
            break;
        }
        if line.len() > MAX_LINE {
            continue;
        }
        let line = String::from_utf8_lossy(line);
        let line = line.trim();
        if line == "Ready" {
            return Seen::NoHostKey;
        }
        if let Some(key) = line.strip_prefix("Ready ") {
            let key = key.trim();
            return if key.is_empty() {
                Seen::NoHostKey
            } else {
                Seen::Key(key.to_owned())
            };
        }
    }
    unreachable!("the sentinel line ends every stream")
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_INPUT {
        return;
    }
    let (_, channel, socket) = &*CHANNEL;
    let mut stream = data.to_vec();
    stream.extend_from_slice(format!("\nReady {SENTINEL}\n").as_bytes());
    let mut guest = UnixStream::connect(socket).expect("connecting to the Ready socket");
    guest.write_all(&stream).expect("writing the guest's lines");
    guest
        .shutdown(std::net::Shutdown::Write)
        .expect("closing the guest's side");
    let got = match channel.wait(Duration::from_secs(30), || Ok::<_, Never>(())) {
        Ok(key) => Seen::Key(key),
        Err(ReadyError::NoHostKey) => Seen::NoHostKey,
        Err(e) => panic!("the Ready channel failed: {e}"),
    };
    assert_eq!(got, expected(&stream));
});
