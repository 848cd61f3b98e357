//! Host commands run with a bound: one that hangs (a stuck podman, an ssh to a guest that stopped
//! answering) is killed with everything it started, not waited for.

use std::io::{self, Read};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(50);

/// `c`'s output, or `None` when it did not finish within `limit`: it is killed then, and all
/// it started in its process group.
pub(crate) fn output_within(c: &mut Command, limit: Duration) -> io::Result<Option<Output>> {
    let mut child = std::os::unix::process::CommandExt::process_group(
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        0,
    )
    .spawn()?;
    let (tx, rx) = std::sync::mpsc::channel();
    let pipes: [Option<Box<dyn Read + Send>>; 2] = [
        child.stdout.take().map(|p| Box::new(p) as _),
        child.stderr.take().map(|p| Box::new(p) as _),
    ];
    for (i, pipe) in pipes.into_iter().enumerate() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            let _ = tx.send((i, buf));
        });
    }
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            // Not reaped yet, so its PID (its group's ID) is not anyone else's.
            let _ = rustix::process::kill_process_group(
                rustix::process::Pid::from_child(&child),
                rustix::process::Signal::KILL,
            );
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(POLL);
    };
    let mut out = [Vec::new(), Vec::new()];
    for _ in 0..2 {
        // What it left running may hold its output open: that, too, is not finishing.
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        match rx.recv_timeout(left) {
            Ok((i, buf)) => out[i] = buf,
            Err(_) => return Ok(None),
        }
    }
    let [stdout, stderr] = out;
    Ok(Some(Output {
        status,
        stdout,
        stderr,
    }))
}
