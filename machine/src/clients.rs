//! The clients a started machine is reachable from by its name: Podman's connection
//! (`podman -c NAME`) and the docker CLI's context (`docker --context NAME`). Registered at each
//! start (the socket is the machine's, its path fixed), removed with the machine.

use crate::store::{MachineDir, PODMAN_SOCKET, Spec};
use crate::{docker, podman};

#[derive(Debug, thiserror::Error)]
pub enum ClientsError {
    #[error(transparent)]
    Podman(#[from] podman::PodmanError),
    #[error(transparent)]
    Docker(#[from] docker::DockerError),
}

/// What [`register`] did.
#[derive(Debug, Clone)]
pub struct Registered {
    /// False where no podman client is installed.
    pub podman: bool,
    pub docker: docker::Context,
}

pub fn register(m: &MachineDir, spec: &Spec) -> Result<Registered, ClientsError> {
    let socket = m.socket(PODMAN_SOCKET);
    Ok(Registered {
        podman: podman::add_connection(&spec.name, &socket, spec.podman_default)?,
        docker: docker::add_context(&spec.name, &socket),
    })
}

pub fn unregister(name: &str) -> Result<(), ClientsError> {
    podman::remove_connection(name)?;
    docker::remove_context(name)?;
    Ok(())
}
