//! A minimal QMP client (QEMU Machine Protocol: JSON lines over a unix socket): enough for
//! graceful power-down and the VM's run state.

use serde_json::{Value, json};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot talk to QEMU's QMP socket")]
    Io(#[from] io::Error),
    #[error("QEMU sent something that is not QMP: {0}")]
    Protocol(String),
    #[error("QEMU refused {0}: {1}")]
    Refused(&'static str, String),
}

impl Qmp {
    /// Connects, waiting at most `timeout` for each of QEMU's answers (QEMU serves one QMP client
    /// at a time: another one's connection makes this one wait).
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(timeout))?;
        let mut q = Qmp {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        };
        let greeting = q.read()?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(greeting.to_string()));
        }
        q.execute("qmp_capabilities")?;
        Ok(q)
    }

    fn read(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(QmpError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        serde_json::from_str(&line).map_err(|_| QmpError::Protocol(line))
    }

    /// The VM's run state as QEMU names it (`running`, `paused`, `io-error`...).
    pub fn status(&mut self) -> Result<String, QmpError> {
        let r = self.execute("query-status")?;
        r.get("status")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| QmpError::Protocol(r.to_string()))
    }

    /// Runs a command and returns its `return` value, skipping asynchronous events.
    pub fn execute(&mut self, command: &'static str) -> Result<Value, QmpError> {
        writeln!(self.writer, "{}", json!({ "execute": command }))?;
        loop {
            let v = self.read()?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(QmpError::Refused(command, e.to_string()));
            }
        }
    }
}
