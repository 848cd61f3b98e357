//! carbon-vm's VMM drivers behind one narrow trait: krunkit (macOS), qemu and libkrun (Linux).

pub mod gvproxy;
pub mod krunkit;
pub mod kvm;
pub mod qemu;
pub mod qmp;

use serde::{Deserialize, Serialize};

/// The VMMs carbon-vm can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    Qemu,
    Krunkit,
    Libkrun,
}

impl DriverKind {
    pub const ALL: [DriverKind; 3] = [DriverKind::Qemu, DriverKind::Krunkit, DriverKind::Libkrun];

    pub fn name(self) -> &'static str {
        match self {
            DriverKind::Qemu => "qemu",
            DriverKind::Krunkit => "krunkit",
            DriverKind::Libkrun => "libkrun",
        }
    }

    /// The driver a machine gets when `--driver` is not given.
    pub fn host_default() -> DriverKind {
        if cfg!(target_os = "macos") {
            DriverKind::Krunkit
        } else {
            DriverKind::Qemu
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown driver {0:?} (expected one of: qemu, krunkit, libkrun)")]
pub struct UnknownDriver(pub String);

impl std::str::FromStr for DriverKind {
    type Err = UnknownDriver;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DriverKind::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| UnknownDriver(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_is_refused() {
        for d in DriverKind::ALL {
            assert_eq!(d.name().parse::<DriverKind>().unwrap(), d);
        }
        assert!("vbox".parse::<DriverKind>().is_err());
    }
}
