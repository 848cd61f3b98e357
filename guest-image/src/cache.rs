//! The content-addressed image cache: `<root>/<sha256 of the artifact>/` holds the verified
//! members, `manifest.json` and `image.json` (the record). Entries appear by an atomic rename of a
//! fully verified temporary directory and are guarded by `<root>/<sha256>.lock` flocks.

use crate::digest::Sha256Digest;
use crate::manifest::{MANIFEST_NAME, Manifest};
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// The record carbon-vm keeps beside each cached image.
pub const RECORD_NAME: &str = "image.json";
/// The lock a pull's scratch directory holds while the pull runs (crate scratch).
const SCRATCH_LOCK: &str = ".pull.lock";
/// Every name the cache itself writes in an image's directory: no member may take one.
const OWN_NAMES: [&str; 3] = [MANIFEST_NAME, RECORD_NAME, SCRATCH_LOCK];
const LOCK_SUFFIX: &str = ".lock";
/// Shortest ID prefix accepted where an image ID is expected.
pub const MIN_ID_PREFIX: usize = 4;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: Sha256Digest,
    /// Where it was pulled from, as the user wrote it.
    pub source: String,
    /// Seconds since the epoch.
    pub pulled: u64,
    /// Size of the artifact as transferred (compressed).
    pub artifact_bytes: u64,
    /// Whether a trusted key's signature over the manifest was verified.
    pub signed: bool,
    /// Which key (its base64 text): a catalog entry with a key takes only images it verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<String>,
}

#[derive(Debug, Clone)]
pub struct CachedImage {
    pub record: Record,
    pub manifest: Manifest,
    pub dir: PathBuf,
}

/// Whether a member at `path` would collide with a file the cache writes, or with its directory.
/// Compared ignoring ASCII case, as a case-insensitive filesystem (macOS) would.
pub fn is_reserved(path: &str) -> bool {
    let top = path.split('/').next().unwrap_or(path);
    OWN_NAMES.iter().any(|n| n.eq_ignore_ascii_case(top))
}

impl CachedImage {
    pub fn member_path(&self, member: &str) -> PathBuf {
        self.dir.join(member)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("no cached image matches {0:?}")]
    NotFound(String),
    #[error("{0:?} matches several cached images; give more digits")]
    Ambiguous(String),
    #[error("image IDs are at least {MIN_ID_PREFIX} hex digits: {0:?}")]
    ShortId(String),
    #[error("cached image {0} is damaged: {1}")]
    Damaged(String, String),
    #[error("cache I/O failed at {0}")]
    Io(PathBuf, #[source] io::Error),
}

impl exit_class::Classify for CacheError {
    fn class(&self) -> Option<exit_class::Class> {
        match self {
            CacheError::NotFound(_) | CacheError::Ambiguous(_) | CacheError::ShortId(_) => {
                Some(exit_class::Code::NotFound.hint("`carbon-vm image ls` lists cached images"))
            }
            _ => None,
        }
    }
}

pub struct Cache {
    root: PathBuf,
}

/// An exclusive flock, released on drop.
pub struct Lock(#[allow(dead_code, reason = "held for its flock")] File);

impl Cache {
    pub fn open(root: &Path) -> Result<Cache, CacheError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(|e| CacheError::Io(root.into(), e))?;
        Ok(Cache { root: root.into() })
    }

    /// The directory entries live in.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Blocks until no other process works on image `id`.
    pub fn lock(&self, id: &Sha256Digest) -> Result<Lock, CacheError> {
        let path = self.root.join(format!("{id}{LOCK_SUFFIX}"));
        let io = |e| CacheError::Io(path.clone(), e);
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io)?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| io(e.into()))?;
        Ok(Lock(f))
    }

    pub fn contains(&self, id: &Sha256Digest) -> bool {
        self.root.join(id.to_string()).join(RECORD_NAME).is_file()
    }

    fn load(&self, dir: PathBuf) -> Result<CachedImage, CacheError> {
        let name = dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let read = |f: &str| {
            let bytes = fs::read(dir.join(f))
                .map_err(|e| CacheError::Damaged(name.clone(), format!("{f}: {e}")))?;
            Ok::<_, CacheError>(bytes)
        };
        let damaged =
            |f: &str, e: serde_json::Error| CacheError::Damaged(name.clone(), format!("{f}: {e}"));
        let record: Record =
            serde_json::from_slice(&read(RECORD_NAME)?).map_err(|e| damaged(RECORD_NAME, e))?;
        let manifest: Manifest =
            serde_json::from_slice(&read(MANIFEST_NAME)?).map_err(|e| damaged(MANIFEST_NAME, e))?;
        Ok(CachedImage {
            record,
            manifest,
            dir,
        })
    }

    /// Finds an image by full digest or unique prefix.
    pub fn get(&self, id: &str) -> Result<CachedImage, CacheError> {
        let id = id
            .strip_prefix("sha256:")
            .unwrap_or(id)
            .to_ascii_lowercase();
        if id.len() < MIN_ID_PREFIX || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(CacheError::ShortId(id));
        }
        let mut hits = self
            .entry_dirs()?
            .into_iter()
            .filter(|(n, _)| n.starts_with(&id));
        match (hits.next(), hits.next()) {
            (Some((_, dir)), None) => self.load(dir),
            (Some(_), Some(_)) => Err(CacheError::Ambiguous(id)),
            (None, _) => Err(CacheError::NotFound(id)),
        }
    }

    pub fn list(&self) -> Result<Vec<CachedImage>, CacheError> {
        let mut out = Vec::new();
        for (_, dir) in self.entry_dirs()? {
            out.push(self.load(dir)?);
        }
        out.sort_by_key(|i| std::cmp::Reverse(i.record.pulled));
        Ok(out)
    }

    fn entry_dirs(&self) -> Result<Vec<(String, PathBuf)>, CacheError> {
        let io = |e| CacheError::Io(self.root.clone(), e);
        let mut out = Vec::new();
        for e in fs::read_dir(&self.root).map_err(io)? {
            let e = e.map_err(io)?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.parse::<Sha256Digest>().is_ok() && e.path().join(RECORD_NAME).is_file() {
                out.push((name, e.path()));
            }
        }
        Ok(out)
    }

    /// Removes an image: renamed away first, so it disappears at once and whole.
    pub fn remove(&self, id: &str) -> Result<Sha256Digest, CacheError> {
        let image = self.get(id)?;
        let _lock = self.lock(&image.record.id)?;
        scratch::remove_aside(&self.root, &image.record.id.to_string(), &image.dir)
            .map_err(|e| CacheError::Io(image.dir.clone(), e))?;
        // The lock file stays: deleting it could let a waiter and a newcomer lock two inodes.
        Ok(image.record.id)
    }

    /// A private scratch directory for one pull; removed on drop unless committed. What killed
    /// pulls left is swept first.
    pub(crate) fn scratch(&self) -> Result<scratch::Scratch, CacheError> {
        scratch::sweep(&self.root, SCRATCH_LOCK);
        scratch::Scratch::new_in(&self.root, "pull", SCRATCH_LOCK)
            .map_err(|e| CacheError::Io(self.root.clone(), e))
    }

    /// Moves a verified scratch directory into place as image `id`: record written and every
    /// file synced first, so the entry is complete once it is visible. The caller holds the lock.
    pub(crate) fn commit(
        &self,
        scratch: scratch::Scratch,
        record: &Record,
    ) -> Result<CachedImage, CacheError> {
        let dest = self.root.join(record.id.to_string());
        if self.contains(&record.id) {
            return self.load(dest); // another pull got there first; ours is dropped
        }
        let io = |p: &Path, e| CacheError::Io(p.into(), e);
        let rec = scratch.path().join(RECORD_NAME);
        let json = serde_json::to_vec_pretty(record).expect("record serializes");
        fs::write(&rec, json).map_err(|e| io(&rec, e))?;
        sync_tree(scratch.path()).map_err(|e| io(scratch.path(), e))?;
        let (tmp, _pulling) = scratch.keep();
        if let Err(e) = fs::rename(&tmp, &dest) {
            let _ = fs::remove_dir_all(&tmp);
            return Err(io(&dest, e));
        }
        // Out of the scratch names now: its lock has done its job.
        fs::remove_file(dest.join(SCRATCH_LOCK)).map_err(|e| io(&dest, e))?;
        File::open(&self.root)
            .and_then(|d| d.sync_all())
            .map_err(|e| io(&self.root, e))?;
        self.load(dest)
    }
}

fn sync_tree(dir: &Path) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            sync_tree(&e.path())?;
        } else {
            File::open(e.path())?.sync_all()?;
        }
    }
    File::open(dir)?.sync_all()
}
