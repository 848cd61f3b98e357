//! The docker CLI's context for a machine, so that `docker --context NAME ...` and
//! `docker context use NAME` reach it as they reach Podman machine, Colima or Docker Desktop.
//! The context is written by the docker CLI itself (its store is its own; `DOCKER_CONFIG` says
//! where), only when one is installed, and points at the machine's forwarded API socket. A context
//! of the same name that carbon-vm did not make (its description says) is left alone.

use std::path::Path;
use std::process::{Command, Output};

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot run the docker CLI")]
    Spawn(#[source] std::io::Error),
    #[error("`docker {0}` failed: {1}")]
    Failed(String, String),
}

/// What [`add_context`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Context {
    /// Created, or re-pointed at this start's socket.
    Registered,
    /// No docker CLI here.
    NoDocker,
    /// The user has a context of that name that carbon-vm did not make: left as it was.
    Theirs,
    /// The docker CLI failed: the machine runs all the same (Podman's connection and `env` reach
    /// it); the reason is for a warning.
    Failed(String),
}

fn description(name: &str) -> String {
    format!("carbon-vm machine {name}")
}

/// Creates (or re-points) context `name` at `socket`, the machine's Podman API.
pub fn add_context(name: &str, socket: &Path) -> Context {
    if crate::host::which("docker").is_none() {
        return Context::NoDocker;
    }
    match register(name, socket) {
        Ok(c) => c,
        Err(e) => Context::Failed(e.to_string()),
    }
}

fn register(name: &str, socket: &Path) -> Result<Context, DockerError> {
    // `--docker` is one CSV record of key=value fields: the field quoted, since a path may hold a
    // comma (the runtime directory is carbon-vm's and a machine's name has no quote).
    let host = format!("\"host=unix://{}\"", socket.display());
    let ours = description(name);
    match current_description(name)? {
        None => docker(&[
            "context",
            "create",
            name,
            "--description",
            &ours,
            "--docker",
            &host,
        ])?,
        Some(d) if d == ours => docker(&["context", "update", name, "--docker", &host])?,
        Some(_) => return Ok(Context::Theirs),
    };
    Ok(Context::Registered)
}

/// Removes context `name` if carbon-vm made it; anything else is left alone.
pub fn remove_context(name: &str) -> Result<(), DockerError> {
    if crate::host::which("docker").is_none() {
        return Ok(());
    }
    if current_description(name)?.is_some_and(|d| d == description(name)) {
        // --force: the context may be the current one (`docker context use`).
        docker(&["context", "rm", "--force", name])?;
    }
    Ok(())
}

/// The description of context `name`, None if there is no such context.
fn current_description(name: &str) -> Result<Option<String>, DockerError> {
    let o = run(&["context", "inspect", name])?;
    if !o.status.success() {
        return Ok(None);
    }
    // A JSON list of one context; its Metadata is free-form (a template cannot name a field
    // that may be missing).
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .map_err(|e| DockerError::Failed(format!("context inspect {name}"), e.to_string()))?;
    Ok(Some(
        v[0]["Metadata"]["Description"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    ))
}

fn docker(args: &[&str]) -> Result<(), DockerError> {
    let o = run(args)?;
    if o.status.success() {
        return Ok(());
    }
    Err(DockerError::Failed(
        args.join(" "),
        String::from_utf8_lossy(&o.stderr).trim().to_owned(),
    ))
}

fn run(args: &[&str]) -> Result<Output, DockerError> {
    Command::new("docker")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(DockerError::Spawn)
}
