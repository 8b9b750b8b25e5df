//! SIGTERM and SIGINT, the signals that ask the service to stop.

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Stop signals, caught from the moment this is made (so make it before announcing that the
/// service listens: a signal that came earlier would still kill the process outright).
pub struct StopSignals(Signals);

impl StopSignals {
    pub fn register() -> std::io::Result<StopSignals> {
        Ok(StopSignals(Signals::new([SIGTERM, SIGINT])?))
    }

    /// Blocks until the next stop signal; returns its name.
    pub fn wait(&mut self) -> &'static str {
        match self.0.forever().next() {
            Some(SIGINT) => "SIGINT",
            _ => "SIGTERM",
        }
    }
}
