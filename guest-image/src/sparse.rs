//! Sparse file I/O: disks are mostly zeros, so zero blocks become holes instead of writes.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

const BLOCK: usize = 64 * 1024;

/// Writes `data` at the file's position, seeking over 64 KiB blocks that are all zeros.
pub fn write_sparse(file: &mut File, data: &[u8]) -> io::Result<()> {
    let mut start = 0;
    while start < data.len() {
        let is_zero = |c: &[u8]| c.iter().all(|&b| b == 0);
        let end = (start + BLOCK).min(data.len());
        if is_zero(&data[start..end]) {
            file.seek(SeekFrom::Current((end - start) as i64))?;
            start = end;
            continue;
        }
        let mut stop = end;
        while stop < data.len() && !is_zero(&data[stop..(stop + BLOCK).min(data.len())]) {
            stop = (stop + BLOCK).min(data.len());
        }
        file.write_all(&data[start..stop])?;
        start = stop;
    }
    Ok(())
}

/// Reads until `buf` is full or the reader ends; returns how much was read.
pub fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Copies `src` into `dest` at `offset`, leaving zero blocks as holes.
pub fn copy_sparse(src: &mut impl Read, dest: &mut File, offset: u64) -> io::Result<u64> {
    dest.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    loop {
        let n = read_full(src, &mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        write_sparse(dest, &buf[..n])?;
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn zero_blocks_become_holes_and_data_survives() {
        let mut data = vec![0u8; 4 * 1024 * 1024];
        data[3 * 1024 * 1024 + 5] = 7;
        let mut f = tempfile::tempfile().unwrap();
        copy_sparse(&mut &data[..], &mut f, 0).unwrap();
        f.set_len(data.len() as u64).unwrap();
        let mut back = Vec::new();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
        // One 64 KiB block of data, the rest holes (filesystems allocate at least that much).
        assert!(f.metadata().unwrap().blocks() * 512 < 1024 * 1024);
    }
}
