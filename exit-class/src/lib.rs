//! What a failure means to a script. Each error type that decides carbon-vm's exit status says
//! so next to its definition ([`Classify`]); the CLI turns the first class found along an
//! error's chain into its exit code and hint (src/exit.rs), so no central table knows them all.

/// The exit statuses docs/cli.md lists, by meaning (src/exit.rs gives the numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Failure,
    Usage,
    NotFound,
    Verification,
    Fetch,
    /// The host lacks something (a tool, a package, a private runtime directory).
    Host,
    NotImplemented,
    GpuCheck,
    /// Another carbon-vm command is changing the machine.
    Busy,
}

/// An exit code and the hint printed under the error, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Class {
    pub code: Code,
    pub hint: Option<&'static str>,
}

impl Code {
    /// This code without a hint.
    pub const fn bare(self) -> Class {
        Class {
            code: self,
            hint: None,
        }
    }

    pub const fn hint(self, hint: &'static str) -> Class {
        Class {
            code: self,
            hint: Some(hint),
        }
    }
}

/// An error that knows its exit class.
pub trait Classify {
    /// `None`: this error leaves it to its causes further down the chain.
    fn class(&self) -> Option<Class>;
}

/// The hint of every host that lacks something `doctor` checks.
pub const DOCTOR_HINT: &str = "`carbon-vm doctor` lists what this host is missing";
