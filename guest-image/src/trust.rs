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

/// The keys a manifest signature must verify against.
#[derive(Default)]
pub struct Trust {
    keys: Vec<PublicKey>,
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
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') || line.starts_with("untrusted comment:") {
                continue;
            }
            let key =
                PublicKey::from_base64(line).map_err(|_| TrustError::BadKey(line.to_owned()))?;
            self.keys.push(key);
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Verifies `signature` (a `.minisig` file's text) over `data`.
    pub fn verify(&self, data: &[u8], signature: &str) -> Result<(), TrustError> {
        let sig = Signature::decode(signature).map_err(|_| TrustError::BadSignature)?;
        if self
            .keys
            .iter()
            .any(|k| k.verify(data, &sig, false).is_ok())
        {
            Ok(())
        } else {
            Err(TrustError::Untrusted)
        }
    }
}
