//! `krunkit --version` (clap's format: `krunkit 1.2.0`): whether a krunkit is there, and which.

use std::path::{Path, PathBuf};

/// How a Mac user installs (or repairs) krunkit and its gvproxy.
pub const INSTALL_HINT: &str = "brew tap slp/krun && brew install krunkit";

/// The first krunkit whose REST API speaks JSON (see [`super::rest`]); older ones still work.
pub const JSON_REST: Version = Version {
    major: 1,
    minor: 3,
    patch: 0,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`krunkit --version` printed {0:?}, not krunkit's version (reinstall: {INSTALL_HINT})")]
pub struct VersionError(pub String);

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot run {}", .0.display())]
    Run(PathBuf, #[source] std::io::Error),
    #[error(transparent)]
    Version(#[from] VersionError),
}

/// Asks `binary --version` which krunkit it is.
pub fn probe(binary: &Path) -> Result<Version, ProbeError> {
    let out = std::process::Command::new(binary)
        .arg("--version")
        .output()
        .map_err(|e| ProbeError::Run(binary.to_owned(), e))?;
    Ok(parse_version(&String::from_utf8_lossy(&out.stdout))?)
}

/// Parses `krunkit --version` output.
pub fn parse_version(output: &str) -> Result<Version, VersionError> {
    let bad = || VersionError(output.trim().to_owned());
    let line = output.lines().next().ok_or_else(bad)?.trim();
    let v = line.strip_prefix("krunkit ").ok_or_else(bad)?.trim();
    // Pre-release or build suffixes (`1.3.0-rc1`, `1.3.0+git`) do not change the API level.
    let core = v.split(['-', '+']).next().unwrap_or(v);
    let mut parts = core.split('.').map(str::parse::<u32>);
    let mut next = || parts.next().ok_or_else(bad)?.map_err(|_| bad());
    let version = Version {
        major: next()?,
        minor: next()?,
        patch: next()?,
    };
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_version_lines() {
        assert_eq!(
            parse_version("krunkit 1.2.0\n"),
            Ok(Version {
                major: 1,
                minor: 2,
                patch: 0
            })
        );
        let v = parse_version("krunkit 1.3.1-rc1").unwrap();
        assert_eq!(v.to_string(), "1.3.1");
        assert!(v >= JSON_REST);
        assert!(parse_version("krunkit 0.2.4").unwrap() < JSON_REST);
    }

    #[test]
    fn anything_else_is_refused_with_the_install_hint() {
        for bad in [
            "",
            "vfkit 0.6.1",
            "krunkit",
            "krunkit 1.2",
            "krunkit 1.x.0",
            "krunkit 1.2.3.4",
        ] {
            let e = parse_version(bad).unwrap_err();
            assert!(e.to_string().contains("brew tap slp/krun"), "{bad}: {e}");
        }
    }
}
