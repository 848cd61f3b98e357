//! The guest's Ready signal, the same for every driver: the host listens on a unix socket before
//! the VMM starts (QEMU connects its virtio-serial port `carbon.ready` to it; krunkit connects it
//! when the guest connects to vsock port 1025 or 1026), and carbon-vm's guest writes
//! `Key <its SSH host key>` once sshd listens, then `Ready <its SSH host key>` once the Podman
//! API answers too. The key is pinned from this private channel, so SSH never trusts a key on
//! first use; a bare `Ready` (a guest that is not carbon-vm's) is refused. Lines are bounded
//! (`MAX_LINE`): a guest that writes without end cannot grow the host's memory while it is
//! awaited.

use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(50);
/// How often the VMM's liveness is asked while no line arrives.
const CHECK_EVERY: Duration = Duration::from_millis(500);
/// The longest line read, its newline included (an SSH host key line is a few hundred bytes); a
/// longer one is skipped to its end and is never the signal.
pub const MAX_LINE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ReadyError<E: std::error::Error + 'static> {
    #[error("the guest did not signal Ready within {0:?}")]
    Timeout(Duration),
    #[error("the guest said Ready without its SSH host key (is its image a carbon-vm guest?)")]
    NoHostKey,
    /// The caller's check ended the wait (the VMM or its network went away).
    #[error(transparent)]
    Stopped(E),
    #[error("the Ready channel failed")]
    Io(#[source] io::Error),
}

pub struct ReadyChannel {
    listener: UnixListener,
}

impl ReadyChannel {
    /// Listens on `socket` (which must not exist).
    pub fn bind(socket: &Path) -> io::Result<ReadyChannel> {
        let listener = UnixListener::bind(socket)?;
        listener.set_nonblocking(true)?;
        Ok(ReadyChannel { listener })
    }

    /// Waits for `Ready <host key>`, at most `timeout`; returns the key. `check` is asked between
    /// reads and ends the wait with its error (e.g. the VMM exited).
    pub fn wait<E: std::error::Error + 'static>(
        &self,
        timeout: Duration,
        check: impl FnMut() -> Result<(), E>,
    ) -> Result<String, ReadyError<E>> {
        self.wait_with_key(timeout, check, |_| {})
    }

    /// [`wait`](Self::wait), telling `on_key` of each `Key <host key>` line on the way: the
    /// guest's word that sshd listens with that key, sent before its last wait for Ready (Podman's
    /// first answer), so that the host can open its SSH tunnel meanwhile.
    pub fn wait_with_key<E: std::error::Error + 'static>(
        &self,
        timeout: Duration,
        mut check: impl FnMut() -> Result<(), E>,
        mut on_key: impl FnMut(&str),
    ) -> Result<String, ReadyError<E>> {
        let deadline = Instant::now() + timeout;
        let mut last_check = Instant::now();
        let mut tick = || -> Result<(), ReadyError<E>> {
            if last_check.elapsed() >= CHECK_EVERY {
                last_check = Instant::now();
                check().map_err(ReadyError::Stopped)?;
            }
            if Instant::now() >= deadline {
                return Err(ReadyError::Timeout(timeout));
            }
            Ok(())
        };
        loop {
            let conn = match self.listener.accept() {
                Ok((conn, _)) => conn,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    tick()?;
                    std::thread::sleep(POLL);
                    continue;
                }
                Err(e) => return Err(ReadyError::Io(e)),
            };
            conn.set_nonblocking(false).map_err(ReadyError::Io)?;
            conn.set_read_timeout(Some(CHECK_EVERY))
                .map_err(ReadyError::Io)?;
            let mut reader = BufReader::new(conn);
            let mut line = Vec::new();
            // Inside a line over MAX_LINE, until its end.
            let mut overlong = false;
            loop {
                // Never more than one byte past MAX_LINE, so `line` stays bounded.
                let room = (MAX_LINE + 1 - line.len()) as u64;
                match (&mut reader).take(room).read_until(b'\n', &mut line) {
                    // That connection ended without Ready: wait for the next one.
                    Ok(0) => break,
                    Ok(_) if line.ends_with(b"\n") => {
                        if !overlong && line.len() <= MAX_LINE {
                            match parse(&line) {
                                Some(Line::Ready(ready)) => return ready,
                                Some(Line::Key(key)) => on_key(&key),
                                None => {}
                            }
                        }
                        overlong = false;
                        line.clear();
                    }
                    Ok(_) if line.len() > MAX_LINE => {
                        overlong = true;
                        line.clear();
                    }
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        tick()?;
                    }
                    Err(e) => return Err(ReadyError::Io(e)),
                }
                tick()?;
            }
        }
    }
}

enum Line<E: std::error::Error + 'static> {
    Key(String),
    Ready(Result<String, ReadyError<E>>),
}

/// `Ready KEY` -> the key; a bare `Ready` -> refused; `Key KEY` -> the early key (a bare `Key` is
/// nothing); anything else is not the signal.
fn parse<E: std::error::Error + 'static>(line: &[u8]) -> Option<Line<E>> {
    let line = String::from_utf8_lossy(line);
    let line = line.trim();
    if line == "Ready" {
        return Some(Line::Ready(Err(ReadyError::NoHostKey)));
    }
    if let Some(key) = line.strip_prefix("Key ") {
        let key = key.trim();
        return (!key.is_empty()).then(|| Line::Key(key.to_owned()));
    }
    let key = line.strip_prefix("Ready ")?.trim();
    Some(Line::Ready(if key.is_empty() {
        Err(ReadyError::NoHostKey)
    } else {
        Ok(key.to_owned())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    #[derive(Debug, thiserror::Error)]
    #[error("gone")]
    struct Gone;

    fn channel() -> (tempfile::TempDir, ReadyChannel, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("ready.sock");
        let ch = ReadyChannel::bind(&sock).unwrap();
        (dir, ch, sock)
    }

    #[test]
    fn the_key_after_other_lines_and_a_dropped_connection() {
        let (_d, ch, sock) = channel();
        let writer = std::thread::spawn(move || {
            drop(UnixStream::connect(&sock).unwrap()); // a connection that says nothing
            let mut s = UnixStream::connect(&sock).unwrap();
            s.write_all(b"booting\nReady ssh-ed25519 AAAA\n").unwrap();
        });
        let key = ch
            .wait(Duration::from_secs(10), || Ok::<_, Gone>(()))
            .unwrap();
        assert_eq!(key, "ssh-ed25519 AAAA");
        writer.join().unwrap();
    }

    #[test]
    fn early_keys_are_told_on_the_way_to_ready() {
        let (_d, ch, sock) = channel();
        let mut s = UnixStream::connect(&sock).unwrap();
        s.write_all(b"Key\nKey ssh-ed25519 EARLY\nbooting\nReady ssh-ed25519 EARLY\n")
            .unwrap();
        let mut told = Vec::new();
        let key = ch
            .wait_with_key(
                Duration::from_secs(10),
                || Ok::<_, Gone>(()),
                |k| told.push(k.to_owned()),
            )
            .unwrap();
        assert_eq!(key, "ssh-ed25519 EARLY");
        assert_eq!(told, ["ssh-ed25519 EARLY"]);
    }

    #[test]
    fn a_bare_ready_is_refused() {
        let (_d, ch, sock) = channel();
        let mut s = UnixStream::connect(&sock).unwrap();
        s.write_all(b"Ready\n").unwrap();
        let e = ch.wait(Duration::from_secs(10), || Ok::<_, Gone>(()));
        assert!(matches!(e, Err(ReadyError::NoHostKey)), "{e:?}");
    }

    #[test]
    fn an_overlong_line_is_skipped_whole() {
        let (_d, ch, sock) = channel();
        let writer = std::thread::spawn(move || {
            let mut s = UnixStream::connect(&sock).unwrap();
            // A line that would be the signal but for its length, written in pieces.
            s.write_all(b"Ready ").unwrap();
            for _ in 0..64 {
                s.write_all(&[b'x'; MAX_LINE]).unwrap();
            }
            s.write_all(b"\nReady ssh-ed25519 BBBB\n").unwrap();
        });
        let key = ch
            .wait(Duration::from_secs(30), || Ok::<_, Gone>(()))
            .unwrap();
        assert_eq!(key, "ssh-ed25519 BBBB");
        writer.join().unwrap();
    }

    #[test]
    fn the_check_ends_the_wait_and_silence_times_out() {
        let (_d, ch, sock) = channel();
        let _s = UnixStream::connect(&sock).unwrap();
        let e = ch.wait(Duration::from_secs(30), || Err(Gone));
        assert!(matches!(e, Err(ReadyError::Stopped(Gone))), "{e:?}");
        let e = ch.wait(Duration::from_millis(300), || Ok::<_, Gone>(()));
        assert!(matches!(e, Err(ReadyError::Timeout(_))), "{e:?}");
    }
}
