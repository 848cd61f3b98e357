//! Progress reporting. Library code never prints: it calls this trait, which the CLI implements
//! (a progress bar on a terminal, nothing otherwise).

pub trait Progress: Send + Sync {
    /// A new step begins; `total` is its size in bytes when known.
    fn begin(&self, step: &str, total: Option<u64>);
    fn advance(&self, bytes: u64);
    /// The current step is done.
    fn finish(&self);
}

/// Reports nothing.
pub struct Silent;

impl Progress for Silent {
    fn begin(&self, _: &str, _: Option<u64>) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}
