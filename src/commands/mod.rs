//! One module per verb group.

pub mod doctor;
pub mod image;
pub mod machine;
pub mod shell;
