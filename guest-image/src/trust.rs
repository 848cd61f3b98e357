//! Minisign (ed25519) signatures over the manifest, checked against pinned public keys.

use minisign_verify::{PublicKey, Signature};

/// The project's release keys, pinned at build time.
const PINNED_KEYS: &str = include_str!("../../configs/trusted-keys.pub");

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("public key {0:?} is not a minisign public key")]
    BadKey(String),
    #[error("the signature member is not a minisign signature")]
    BadSignature,
    #[error("the manifest signature does not verify against any trusted key")]
    Untrusted,
}

/// The keys a manifest signature must verify against, each with its base64 text (its identity
/// in a cache record).
#[derive(Default)]
pub struct Trust {
    keys: Vec<(String, PublicKey)>,
}

/// The base64 key lines of a minisign `.pub` text (comments skipped), unchecked.
pub fn key_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with("untrusted comment:"))
}

impl Trust {
    /// The pinned keys plus the user's own (`*.pub` files or base64 lines, minisign format).
    pub fn with_pinned(extra: &[String]) -> Result<Self, TrustError> {
        let mut t = Trust::default();
        t.add_keys(PINNED_KEYS)?;
        for text in extra {
            t.add_keys(text)?;
        }
        Ok(t)
    }

    /// Adds every key in a minisign `.pub` text: comment lines are skipped.
    pub fn add_keys(&mut self, text: &str) -> Result<(), TrustError> {
        for line in key_lines(text) {
            let key =
                PublicKey::from_base64(line).map_err(|_| TrustError::BadKey(line.to_owned()))?;
            self.keys.push((line.to_owned(), key));
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Verifies `signature` (a `.minisig` file's text) over `data`; returns the base64 text of
    /// the key it verified against.
    pub fn verify(&self, data: &[u8], signature: &str) -> Result<String, TrustError> {
        let sig = Signature::decode(signature).map_err(|_| TrustError::BadSignature)?;
        self.keys
            .iter()
            .find(|(_, k)| k.verify(data, &sig, false).is_ok())
            .map(|(text, _)| text.clone())
            .ok_or(TrustError::Untrusted)
    }
}
