//! Signing an artifact's manifest with minisign (ed25519), at pack time or afterwards.
//!
//! `pack` writes the manifest member as a zstd frame of its own. Signing an existing artifact
//! reads that frame and writes it, a frame holding the signature member, and the rest of the file
//! byte for byte (zstd frames concatenate into one stream): no recompression, and an earlier
//! signature (the frame after the manifest's) is replaced.

use crate::digest::Sha256Digest;
use crate::hashing::HashingWriter;
use crate::manifest::{MANIFEST_NAME, MAX_METADATA_BYTES, Manifest, SIGNATURE_NAME};
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Where the password of an encrypted secret key comes from (carbon-vm never prompts).
pub const PASSWORD_VAR: &str = "CARBON_VM_SIGN_PASSWORD";
const BLOCK: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("cannot read the signing key {0}")]
    KeyRead(PathBuf, #[source] io::Error),
    #[error(
        "{0} is not a minisign secret key, or {PASSWORD_VAR} does not decrypt it (unset: the key must be unencrypted, `minisign -G -W`)"
    )]
    Key(PathBuf),
    #[error("cannot sign: {0}")]
    Sign(String),
    #[error(
        "{0} does not start with its manifest in a zstd frame of its own (packed by an older carbon-vm, or not an image): pack it again"
    )]
    Layout(PathBuf),
    #[error("I/O error at {0}")]
    Io(PathBuf, #[source] io::Error),
}

impl exit_class::Classify for SignError {
    fn class(&self) -> Option<exit_class::Class> {
        match self {
            SignError::Key(_) | SignError::KeyRead(..) | SignError::Layout(_) => Some(
                exit_class::Code::Usage.hint(
                    "a key from `minisign -G -W` (or its password in CARBON_VM_SIGN_PASSWORD) and an artifact from `image build` or `image pack`",
                ),
            ),
            _ => None,
        }
    }
}

/// A minisign secret key.
#[derive(Clone)]
pub struct SigningKey(minisign::SecretKey);

impl SigningKey {
    /// Reads a minisign secret key file; an encrypted one needs its password in `password`.
    pub fn from_file(path: &Path, password: Option<String>) -> Result<SigningKey, SignError> {
        let bytes = std::fs::read(path).map_err(|e| SignError::KeyRead(path.into(), e))?;
        let text = String::from_utf8(bytes).map_err(|_| SignError::Key(path.into()))?;
        // Some(""): an unencrypted key, and never a prompt.
        minisign::SecretKeyBox::from_string(&text)
            .and_then(|b| b.into_secret_key(Some(password.unwrap_or_default())))
            .map(SigningKey)
            .map_err(|_| SignError::Key(path.into()))
    }

    /// A `.minisig` text over `manifest`; its trusted comment names the manifest's digest.
    pub fn sign(&self, manifest: &[u8]) -> Result<String, SignError> {
        let comment = format!("carbon-vm manifest sha256:{}", Sha256Digest::of(manifest));
        minisign::sign(None, &self.0, manifest, Some(&comment), None)
            .map(|b| b.to_string())
            .map_err(|e| SignError::Sign(e.to_string()))
    }
}

/// One tar member, `name` holding `data`, compressed as a zstd frame of its own.
pub(crate) fn member_frame(name: &str, data: &[u8], epoch: u64) -> io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    crate::pack::append(&mut tar, name, data.len() as u64, data, epoch)?;
    // The archive's end (two zero blocks) belongs to the last frame only.
    let mut bytes = tar.into_inner()?;
    bytes.truncate(BLOCK + data.len().div_ceil(BLOCK) * BLOCK);
    zstd::bulk::compress(&bytes, 3)
}

/// The member a lone-member frame holds: (name, data).
fn frame_member(frame: &[u8]) -> Option<(String, Vec<u8>)> {
    let bytes = zstd::bulk::decompress(frame, MAX_METADATA_BYTES as usize + 2 * BLOCK).ok()?;
    let header = tar::Header::from_byte_slice(bytes.get(..BLOCK)?);
    let size = usize::try_from(header.entry_size().ok()?).ok()?;
    if bytes.len() != BLOCK + size.div_ceil(BLOCK) * BLOCK {
        return None;
    }
    let name = header.path().ok()?.to_str()?.to_owned();
    Some((name, bytes[BLOCK..BLOCK + size].to_vec()))
}

/// The length of the zstd frame at the start of `buf`, if all of it is there.
fn frame_len(buf: &[u8]) -> Option<usize> {
    zstd::zstd_safe::find_frame_compressed_size(buf).ok()
}

/// Writes `input` signed by `key` to `output` (atomically; the two may be the same file);
/// returns the signed artifact's sha256.
pub fn sign_artifact(
    input: &Path,
    output: &Path,
    key: &SigningKey,
) -> Result<Sha256Digest, SignError> {
    let ioe = |p: &Path| {
        let p = p.to_owned();
        move |e| SignError::Io(p, e)
    };
    let mut f = File::open(input).map_err(ioe(input))?;
    // The manifest frame and, when signed already, the signature's: both well under this.
    let mut head = Vec::new();
    (&mut f)
        .take(4 * MAX_METADATA_BYTES)
        .read_to_end(&mut head)
        .map_err(ioe(input))?;
    let layout = || SignError::Layout(input.into());
    let manifest_len = frame_len(&head).ok_or_else(layout)?;
    let (name, manifest) = frame_member(&head[..manifest_len]).ok_or_else(layout)?;
    let parsed: Manifest = serde_json::from_slice(&manifest).map_err(|_| layout())?;
    if name != MANIFEST_NAME {
        return Err(layout());
    }
    let mut rest = manifest_len;
    if let Some(n) = frame_len(&head[rest..])
        && frame_member(&head[rest..rest + n]).is_some_and(|(name, _)| name == SIGNATURE_NAME)
    {
        rest += n;
    }
    let signature = key.sign(&manifest)?;
    let sig_frame =
        member_frame(SIGNATURE_NAME, signature.as_bytes(), parsed.created).map_err(ioe(output))?;

    let dir = crate::pack::parent_dir(output);
    let tmp = tempfile::Builder::new()
        .prefix(".carbon-signed-")
        .tempfile_in(dir)
        .map_err(ioe(dir))?;
    let mut w = HashingWriter::new(BufWriter::new(tmp.as_file()));
    w.write_all(&head[..manifest_len]).map_err(ioe(output))?;
    w.write_all(&sig_frame).map_err(ioe(output))?;
    f.seek(SeekFrom::Start(rest as u64)).map_err(ioe(input))?;
    io::copy(&mut f, &mut w).map_err(ioe(input))?;
    let (buffered, digest, _) = w.finish().map_err(ioe(output))?;
    buffered
        .into_inner()
        .map_err(|e| SignError::Io(output.into(), e.into_error()))?;
    let file = tmp.as_file();
    file.set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(ioe(output))?;
    file.sync_all().map_err(ioe(output))?;
    tmp.persist(output)
        .map_err(|e| SignError::Io(output.into(), e.error))?;
    Ok(digest)
}
