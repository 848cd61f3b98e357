//! The one place that maps a machine's driver kind to its `vmm::Driver`: a new driver is its
//! module in `vmm` and one line in [`driver_of`].

use crate::store::Spec;
use std::path::PathBuf;
use std::time::Duration;
use vmm::Arch;
use vmm::DriverKind;

/// How this host runs VMMs; the CLI chooses from its environment.
#[derive(Debug, Clone)]
pub struct StartOptions {
    pub accel: vmm::qemu::AccelChoice,
    /// The krunkit executable (a name looked up in PATH, or a path).
    pub krunkit: PathBuf,
    /// The gvproxy executable, likewise.
    pub gvproxy: PathBuf,
    /// From launching the VMM to the guest's Ready (default [`super::START_TIMEOUT`]).
    pub start_timeout: Duration,
    /// How long to wait for the Podman API once the guest is Ready; by default what is left of
    /// the start timeout.
    pub podman_timeout: Option<Duration>,
    /// carbon-vm's own directories (configuration, image cache, machines, runtime): hidden
    /// from every guest whose shared folder contains them, and never shared themselves.
    pub state_dirs: Vec<PathBuf>,
    /// The ggml device's server command line (crate::ggml): `ggml-rpc-server` and its options.
    pub ggml_server: Vec<String>,
}

/// A driver kind this carbon-vm has no implementation of (libkrun): `create` refuses it, so a
/// spec naming one is an older or edited file. It is refused, never run as another kind.
#[derive(Debug, thiserror::Error)]
#[error(
    "the {0} driver has no implementation in this carbon-vm: the machine cannot run (`carbon-vm rm` it and create it with --driver qemu or krunkit)"
)]
pub struct Unimplemented(pub &'static str);

/// The driver of a machine.
pub fn driver(spec: &Spec, o: &StartOptions) -> Result<Box<dyn vmm::Driver>, Unimplemented> {
    // `create` checked the architecture; an edited spec's unknown one is the host's.
    let arch = Arch::from_name(&spec.arch).unwrap_or(Arch::host());
    driver_of(
        spec.driver,
        arch,
        spec.podman_machine.as_ref().map(|p| p.rest_port),
        o,
    )
}

/// The driver of `kind` for an `arch` guest; `rest_port`: krunkit serves its REST API there
/// (for Podman).
pub fn driver_of(
    kind: DriverKind,
    arch: Arch,
    rest_port: Option<u16>,
    o: &StartOptions,
) -> Result<Box<dyn vmm::Driver>, Unimplemented> {
    match kind {
        DriverKind::Krunkit => Ok(Box::new(vmm::krunkit::Krunkit {
            runner: vmm::krunkit::Runner {
                binary: o.krunkit.clone(),
                ..vmm::krunkit::Runner::default()
            },
            rest_port,
        })),
        DriverKind::Qemu => Ok(Box::new(vmm::qemu::Qemu::new(arch, o.accel))),
        DriverKind::Libkrun => Err(Unimplemented(kind.name())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unimplemented_kind_is_refused_not_run_as_another() {
        let o = StartOptions {
            accel: vmm::qemu::AccelChoice::Auto,
            krunkit: "krunkit".into(),
            gvproxy: "gvproxy".into(),
            start_timeout: Duration::from_secs(1),
            podman_timeout: None,
            state_dirs: Vec::new(),
            ggml_server: Vec::new(),
        };
        for kind in DriverKind::ALL {
            match driver_of(kind, Arch::host(), None, &o) {
                Ok(d) => assert_eq!(d.kind(), kind),
                Err(e) => {
                    assert_eq!(kind, DriverKind::Libkrun);
                    assert!(e.to_string().contains("libkrun"), "{e}");
                }
            }
        }
        assert!(driver_of(DriverKind::Libkrun, Arch::host(), None, &o).is_err());
    }
}
