//! Text that comes from an artifact or a server (tar headers, manifest strings, registry answers)
//! is escaped before it reaches an error message, so it cannot drive the user's terminal.

use std::error::Error;
use std::fmt;

/// `s` with every character Rust would not print as is (control characters, bidi overrides)
/// written as an escape; printable unicode, quotes and backslashes stay.
pub fn escaped(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '"' | '\'' | '\\') {
            out.push(c);
        } else {
            out.extend(c.escape_debug());
        }
    }
    out
}

/// Whether `s` prints as itself (nothing in it needs escaping).
pub fn is_printable(s: &str) -> bool {
    escaped(s) == s
}

/// An error whose messages, its own and every cause's, came from outside: kept as escaped text,
/// chained as the original was.
#[derive(Debug)]
pub struct Untrusted {
    message: String,
    source: Option<Box<Untrusted>>,
}

impl Untrusted {
    pub fn from_error(e: &(dyn Error + 'static)) -> Self {
        Untrusted {
            message: escaped(&e.to_string()),
            source: e.source().map(|s| Box::new(Untrusted::from_error(s))),
        }
    }

    /// Wraps an owned error (for `map_err`).
    pub fn of(e: impl Error + 'static) -> Self {
        Self::from_error(&e)
    }
}

impl fmt::Display for Untrusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Error for Untrusted {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|s| s as &(dyn Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_through_the_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer \u{1b}[31m \"q\" \u{202e}")]
        struct Outer(#[source] std::io::Error);
        let e = Untrusted::of(Outer(std::io::Error::other("inner\u{7}\nü")));
        assert_eq!(e.to_string(), "outer \\u{1b}[31m \"q\" \\u{202e}");
        let cause = e.source().unwrap().to_string();
        assert_eq!(cause, "inner\\u{7}\\nü");
    }
}
