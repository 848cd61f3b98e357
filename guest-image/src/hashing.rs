//! A writer that hashes and counts what passes through it.

use crate::digest::Sha256Digest;
use sha2::{Digest as _, Sha256};
use std::io::{self, Write};

pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Flushes and returns the writer, the digest and the byte count.
    pub fn finish(mut self) -> io::Result<(W, Sha256Digest, u64)> {
        self.inner.flush()?;
        Ok((
            self.inner,
            Sha256Digest::from_hasher(self.hasher),
            self.count,
        ))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
