//! One module per verb group.

pub mod doctor;
pub mod image;
pub mod machine;

/// Verbs whose implementation lands with a later milestone.
#[derive(Debug, thiserror::Error)]
#[error("`carbon-vm {0}` is not implemented yet")]
pub struct NotImplemented(pub &'static str);
