//! Ctrl-C: the handler (installed once per process) only raises a flag. `train` checks
//! it after each outer step; the passes of `score` and `filter` check it between
//! blocks and shards and stop with [`INTERRUPTED`] (temporary files are removed as
//! their writers drop); each command then says how to continue.

use crate::error::{CliError, Result};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);
static EXTERNAL: AtomicBool = AtomicBool::new(false);
static INSTALLED: OnceLock<std::result::Result<(), String>> = OnceLock::new();

/// The message of the error a pass stops with.
pub const INTERRUPTED: &str = "interrupted (Ctrl-C)";

/// Installs the handler (once per process; later calls return the first outcome). A
/// second Ctrl-C while the first is being handled ends the process at once.
///
/// # Errors
/// The handler cannot be installed.
pub fn install() -> Result<()> {
    if EXTERNAL.load(Ordering::SeqCst) {
        return Ok(());
    }
    INSTALLED
        .get_or_init(|| {
            ctrlc::set_handler(|| {
                if STOP.swap(true, Ordering::SeqCst) {
                    std::process::exit(130);
                }
            })
            .map_err(|e| format!("cannot install the Ctrl-C handler: {e}"))
        })
        .clone()
        .map_err(CliError)
}

/// For a program that runs these commands and handles Ctrl-C itself (the Python
/// module, whose interpreter owns SIGINT): from now on [`install`] installs nothing,
/// and the program calls [`request`] when its user interrupts.
pub fn handle_externally() {
    EXTERNAL.store(true, Ordering::SeqCst);
}

/// Asks the running command to stop, as Ctrl-C does (see [`handle_externally`]).
pub fn request() {
    STOP.store(true, Ordering::SeqCst);
}

/// Forgets an earlier Ctrl-C (a library caller may run commands one after another).
pub fn reset() {
    STOP.store(false, Ordering::SeqCst);
}

/// Whether Ctrl-C was pressed.
pub fn requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Fails with [`INTERRUPTED`] once Ctrl-C was pressed.
///
/// # Errors
/// As above.
pub fn check() -> Result<()> {
    if requested() {
        return Err(CliError(INTERRUPTED.into()));
    }
    Ok(())
}

/// Whether `e` is the error of an interrupted pass.
pub fn interrupted(e: &CliError) -> bool {
    e.0.ends_with(INTERRUPTED)
}
