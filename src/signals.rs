//! Waiting for SIGTERM or SIGINT, the signals that ask the service to stop.

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Blocks until SIGTERM or SIGINT arrives; returns its name.
pub fn wait_for_stop() -> std::io::Result<&'static str> {
    let mut signals = Signals::new([SIGTERM, SIGINT])?;
    let signal = signals.forever().next();
    Ok(match signal {
        Some(SIGINT) => "SIGINT",
        _ => "SIGTERM",
    })
}
