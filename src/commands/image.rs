//! `carbon-vm image ...`

use crate::cli::{
    BuildArgs, IdArg, ImageCommand, ImageRmArgs, PackArgs, PullArgs, PushArgs, SignArgs,
};
use crate::env_vars;
use crate::home::Home;
use crate::output::Printer;
use anyhow::Context;
use guest_image::pack::{PackOptions, pack};
use guest_image::recipe::{self, RecipeOptions};
use guest_image::sign::SigningKey;
use guest_image::{Cache, CachedImage, PullOptions, Sha256Digest, Source, Trust};
use machine::guest_image;
use serde::Serialize;
use std::path::{Path, PathBuf};

pub fn run(cmd: ImageCommand, home: &Home, out: Printer) -> anyhow::Result<()> {
    match cmd {
        ImageCommand::Build(a) => {
            stop_on_signals()?;
            build(a, out)
        }
        ImageCommand::Pack(a) => {
            stop_on_signals()?;
            pack_cmd(a, out)
        }
        ImageCommand::Sign(a) => sign_cmd(a, out),
        ImageCommand::Pull(a) => pull(a, home, out),
        ImageCommand::Push(a) => push(a, out),
        ImageCommand::Ls => ls(home, out),
        ImageCommand::Rm(a) => rm(a, home, out),
        ImageCommand::Verify(a) => verify(a, home, out),
    }
}

/// SIGINT, SIGTERM and SIGHUP stop a build or pack cleanly instead of killing it where it stands
/// (guest_image::interrupt); main then dies of the same signal.
fn stop_on_signals() -> anyhow::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .context("cannot handle signals")?;
    std::thread::spawn(move || {
        for s in signals.forever() {
            guest_image::interrupt::request(s);
        }
    });
    Ok(())
}

/// SOURCE_DATE_EPOCH when set (reproducible builds), else now.
fn epoch() -> anyhow::Result<u64> {
    match std::env::var(env_vars::SOURCE_DATE_EPOCH) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{} is not a number: {v:?}", env_vars::SOURCE_DATE_EPOCH)),
        Err(_) => Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()),
    }
}

#[derive(Serialize)]
struct Artifact<'a> {
    path: &'a Path,
    sha256: Sha256Digest,
}

fn print_artifact(out: Printer, path: &Path, sha256: Sha256Digest) {
    out.record(&Artifact { path, sha256 }, || {
        format!("{sha256}  {}", path.display())
    });
}

fn build(a: BuildArgs, out: Printer) -> anyhow::Result<()> {
    let mirror = a
        .mirror
        .or_else(|| std::env::var(env_vars::DEBIAN_MIRROR).ok())
        .unwrap_or_else(|| recipe::DEFAULT_MIRROR.to_owned());
    let opts = RecipeOptions {
        arch: a.arch,
        mirror,
        epoch: epoch()?,
        zstd_level: a.zstd_level,
        sign: signing_key(a.sign_key.as_deref())?,
        venus_bundle: a.venus_bundle,
    };
    let digest = recipe::build(&a.output, &opts, out.progress().as_ref())?;
    print_artifact(out, &a.output, digest);
    Ok(())
}

/// `--sign-key FILE`: a minisign secret key; an encrypted one's password is in
/// CARBON_VM_SIGN_PASSWORD.
fn signing_key(path: Option<&Path>) -> anyhow::Result<Option<SigningKey>> {
    let password = std::env::var(guest_image::sign::PASSWORD_VAR).ok();
    Ok(path
        .map(|p| SigningKey::from_file(p, password))
        .transpose()?)
}

/// `image sign FILE --key SECRET [-o OUT]`.
fn sign_cmd(a: SignArgs, out: Printer) -> anyhow::Result<()> {
    let key = signing_key(Some(&a.key))?.expect("a key path");
    let output = a.output.as_deref().unwrap_or(&a.file);
    let digest = guest_image::sign::sign_artifact(&a.file, output, &key)?;
    print_artifact(out, output, digest);
    Ok(())
}

fn pack_cmd(a: PackArgs, out: Printer) -> anyhow::Result<()> {
    let opts = PackOptions {
        name: a.name,
        arch: a.arch,
        epoch: epoch()?,
        zstd_level: a.zstd_level,
        sign: signing_key(a.sign_key.as_deref())?,
        mesa_version: a.mesa_version,
        bootloader: a.bootloader,
    };
    let digest = pack(&a.rootfs, &a.output, &opts, out.progress().as_ref())?;
    print_artifact(out, &a.output, digest);
    Ok(())
}

/// How an image shows in `image ls`, `image pull --json` and `image verify --json`.
#[derive(Serialize)]
struct ImageView<'a> {
    id: Sha256Digest,
    short_id: String,
    name: &'a str,
    arch: &'a str,
    source: &'a str,
    signed: bool,
    artifact_bytes: u64,
    pulled: u64,
    kernel_version: &'a str,
    mesa_version: &'a str,
    /// The guest kernel's page size; null when the image does not say.
    page_size: Option<u32>,
    venus_icd: &'a str,
    venus_library: &'a str,
    container_images: Vec<&'a str>,
    /// The Venus driver the image gives containers through `carbon-vm.dev/gpu=all`.
    container_driver: Option<&'a guest_image::manifest::ContainerDriver>,
    cmdline: &'a str,
    kernel: PathBuf,
    initrd: PathBuf,
    disk: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    downloaded: Option<bool>,
}

impl<'a> ImageView<'a> {
    fn of(i: &'a CachedImage, downloaded: Option<bool>) -> Self {
        let m = &i.manifest;
        ImageView {
            id: i.record.id,
            short_id: i.record.id.short(),
            name: &m.name,
            arch: &m.arch,
            source: &i.record.source,
            signed: i.record.signed,
            artifact_bytes: i.record.artifact_bytes,
            pulled: i.record.pulled,
            kernel_version: &m.bundles.kernel_version,
            mesa_version: &m.bundles.mesa_version,
            page_size: m.bundles.page_size,
            venus_icd: &m.bundles.venus_icd,
            venus_library: &m.bundles.venus_library,
            container_images: m
                .bundles
                .container_images
                .iter()
                .map(|c| c.name.as_str())
                .collect(),
            container_driver: m.bundles.container_driver.as_ref(),
            cmdline: &m.boot.cmdline,
            kernel: i.member_path(&m.boot.kernel),
            initrd: i.member_path(&m.boot.initrd),
            disk: i.member_path(&m.boot.disk),
            downloaded,
        }
    }

    fn line(&self) -> String {
        format!(
            "{}  {:<24} {:<7} kernel {:<22} mesa {:<16} {}",
            self.short_id,
            self.name,
            self.arch,
            self.kernel_version,
            self.mesa_version,
            self.source
        )
    }
}

fn pull(a: PullArgs, home: &Home, out: Printer) -> anyhow::Result<()> {
    let source: Source = a.source.parse()?;
    let pin = a.sha256.as_deref().map(str::parse).transpose()?;
    let trust = Trust::with_pinned(&home.trusted_key_texts()?)?;
    let cache = Cache::open(&home.images)?;
    let opts = PullOptions {
        pin,
        trust: &trust,
        require_signature: false,
        arch: &a.arch,
        progress: out.progress(),
    };
    let pulled = guest_image::pull(&cache, &source, &opts)?;
    let view = ImageView::of(&pulled.image, Some(pulled.downloaded));
    out.record(&view, || {
        let verb = if pulled.downloaded {
            "pulled"
        } else {
            "already cached"
        };
        format!("{verb}: {}", view.line())
    });
    Ok(())
}

fn push(a: PushArgs, out: Printer) -> anyhow::Result<()> {
    let Source::Oci(reference) = a.destination.parse()? else {
        anyhow::bail!("push needs an oci://REGISTRY/REPO[:TAG] destination");
    };
    let (pushed, top) = guest_image::push::push_all(&a.files, &reference)?;
    let pinned = format!(
        "oci://{}/{}@{}",
        reference.registry(),
        reference.repository(),
        top.oci()
    );
    #[derive(Serialize)]
    struct Artifact<'a> {
        arch: &'a str,
        sha256: Sha256Digest,
        manifest: Sha256Digest,
    }
    #[derive(Serialize)]
    struct Pushed<'a> {
        /// The one artifact's digest (a single push), as before indexes.
        #[serde(skip_serializing_if = "Option::is_none")]
        sha256: Option<Sha256Digest>,
        #[serde(skip_serializing_if = "Option::is_none")]
        manifest: Option<Sha256Digest>,
        /// The index's digest (several artifacts).
        #[serde(skip_serializing_if = "Option::is_none")]
        index: Option<Sha256Digest>,
        reference: String,
        artifacts: Vec<Artifact<'a>>,
    }
    let single = (pushed.len() == 1).then(|| &pushed[0]);
    let record = Pushed {
        sha256: single.map(|p| p.sha256),
        manifest: single.map(|p| p.manifest),
        index: (single.is_none()).then_some(top),
        reference: pinned.clone(),
        artifacts: pushed
            .iter()
            .map(|p| Artifact {
                arch: &p.arch,
                sha256: p.sha256,
                manifest: p.manifest,
            })
            .collect(),
    };
    out.record(&record, || {
        pushed
            .iter()
            .map(|p| format!("{}  {} {}", p.sha256, p.arch, pinned))
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}

fn ls(home: &Home, out: Printer) -> anyhow::Result<()> {
    let cache = Cache::open(&home.images)?;
    let images = cache.list()?;
    let views: Vec<ImageView> = images.iter().map(|i| ImageView::of(i, None)).collect();
    out.record(&views, || {
        if views.is_empty() {
            "no cached images".to_owned()
        } else {
            views
                .iter()
                .map(ImageView::line)
                .collect::<Vec<_>>()
                .join("\n")
        }
    });
    Ok(())
}

fn rm(a: ImageRmArgs, home: &Home, out: Printer) -> anyhow::Result<()> {
    let cache = Cache::open(&home.images)?;
    let store = crate::commands::machine::store(home);
    let id = machine::images::remove(&store, &cache, &a.id, a.force)?;
    #[derive(Serialize)]
    struct Removed {
        id: Sha256Digest,
    }
    out.record(&Removed { id }, || format!("removed {id}"));
    Ok(())
}

fn verify(a: IdArg, home: &Home, out: Printer) -> anyhow::Result<()> {
    let cache = Cache::open(&home.images)?;
    let image = guest_image::verify::verify(&cache, &a.id, out.progress().as_ref())?;
    let view = ImageView::of(&image, None);
    out.record(&view, || format!("ok: {}", view.line()));
    Ok(())
}
