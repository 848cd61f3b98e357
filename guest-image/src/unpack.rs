//! The verifying unpacker: decompress on its own thread, walk the tar, accept only the members the
//! manifest lists (regular files at plain paths, each once, of the declared size and digest), and
//! write them sparsely into a fresh directory. Anything else stops the pull.

use crate::digest::Sha256Digest;
use crate::fetch::ChunkReader;
use crate::manifest::{
    MANIFEST_NAME, MAX_METADATA_BYTES, Manifest, ManifestError, SIGNATURE_NAME, is_plain_path,
};
use crate::space::{self, SpaceError};
use crate::sparse::{read_full, write_sparse};
use crate::trust::{Trust, TrustError};
use crate::untrusted::Untrusted;
use crate::writeback;
use sha2::{Digest as _, Sha256};
use std::cell::Cell;
use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::mpsc::sync_channel;
use std::thread::JoinHandle;

const IO_BUF: usize = 1024 * 1024;
/// How much is written before its writeback is started (see `writeback`).
const WRITEBACK_STRETCH: u64 = 32 * 1024 * 1024;
/// Tar framing allowed on top of the members' own bytes: headers, pax records, padding, trailer.
const FRAMING_PER_MEMBER: u64 = 4 * 1024;
const FRAMING_FIXED: u64 = 1024 * 1024;
/// What the tar reader may read between one member's data and the next's: padding, the header,
/// pax records and GNU long names. The reader buffers extensions, so this bounds its memory.
const MAX_HEADER_BYTES: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("corrupt or truncated compressed data")]
    Compression(#[source] io::Error),
    #[error("corrupt or truncated tar archive")]
    Tar(#[source] Untrusted),
    #[error(
        "archive decompresses to more than its manifest accounts for ({0} bytes): refusing a possible decompression bomb"
    )]
    TooLarge(u64),
    #[error("a member's tar headers (pax records, long names) exceed {MAX_HEADER_BYTES} bytes")]
    HugeHeaders,
    #[error("the first member is {0:?}, not {MANIFEST_NAME}")]
    NoManifest(String),
    #[error("{0} is larger than {MAX_METADATA_BYTES} bytes")]
    MetadataTooLarge(&'static str),
    #[error("manifest is not valid JSON")]
    ManifestJson(#[source] Untrusted),
    #[error("invalid manifest")]
    Manifest(#[source] ManifestError),
    #[error("image is not signed, and no sha256 pins it")]
    Unsigned,
    #[error("manifest signature rejected")]
    Signature(#[source] TrustError),
    #[error("member {0:?} is not a plain relative path")]
    BadPath(String),
    #[error("member {0:?} is not listed in the manifest")]
    NotInManifest(String),
    #[error("member {0:?} is a {1}, only regular files are allowed")]
    NotRegular(String, &'static str),
    #[error("member {0:?} appears twice")]
    Duplicate(String),
    #[error("member {path:?} is {actual} bytes, the manifest says {declared}")]
    SizeMismatch {
        path: String,
        declared: u64,
        actual: u64,
    },
    #[error("member {path:?} has sha256 {actual}, the manifest says {declared}")]
    DigestMismatch {
        path: String,
        declared: Sha256Digest,
        actual: Sha256Digest,
    },
    #[error("member {0:?} is listed in the manifest but missing from the archive")]
    Missing(String),
    #[error("the image does not fit")]
    NoSpace(#[source] SpaceError),
    #[error("cannot write {0}")]
    Write(PathBuf, #[source] io::Error),
}

/// What a successful unpack leaves in the directory, besides the members.
pub struct Unpacked {
    pub manifest: Manifest,
    pub manifest_bytes: Vec<u8>,
    /// The trusted key that verified the manifest's signature (base64), if it was signed.
    pub signed_by: Option<String>,
}

/// Unpacks `input` (the artifact's bytes, compressed or not) into the empty directory `dir`.
/// `require_signature` is set when nothing else (an artifact digest) pins the image.
pub fn unpack(
    input: impl Read + Send + 'static,
    dir: &Path,
    trust: &Trust,
    require_signature: bool,
) -> Result<Unpacked, UnpackError> {
    let (decompressed, decoder) = spawn_decompressor(input);
    let budget = Rc::new(Budget {
        total: Cell::new(2 * MAX_METADATA_BYTES + FRAMING_FIXED),
        headers: Cell::new(None),
        exceeded: Cell::new(None),
    });
    let limited = LimitReader {
        inner: decompressed,
        read: 0,
        budget: budget.clone(),
    };
    let result = Walker {
        dir,
        trust,
        require_signature,
        budget: budget.clone(),
    }
    .walk(limited);
    // The decoder's own error says more than the tar reader's "unexpected end".
    let decoded = decoder.join().expect("decompressor thread panicked");
    match budget.exceeded.get() {
        Some(Exceeded::Total) => return Err(UnpackError::TooLarge(budget.total.get())),
        Some(Exceeded::Headers) => return Err(UnpackError::HugeHeaders),
        None => {}
    }
    match (result, decoded) {
        (Err(UnpackError::Tar(_)), Err(e)) => Err(UnpackError::Compression(e)),
        (Ok(_), Err(e)) => Err(UnpackError::Compression(e)),
        (r, _) => r,
    }
}

struct Walker<'a> {
    dir: &'a Path,
    trust: &'a Trust,
    require_signature: bool,
    budget: Rc<Budget>,
}

impl Walker<'_> {
    fn walk(&self, input: impl Read) -> Result<Unpacked, UnpackError> {
        let mut archive = tar::Archive::new(input);
        let mut entries = archive.entries().map_err(tar_error)?;
        let mut next = || {
            self.budget.headers.set(Some(MAX_HEADER_BYTES));
            let entry = entries.next().transpose().map_err(tar_error);
            self.budget.headers.set(None);
            entry
        };

        let mut first = next()?.ok_or_else(|| UnpackError::NoManifest(String::new()))?;
        let name = entry_path(&first)?;
        if name != MANIFEST_NAME {
            return Err(UnpackError::NoManifest(name));
        }
        let manifest_bytes = read_small(&mut first, MANIFEST_NAME)?;
        drop(first);
        let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
            .map_err(|e| UnpackError::ManifestJson(Untrusted::of(e)))?;
        manifest.validate().map_err(UnpackError::Manifest)?;
        let declared = manifest.total_size().map_err(UnpackError::Manifest)?;
        // Not trusted yet (a pin is checked at the end of the stream), but what it declares is
        // all that will be written: refuse now what the disk cannot hold.
        space::ensure(
            self.dir,
            declared.saturating_add(manifest_bytes.len() as u64),
        )
        .map_err(UnpackError::NoSpace)?;
        let members = manifest.members.len() as u64 + 2;
        self.budget.total.set(
            declared
                .saturating_add(2 * MAX_METADATA_BYTES + FRAMING_FIXED)
                .saturating_add(members * FRAMING_PER_MEMBER),
        );

        let mut pending = next()?;
        let mut signed_by = None;
        if let Some(e) = pending.as_mut().filter(|e| is_named(e, SIGNATURE_NAME)) {
            let sig = read_small(e, SIGNATURE_NAME)?;
            let sig = String::from_utf8_lossy(&sig);
            signed_by = Some(
                self.trust
                    .verify(&manifest_bytes, &sig)
                    .map_err(UnpackError::Signature)?,
            );
            pending = next()?;
        }
        if self.require_signature && signed_by.is_none() {
            return Err(UnpackError::Unsigned);
        }

        let mut seen = HashSet::new();
        while let Some(mut entry) = pending {
            let path = entry_path(&entry)?;
            let kind = entry.header().entry_type();
            if !kind.is_file() {
                return Err(UnpackError::NotRegular(path, type_name(kind)));
            }
            if !is_plain_path(&path) {
                return Err(UnpackError::BadPath(path));
            }
            let member = manifest
                .member(&path)
                .ok_or_else(|| UnpackError::NotInManifest(path.clone()))?;
            if !seen.insert(member.path.clone()) {
                return Err(UnpackError::Duplicate(path));
            }
            // The size the reader streams, pax `size` included: what the header says may differ.
            let actual = entry.size();
            if actual != member.size {
                return Err(UnpackError::SizeMismatch {
                    path,
                    declared: member.size,
                    actual,
                });
            }
            let digest = self.write_member(&mut entry, &path, member.size)?;
            if digest != member.sha256 {
                return Err(UnpackError::DigestMismatch {
                    path,
                    declared: member.sha256,
                    actual: digest,
                });
            }
            drop(entry);
            pending = next()?;
        }
        if let Some(m) = manifest.members.iter().find(|m| !seen.contains(&m.path)) {
            return Err(UnpackError::Missing(m.path.clone()));
        }
        // Read to the real end so the transport hashes every byte (tar stops at its trailer).
        io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(tar_error)?;
        fs::write(self.dir.join(MANIFEST_NAME), &manifest_bytes)
            .map_err(|e| UnpackError::Write(self.dir.join(MANIFEST_NAME), e))?;
        Ok(Unpacked {
            manifest,
            manifest_bytes,
            signed_by,
        })
    }

    /// Copies one member to disk, hashing every byte and leaving runs of zero blocks as holes.
    fn write_member(
        &self,
        entry: &mut impl Read,
        path: &str,
        size: u64,
    ) -> Result<Sha256Digest, UnpackError> {
        let dest = self.dir.join(path);
        let werr = |e| UnpackError::Write(dest.clone(), e);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(werr)?;
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&dest)
            .map_err(werr)?;
        // Hash on a thread of its own: hashing and writing each cost about as much as
        // decompressing, and this thread is the pipeline's longest stage.
        let (written, digest) = std::thread::scope(|scope| {
            let (tx, rx) = sync_channel::<bytes::Bytes>(4);
            let hashing = scope.spawn(move || {
                let mut hasher = Sha256::new();
                for chunk in rx {
                    hasher.update(&chunk);
                }
                Sha256Digest::from_hasher(hasher)
            });
            let (mut written, mut flushed) = (0u64, 0u64);
            loop {
                let mut buf = vec![0u8; IO_BUF];
                let n = read_full(entry, &mut buf).map_err(tar_error)?;
                if n == 0 {
                    break;
                }
                buf.truncate(n);
                let chunk = bytes::Bytes::from(buf);
                write_sparse(&mut file, &chunk).map_err(werr)?;
                tx.send(chunk).expect("hashing thread lives while we send");
                written += n as u64;
                if written - flushed >= WRITEBACK_STRETCH {
                    writeback::start(&file, flushed, written - flushed);
                    flushed = written;
                }
            }
            drop(tx);
            Ok::<_, UnpackError>((written, hashing.join().expect("hashing thread panicked")))
        })?;
        // The reader stops at the size it honours; a short stream stops earlier.
        if written != size {
            return Err(UnpackError::SizeMismatch {
                path: path.to_owned(),
                declared: size,
                actual: written,
            });
        }
        file.set_len(size).map_err(werr)?;
        Ok(digest)
    }
}

fn read_small<R: Read>(
    entry: &mut tar::Entry<R>,
    what: &'static str,
) -> Result<Vec<u8>, UnpackError> {
    if !entry.header().entry_type().is_file() {
        return Err(UnpackError::NotRegular(
            what.into(),
            type_name(entry.header().entry_type()),
        ));
    }
    let mut out = Vec::new();
    entry
        .take(MAX_METADATA_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(tar_error)?;
    if out.len() as u64 > MAX_METADATA_BYTES {
        return Err(UnpackError::MetadataTooLarge(what));
    }
    Ok(out)
}

/// The tar reader's errors may quote raw header bytes.
fn tar_error(e: io::Error) -> UnpackError {
    UnpackError::Tar(Untrusted::of(e))
}

fn entry_path<R: Read>(entry: &tar::Entry<R>) -> Result<String, UnpackError> {
    let raw = entry.path_bytes();
    String::from_utf8(raw.into_owned())
        .map_err(|e| UnpackError::BadPath(String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

fn is_named<R: Read>(entry: &tar::Entry<R>, name: &str) -> bool {
    entry.path_bytes().as_ref() == name.as_bytes()
}

fn type_name(t: tar::EntryType) -> &'static str {
    use tar::EntryType as T;
    match t {
        T::Symlink => "symlink",
        T::Link => "hard link",
        T::Char => "character device",
        T::Block => "block device",
        T::Fifo => "fifo",
        T::Directory => "directory",
        T::GNUSparse => "GNU sparse file",
        _ => "special entry",
    }
}

/// What the decompressed stream may still deliver, shared by the walker (which sets it) and the
/// reader under the tar parser (which enforces it).
struct Budget {
    /// The whole stream: what the manifest accounts for.
    total: Cell<u64>,
    /// While the tar reader looks for the next member: what its headers may take.
    headers: Cell<Option<u64>>,
    exceeded: Cell<Option<Exceeded>>,
}

#[derive(Clone, Copy)]
enum Exceeded {
    Total,
    Headers,
}

/// Fails the stream once more bytes come out of the decompressor than the budget allows.
struct LimitReader<R> {
    inner: R,
    read: u64,
    budget: Rc<Budget>,
}

impl<R: Read> Read for LimitReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.budget.total.get() {
            self.budget.exceeded.set(Some(Exceeded::Total));
            return Err(io::Error::other("decompressed size limit exceeded"));
        }
        if let Some(left) = self.budget.headers.get() {
            let Some(left) = left.checked_sub(n as u64) else {
                self.budget.exceeded.set(Some(Exceeded::Headers));
                return Err(io::Error::other("tar header size limit exceeded"));
            };
            self.budget.headers.set(Some(left));
        }
        Ok(n)
    }
}

/// Decompresses (zstd, gzip or none, by magic number) on a thread of its own.
fn spawn_decompressor(
    input: impl Read + Send + 'static,
) -> (ChunkReader, JoinHandle<io::Result<()>>) {
    let (tx, rx) = sync_channel(16);
    let handle = std::thread::Builder::new()
        .name("carbon-decompress".into())
        .spawn(move || {
            let mut input = BufReader::with_capacity(IO_BUF, input);
            let magic = input
                .fill_buf()?
                .get(..4)
                .map(<[u8]>::to_vec)
                .unwrap_or_default();
            let mut decoder: Box<dyn Read> = if magic == [0x28, 0xb5, 0x2f, 0xfd] {
                Box::new(zstd::stream::read::Decoder::with_buffer(input)?)
            } else if magic.starts_with(&[0x1f, 0x8b]) {
                Box::new(flate2::bufread::MultiGzDecoder::new(input))
            } else {
                Box::new(input)
            };
            loop {
                let mut buf = vec![0u8; IO_BUF / 4];
                match read_full(&mut decoder, &mut buf) {
                    Ok(0) => return Ok(()),
                    Ok(n) => {
                        buf.truncate(n);
                        if tx.send(Ok(buf.into())).is_err() {
                            return Ok(()); // the walker stopped first; its error wins
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(io::Error::new(e.kind(), e.to_string())));
                        return Err(e);
                    }
                }
            }
        })
        .expect("spawning a thread");
    (ChunkReader::new(rx), handle)
}
