//! Where an image comes from: `http(s)://URL`, `oci://REGISTRY/REPO[:TAG|@sha256:DIGEST]`,
//! `file://PATH` or a plain local path.

use std::fmt;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Http(reqwest::Url),
    Oci(oci_client::Reference),
    File(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{0:?} is not a valid URL")]
    Url(String, #[source] url::ParseError),
    #[error("{0:?} is not a valid OCI reference (oci://REGISTRY/REPO[:TAG|@sha256:DIGEST])")]
    Oci(String, #[source] oci_client::ParseError),
}

impl exit_class::Classify for SourceError {
    fn class(&self) -> Option<exit_class::Class> {
        Some(exit_class::Code::Usage.bare())
    }
}

impl std::str::FromStr for Source {
    type Err = SourceError;
    fn from_str(s: &str) -> Result<Self, SourceError> {
        if s.starts_with("http://") || s.starts_with("https://") {
            let url = s.parse().map_err(|e| SourceError::Url(s.into(), e))?;
            Ok(Source::Http(url))
        } else if let Some(r) = s.strip_prefix("oci://") {
            let reference = r.parse().map_err(|e| SourceError::Oci(s.into(), e))?;
            Ok(Source::Oci(reference))
        } else {
            Ok(Source::File(PathBuf::from(
                s.strip_prefix("file://").unwrap_or(s),
            )))
        }
    }
}

impl Source {
    /// Whether the bytes can be resolved to a digest by the source itself (an OCI digest reference).
    pub fn digest_pinned(&self) -> bool {
        matches!(self, Source::Oci(r) if r.digest().is_some())
    }
}

/// Plain HTTP is used for a registry only on loopback (a local test or mirror registry).
pub fn is_loopback_host(registry: &str) -> bool {
    let host = registry
        .rsplit_once(':')
        .filter(|(h, port)| !h.ends_with(':') && port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(registry, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Http(u) => write!(f, "{u}"),
            Source::Oci(r) => write!(f, "oci://{}", r.whole()),
            Source::File(p) => write!(f, "{}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind() {
        assert!(matches!(
            "https://x.org/a.tar.zst".parse(),
            Ok(Source::Http(_))
        ));
        assert_eq!(
            "file:///tmp/a".parse::<Source>().unwrap(),
            Source::File("/tmp/a".into())
        );
        assert_eq!(
            "a.tar".parse::<Source>().unwrap(),
            Source::File("a.tar".into())
        );
        let Ok(Source::Oci(r)) = "oci://127.0.0.1:5000/carbon/guest:trixie".parse::<Source>()
        else {
            panic!("not oci")
        };
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "carbon/guest");
        assert_eq!(r.tag(), Some("trixie"));
        let d = format!("oci://localhost:5000/g@sha256:{}", "a".repeat(64));
        assert!(d.parse::<Source>().unwrap().digest_pinned());
        assert!("oci://reg/a b".parse::<Source>().is_err());
    }

    #[test]
    fn loopback_detection() {
        for h in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "quay.io",
            "10.0.0.1:5000",
            "ghcr.io:443",
            "localhost.evil.com",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }
}
