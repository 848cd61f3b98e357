//! krunkit's `connect`-mode vsock devices: the host connects to a unix socket krunkit listens on
//! and reaches the guest's listener on the device's port. Here each connection goes through
//! vhost-device-vsock's hybrid-vsock handshake (`CONNECT <port>\n`, answered `OK <port>\n`),
//! then bytes flow both ways until either side closes.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

/// Serves each listener in the background; `uds` is vhost-device-vsock's host socket.
pub fn relay_connect_mode(listeners: Vec<(u32, UnixListener)>, uds: PathBuf) {
    for (port, l) in listeners {
        let uds = uds.clone();
        std::thread::spawn(move || {
            for host in l.incoming().flatten() {
                let uds = uds.clone();
                std::thread::spawn(move || {
                    if let Ok(guest) = connect(&uds, port) {
                        splice(host, guest);
                    }
                });
            }
        });
    }
}

/// A stream to the guest's `port`, once vhost-device-vsock said OK. The answer is read a byte
/// at a time: what the guest sends right after must stay in the stream.
fn connect(uds: &PathBuf, port: u32) -> std::io::Result<UnixStream> {
    let mut s = UnixStream::connect(uds)?;
    writeln!(s, "CONNECT {port}")?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while b[0] != b'\n' {
        if s.read(&mut b)? == 0 {
            return Err(std::io::ErrorKind::ConnectionRefused.into());
        }
        line.push(b[0]);
    }
    if line.starts_with(b"OK ") {
        Ok(s)
    } else {
        Err(std::io::ErrorKind::ConnectionRefused.into())
    }
}

fn splice(a: UnixStream, b: UnixStream) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let one = std::thread::spawn(move || copy_then_close(a, b2));
    copy_then_close(b, a2);
    let _ = one.join();
}

fn copy_then_close(mut from: UnixStream, mut to: UnixStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}
