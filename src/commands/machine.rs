//! `create`, `start`, `stop`, `rm`, `list`, `inspect`, `ssh`, `env`, `gpu check`.

use crate::cli::{CreateArgs, GpuCheckArgs, NameArg, RmArgs, SetArgs, SshArgs, StopArgs, Workload};
use crate::home::Home;
use crate::output::Printer;
use crate::settings;
use machine::create::{PodmanTarget, Request};
use machine::exit_class::{Class, Classify, Code};
use machine::gpu::Scope;
use machine::guest_image::{
    self, Cache, Trust,
    cache::{CacheError, CachedImage},
    catalog,
};
use machine::lifecycle::{self, State};
use machine::store::{self, Store};
use serde::Serialize;

pub(crate) fn store(home: &Home) -> Store {
    Store {
        machines: home.machines.clone(),
        runtime: home.runtime.clone(),
    }
}

#[derive(Serialize)]
struct MachineView {
    name: String,
    #[serde(flatten)]
    state: State,
    driver: machine::DriverKind,
    /// The guest's architecture (the image's).
    arch: String,
    cpus: u8,
    memory_mib: u32,
    disk_gib: u32,
    gpu: bool,
    /// The ggml device's server, on a machine created with --ggml.
    #[serde(skip_serializing_if = "Option::is_none")]
    ggml: Option<lifecycle::GgmlStatus>,
    image: guest_image::Sha256Digest,
    volumes: Vec<machine::volumes::Volume>,
    ssh_port: Option<u16>,
    podman_socket: std::path::PathBuf,
    dir: std::path::PathBuf,
}

fn view(m: &machine::MachineDir, o: &lifecycle::StartOptions) -> anyhow::Result<MachineView> {
    let spec = m.spec()?;
    let state = lifecycle::state(m, o);
    let running = state != State::Stopped;
    Ok(MachineView {
        name: spec.name,
        state,
        driver: spec.driver,
        arch: spec.arch,
        cpus: spec.cpus,
        memory_mib: spec.memory_mib,
        disk_gib: spec.disk_gib,
        gpu: spec.gpu,
        ggml: spec.ggml.then(|| lifecycle::ggml_status(m)),
        image: spec.image,
        volumes: spec.volumes,
        ssh_port: m.run().filter(|_| running).map(|r| r.ssh_port),
        podman_socket: m.socket(store::PODMAN_SOCKET),
        dir: m.dir.clone(),
    })
}

fn line(v: &MachineView) -> String {
    let state = match &v.state {
        State::Running => "running".to_owned(),
        State::Stopped => "stopped".to_owned(),
        State::Broken(r) => format!("broken ({r})"),
    };
    format!(
        "{:<16} {:<20} {:<8} {} cpus {} MiB {} GiB{}",
        v.name,
        state,
        v.driver.name(),
        v.cpus,
        v.memory_mib,
        v.disk_gib,
        if v.gpu { " gpu" } else { "" }
    ) + if v.ggml.is_some() { " ggml" } else { "" }
}

/// `--volume`s, else the home directory (unless it is the guest's own, root's /root, or this host
/// cannot share folders: `create` refuses only folders asked for).
fn volumes(
    a: &CreateArgs,
    can_share: bool,
    out: Printer,
) -> anyhow::Result<Vec<machine::volumes::Volume>> {
    if a.no_volumes {
        return Ok(vec![]);
    }
    if !a.volumes.is_empty() {
        let cwd = std::env::current_dir()?;
        return Ok(a
            .volumes
            .iter()
            .map(|v| machine::volumes::parse(v, &cwd))
            .collect::<Result<_, _>>()?);
    }
    let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) else {
        return Ok(vec![]);
    };
    if !can_share {
        out.warn(&format!(
            "the home directory is not shared: this host has no usable virtiofsd ({})",
            machine::volumes::INSTALL_HINT
        ));
        return Ok(vec![]);
    }
    let v = machine::volumes::default_for(home.as_ref());
    if v.is_none() {
        out.warn(&format!(
            "the home directory {} is not shared: the guest's system lives at that path \
             (share folders with --volume HOST:GUEST)",
            std::path::Path::new(&home).display()
        ));
    }
    Ok(v.into_iter().collect())
}

pub fn create_cmd(a: CreateArgs, home: &Home, out: Printer) -> anyhow::Result<()> {
    let kind = a.driver.unwrap_or_else(machine::DriverKind::host_default);
    let start = settings::start_options(home)?;
    let driver = machine::create::host_driver(kind, &start)?;
    let volumes = volumes(&a, driver.limits(false).shares, out)?;
    let config_home = match a.podman_machine {
        true => Some(settings::podman_config_home()?),
        false => None,
    };
    // Before anything is pulled: what this host's driver cannot give.
    let plan = machine::create::plan(
        driver,
        Request {
            name: &a.name,
            cpus: a.cpus,
            memory_mib: a.memory,
            disk_gib: a.disk_size,
            gpu: a.gpu,
            ggml: a.ggml,
            podman_default: a.default,
            podman_machine: a.podman_machine,
            volumes,
        },
        &start.state_dirs,
        || {
            Ok(PodmanTarget {
                config_home: config_home.expect("read for --podman-machine"),
                version: machine::podman_machine::podman_version()?,
            })
        },
    )?;
    let image = image_for(a.image.as_deref(), plan.arch().name(), home, out)?;
    let m = machine::create::create(&store(home), &plan, &image)?;
    if plan.driver().capabilities().always_gpu && !a.gpu {
        out.warn(&format!(
            "{} always gives the guest a Venus GPU and cannot turn it off; without --gpu, the \
             machine's memory is not checked against the GPU's memory window",
            kind.name()
        ));
    }
    let v = view(&m, &start)?;
    out.record(&v, || format!("created {}", line(&v)));
    Ok(())
}

/// `--image`: a cached image's ID, else a name in the image catalog; without it, the catalog's
/// default. A catalog image that is not cached is pulled (and verified) first.
fn image_for(
    wanted: Option<&str>,
    arch: &str,
    home: &Home,
    out: Printer,
) -> anyhow::Result<CachedImage> {
    let cache = Cache::open(&home.images)?;
    // A cached ID needs no catalog.
    let not_cached = match wanted.map(|w| cache.get(w)) {
        Some(Ok(image)) => return Ok(image),
        Some(Err(e @ (CacheError::NotFound(_) | CacheError::ShortId(_)))) => Some(e),
        Some(Err(e)) => return Err(e.into()),
        None => None,
    };
    let catalog = settings::catalog()?;
    let name = match (wanted, not_cached) {
        (Some(w), Some(_)) if catalog.has_name(w) => w,
        (_, Some(e)) => return Err(e.into()),
        _ => &catalog.default,
    };
    let entry = catalog.entry(name, arch)?;
    let trust = Trust::with_pinned(&home.trusted_key_texts()?)?;
    Ok(catalog::resolve(&cache, entry, &trust, out.progress())?)
}

pub fn start(a: NameArg, home: &Home, out: Printer) -> anyhow::Result<()> {
    let st = store(home);
    let m = st.open(&a.name)?;
    let o = settings::start_options(home)?;
    let registered = lifecycle::start(&m, &o)?;
    let spec = m.spec()?;
    if spec.gpu {
        warn_without_venus(home, &m, &o, &spec);
    }
    match &registered.docker {
        machine::docker::Context::Theirs => eprintln!(
            "warning: docker already has a context named {0} that carbon-vm did not make: left \
             as it is (`carbon-vm env {0}` prints DOCKER_HOST instead)",
            spec.name
        ),
        machine::docker::Context::Failed(why) => eprintln!(
            "warning: no docker context for {0} ({why}); `carbon-vm env {0}` prints DOCKER_HOST",
            spec.name
        ),
        _ => {}
    }
    let v = view(&m, &o)?;
    out.record(&v, || {
        let mut s = format!("started {}", line(&v));
        if registered.podman {
            s += &format!("\npodman: podman -c {} ...", v.name);
        }
        if registered.docker == machine::docker::Context::Registered {
            s += &format!("\ndocker: docker --context {} ...", v.name);
        }
        s
    });
    Ok(())
}

/// A started GPU machine whose guest fell back to software rendering works, but not as asked.
fn warn_without_venus(
    home: &Home,
    m: &machine::MachineDir,
    o: &lifecycle::StartOptions,
    spec: &store::Spec,
) {
    let report = check_image(home, spec).and_then(|image| {
        let gpu = machine::gpu::MachineGpu::of(spec, o)?;
        Ok(machine::gpu::check(m, o, gpu, &image, Scope::Vm)?)
    });
    match report {
        Ok(r) if r.device.is_some() => {}
        Ok(r) => {
            let why = r.missing.map(|m| m.detail).unwrap_or_default();
            eprintln!(
                "warning: the guest has no Venus GPU ({why}); `carbon-vm gpu check {}` says why",
                m.name
            );
        }
        Err(e) => eprintln!("warning: could not check the guest's GPU: {e:#}"),
    }
}

pub fn stop(a: StopArgs, home: &Home, out: Printer) -> anyhow::Result<()> {
    let m = store(home).open(&a.name)?;
    let o = settings::start_options(home)?;
    lifecycle::stop(&m, &o, a.force)?;
    let v = view(&m, &o)?;
    out.record(&v, || format!("stopped {}", v.name));
    Ok(())
}

pub fn set(a: SetArgs, home: &Home, out: Printer) -> anyhow::Result<()> {
    let m = store(home).open(&a.name)?;
    let o = settings::start_options(home)?;
    let changes = lifecycle::Changes {
        cpus: a.cpus,
        memory_mib: a.memory,
        disk_gib: a.disk_size,
    };
    lifecycle::set(&m, &o, changes)?;
    let v = view(&m, &o)?;
    out.record(&v, || format!("changed {}", line(&v)));
    Ok(())
}

pub fn rm(a: RmArgs, home: &Home, out: Printer) -> anyhow::Result<()> {
    let st = store(home);
    let m = st.open(&a.name)?;
    lifecycle::remove(&st, &m, &settings::start_options(home)?, a.force)?;
    #[derive(Serialize)]
    struct Removed<'a> {
        name: &'a str,
    }
    out.record(&Removed { name: &a.name }, || format!("removed {}", a.name));
    Ok(())
}

pub fn list(home: &Home, out: Printer) -> anyhow::Result<()> {
    let st = store(home);
    let o = settings::start_options(home)?;
    let mut views = Vec::new();
    for n in st.names()? {
        views.push(view(&st.open(&n)?, &o)?);
    }
    out.record(&views, || {
        if views.is_empty() {
            "no machines".into()
        } else {
            views.iter().map(line).collect::<Vec<_>>().join("\n")
        }
    });
    Ok(())
}

pub fn inspect(a: NameArg, home: &Home, out: Printer) -> anyhow::Result<()> {
    let v = view(&store(home).open(&a.name)?, &settings::start_options(home)?)?;
    out.record(&v, || serde_json::to_string_pretty(&v).expect("serializes"));
    Ok(())
}

pub fn ssh(a: SshArgs, home: &Home) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let m = store(home).open(&a.name)?;
    let err = lifecycle::ssh(&m, &settings::start_options(home)?)?
        .args(&a.command)
        .exec();
    Err(anyhow::anyhow!(err).context("cannot run ssh (install openssh-client)"))
}

/// The container image the machine's guest image bundles for GPU checks.
fn check_image(home: &Home, spec: &store::Spec) -> anyhow::Result<String> {
    let img = Cache::open(&home.images)?.get(&spec.image.to_string())?;
    img.manifest
        .bundles
        .container_images
        .first()
        .map(|c| c.name.clone())
        .ok_or_else(|| anyhow::anyhow!("the machine's guest image bundles no container image"))
}

pub fn gpu_check(a: GpuCheckArgs, home: &Home, out: Printer) -> anyhow::Result<()> {
    let m = store(home).open(&a.name)?;
    let spec = m.spec()?;
    let start = settings::start_options(home)?;
    let gpu = machine::gpu::MachineGpu::of(&spec, &start)?;
    let (image, scope) = match (gpu.present, a.image) {
        (true, Some(image)) => (image, Scope::ContainerCdi),
        (true, None) => (check_image(home, &spec)?, Scope::Container),
        (false, _) => (String::new(), Scope::Container),
    };
    let mut report = machine::gpu::check(&m, &start, gpu, &image, scope)?;
    // The Venus workload runs only on a machine whose Venus works; the ggml device's needs
    // no Venus.
    let workload =
        match (a.workload, &report.missing) {
            (Some(Workload::Llama), None) => Some(WorkloadReport::Venus(
                machine::gpu::check_llama(&m, &start, &a.workload_image)?,
            )),
            (Some(Workload::LlamaRpc), _) => Some(WorkloadReport::Rpc(
                machine::gpu::check_llama_rpc(&m, &start, &a.workload_image)?,
            )),
            _ => None,
        };
    // Read last, so the blobs of every Vulkan program above are in it.
    report.blobs = gpu.blob_audit(&m);
    #[derive(Serialize)]
    struct Record<'a> {
        #[serde(flatten)]
        venus: &'a machine::host::GpuReport,
        #[serde(skip_serializing_if = "Option::is_none")]
        workload: Option<&'a WorkloadReport>,
    }
    let record = Record {
        venus: &report,
        workload: workload.as_ref(),
    };
    out.record(&record, || {
        let mut venus = match &report.missing {
            None => format!(
                "ok: {} ({}, Vulkan {}) in the VM and in a container",
                report.device.as_deref().unwrap_or_default(),
                report.driver_info.as_deref().unwrap_or_default(),
                report.api_version.as_deref().unwrap_or_default(),
            ),
            Some(m) => format!("FAILED at {}: {}", m.link.name(), m.detail),
        };
        if let Some(b) = &report.blobs {
            venus.push('\n');
            venus.push_str(&blob_line(b));
        }
        match &workload {
            None => venus,
            Some(w) => match w.failure() {
                None => format!(
                    "{venus}\nok: llama.cpp ran {} layers on {} and decoded as the CPU does: {:?}",
                    w.layers().unwrap_or_default(),
                    w.device().unwrap_or_default(),
                    w.text()
                ),
                Some(f) => format!("{venus}\nFAILED: llama.cpp workload: {f}"),
            },
        }
    });
    // The ggml device's workload is its own check: its failure first.
    if let Some(WorkloadReport::Rpc(w)) = &workload
        && let Some(f) = &w.failure
    {
        return Err(WorkloadFailed(f.clone(), machine::host::LLAMA_RPC_HINT).into());
    }
    if let Some(m) = report.missing {
        return Err(GpuCheckFailed(m).into());
    }
    if a.mac_pages && !gpu.mac_pages_ok(report.blobs.as_ref()) {
        return Err(MacPagesFailed(report.blobs.map_or_else(
            || "this machine's VMM records no GPU blob sizes".into(),
            |b| blob_line(&b),
        ))
        .into());
    }
    match workload.as_ref().and_then(WorkloadReport::failure) {
        Some(f) => Err(WorkloadFailed(f.to_owned(), machine::host::LLAMA_HINT).into()),
        None => Ok(()),
    }
}

/// What `gpu check --workload` ran: llama.cpp on Venus, or through the ggml device.
#[derive(Serialize)]
#[serde(untagged)]
enum WorkloadReport {
    Venus(machine::host::LlamaReport),
    Rpc(machine::host::LlamaRpcReport),
}

impl WorkloadReport {
    fn failure(&self) -> Option<&str> {
        match self {
            Self::Venus(w) => w.failure.as_deref(),
            Self::Rpc(w) => w.failure.as_deref(),
        }
    }
    fn layers(&self) -> Option<&str> {
        match self {
            Self::Venus(w) => w.layers.as_deref(),
            Self::Rpc(w) => w.layers.as_deref(),
        }
    }
    fn device(&self) -> Option<&str> {
        match self {
            Self::Venus(w) => w.device.as_deref(),
            Self::Rpc(w) => w.device.as_deref(),
        }
    }
    fn text(&self) -> &str {
        match self {
            Self::Venus(w) => &w.vulkan_text,
            Self::Rpc(w) => &w.rpc_text,
        }
    }
}

/// `gpu check` found a broken link; its hint says how to mend it.
#[derive(Debug, thiserror::Error)]
#[error("Venus does not work in the machine: {} (link: {})", .0.detail, .0.link.name())]
pub struct GpuCheckFailed(pub machine::host::GpuMissing);

impl Classify for GpuCheckFailed {
    fn class(&self) -> Option<Class> {
        Some(Code::GpuCheck.hint(self.0.hint))
    }
}

fn blob_line(b: &machine::host::BlobAudit) -> String {
    if b.mac_ok {
        format!(
            "ok: all {} GPU blobs are 16 KiB multiples (largest {} bytes): a Mac host maps them",
            b.blobs, b.max_size
        )
    } else if b.blobs == 0 {
        "GPU blobs: none created yet".into()
    } else {
        format!(
            "note: {} of {} GPU blobs are not 16 KiB multiples (sizes {:?}): Venus in this guest would fail on a Mac host",
            b.unaligned, b.blobs, b.unaligned_sizes
        )
    }
}

/// `gpu check --mac-pages` saw blobs a Mac host could not map (or none).
#[derive(Debug, thiserror::Error)]
#[error("the guest's GPU memory would not map on a Mac host: {0}")]
pub struct MacPagesFailed(pub String);

impl Classify for MacPagesFailed {
    fn class(&self) -> Option<Class> {
        Some(Code::GpuCheck.hint(
            "a 16 KiB-page guest kernel rounds every blob (the aarch64 default image boots one); \
             on a 4 KiB-page guest only a Mesa that aligns its allocations to 16 KiB does",
        ))
    }
}

/// `gpu check --workload` ran the workload and it failed; the hint says what to do.
#[derive(Debug, thiserror::Error)]
#[error("the GPU workload failed: {0}")]
pub struct WorkloadFailed(pub String, pub &'static str);

impl Classify for WorkloadFailed {
    fn class(&self) -> Option<Class> {
        Some(Code::GpuCheck.hint(self.1))
    }
}

pub fn env(a: NameArg, home: &Home, out: Printer) -> anyhow::Result<()> {
    let m = store(home).open(&a.name)?;
    let uri = format!("unix://{}", m.socket(store::PODMAN_SOCKET).display());
    #[derive(Serialize)]
    struct Env<'a> {
        #[serde(rename = "CONTAINER_HOST")]
        container_host: &'a str,
        #[serde(rename = "DOCKER_HOST")]
        docker_host: &'a str,
    }
    out.record(
        &Env {
            container_host: &uri,
            docker_host: &uri,
        },
        || {
            // Quoted for `eval "$(carbon-vm env NAME)"`: a home with a space or `$` stays one word.
            let uri = shlex::try_quote(&uri).unwrap_or_else(|_| uri.clone().into());
            format!("export CONTAINER_HOST={uri}\nexport DOCKER_HOST={uri}")
        },
    );
    Ok(())
}

/// docs/cli.md's field lists are the records' (`--json` is stable: a field renamed or added in
/// the code and not in the docs, or the other way round, fails here).
#[cfg(test)]
mod docs_contract {
    use super::*;

    const CLI_MD: &str = include_str!("../../docs/cli.md");

    /// The top-level names of the brace list that follows `marker` in docs/cli.md: `{a, b (..,
    /// ..), c: {..}}` gives a, b, c.
    fn documented(marker: &str) -> Vec<String> {
        let at = CLI_MD
            .find(marker)
            .unwrap_or_else(|| panic!("docs/cli.md: no {marker:?}"));
        let text = &CLI_MD[at + marker.len()..];
        let text = &text[text.find('{').expect("a field list") + 1..];
        let (mut depth, mut fields, mut word, mut taking) = (0, Vec::new(), String::new(), true);
        for c in text.chars() {
            match c {
                '{' | '(' | '[' => depth += 1,
                '}' | ')' | ']' if depth == 0 => break,
                '}' | ')' | ']' => depth -= 1,
                ',' if depth == 0 => {
                    fields.push(std::mem::take(&mut word));
                    taking = true;
                    continue;
                }
                _ => {}
            }
            if depth == 0 && taking {
                if c.is_ascii_alphanumeric() || c == '_' {
                    word.push(c);
                } else if !word.is_empty() {
                    taking = false;
                }
            }
        }
        fields.push(word);
        fields.retain(|f| !f.is_empty());
        fields
    }

    fn keys(v: &serde_json::Value) -> Vec<String> {
        v.as_object().unwrap().keys().cloned().collect()
    }

    fn same(mut doc: Vec<String>, mut code: Vec<String>, what: &str) {
        doc.sort();
        code.sort();
        assert_eq!(
            doc, code,
            "docs/cli.md's {what} (left) against the code's (right)"
        );
    }

    #[test]
    fn the_machine_record_is_as_documented() {
        let view = MachineView {
            name: "dev".into(),
            state: State::Broken("why".into()),
            driver: machine::DriverKind::Qemu,
            arch: "x86_64".into(),
            cpus: 2,
            memory_mib: 4096,
            disk_gib: 8,
            gpu: true,
            ggml: Some(lifecycle::GgmlStatus {
                running: true,
                server_pid: Some(1),
                rpc_version: Some("8.0.0".into()),
                starts: 1,
                log: "ggml.log".into(),
            }),
            image: guest_image::Sha256Digest::of(b""),
            volumes: Vec::new(),
            ssh_port: Some(22),
            podman_socket: "podman.sock".into(),
            dir: "dir".into(),
        };
        let v = serde_json::to_value(&view).unwrap();
        same(
            documented("A machine record: `"),
            keys(&v),
            "machine record",
        );
        same(
            documented("machines created with `--ggml`: `"),
            keys(&v["ggml"]),
            "machine record's ggml",
        );
    }

    #[test]
    fn the_llama_rpc_workload_record_is_as_documented() {
        let w = machine::host::LlamaRpcReport {
            ok: true,
            device: None,
            layers: None,
            rpc_text: String::new(),
            cpu_text: String::new(),
            image_ggml: None,
            failure: None,
        };
        let v = serde_json::to_value(WorkloadReport::Rpc(w)).unwrap();
        same(
            documented("with `--workload llama-rpc` `workload: "),
            keys(&v),
            "llama-rpc workload",
        );
    }

    /// Every exit code src/exit.rs declares is in docs/cli.md's table, and nothing else is.
    #[test]
    fn the_exit_codes_are_as_documented() {
        let section = &CLI_MD[CLI_MD.find("## Exit codes").unwrap()..];
        let section = &section[..section[3..].find("\n## ").unwrap()];
        let mut doc: Vec<u8> = section
            .lines()
            .filter_map(|l| l.strip_prefix("| ")?.split(' ').next()?.parse().ok())
            .collect();
        let mut code: Vec<u8> = include_str!("../exit.rs")
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("pub const ")?;
                let (_, value) = rest.split_once(": u8 = ")?;
                value.trim_end_matches(';').parse().ok()
            })
            .chain([0])
            .collect();
        doc.sort_unstable();
        code.sort_unstable();
        assert_eq!(
            doc, code,
            "docs/cli.md's exit codes (left) against src/exit.rs's"
        );
    }
}
