//! The command line's error: one human-readable message (printed as `error: ...`).

use std::fmt;

/// A failure to report to the user; its `Display` is the whole message.
#[derive(Debug)]
pub struct CliError(pub String);

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CliError {}

impl From<datarater::Error> for CliError {
    fn from(e: datarater::Error) -> Self {
        CliError(e.to_string())
    }
}

/// Result alias of the command line.
pub type Result<T, E = CliError> = std::result::Result<T, E>;

/// Returns early with a formatted [`CliError`].
#[macro_export]
macro_rules! fail {
    ($($arg:tt)*) => {
        return Err($crate::error::CliError(format!($($arg)*)))
    };
}

/// An I/O error on `path`, as a message naming it.
pub fn io_error(path: &std::path::Path, what: &str, e: std::io::Error) -> CliError {
    CliError(format!("{}: {what}: {e}", path.display()))
}
