//! SIGTERM and SIGINT, the signals that ask the service to stop.
//!
//! Until the service is up (the first contact with the database can take seconds), a stop
//! signal ends the process at once, as if nothing handled it. Once it serves, a signal starts
//! the graceful shutdown instead.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use signal_hook::low_level::emulate_default_handler;

/// Stop signals, caught from the moment this is made (so make it before announcing that the
/// service listens: a signal that came earlier would still kill the process outright).
pub struct StopSignals {
    serving: Arc<AtomicBool>,
    received: mpsc::Receiver<i32>,
}

impl StopSignals {
    pub fn register() -> std::io::Result<StopSignals> {
        let mut signals = Signals::new([SIGTERM, SIGINT])?;
        let serving = Arc::new(AtomicBool::new(false));
        let (tx, received) = mpsc::channel();
        let armed = serving.clone();
        thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for signal in signals.forever() {
                    if !armed.load(Ordering::SeqCst) {
                        // Not serving yet: stop the way an unhandled signal stops a process
                        // (the parent sees "killed by SIGTERM", exit status 143 in a shell).
                        let _ = emulate_default_handler(signal);
                        std::process::exit(128 + signal);
                    }
                    if tx.send(signal).is_err() {
                        return;
                    }
                }
            })?;
        Ok(StopSignals { serving, received })
    }

    /// From now on a signal asks for a graceful shutdown (see `wait`).
    pub fn serving(&self) {
        self.serving.store(true, Ordering::SeqCst);
    }

    /// Blocks until the next stop signal; returns its name.
    pub fn wait(&mut self) -> &'static str {
        match self.received.recv() {
            Ok(SIGINT) => "SIGINT",
            _ => "SIGTERM",
        }
    }
}
