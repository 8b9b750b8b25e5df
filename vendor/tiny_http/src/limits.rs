//! Bounds on what one client connection may cost (switcher-api addition, see VENDORED.md).
//!
//! Unpatched tiny_http reads a request line and headers of any length into memory, sets no
//! read timeout on its sockets and accepts any number of connections, each with its own
//! thread: a client without any credentials can exhaust memory or threads. `Limits` bounds
//! all three; `Limits::default()` keeps the published behaviour (no bounds).

use std::fmt;
use std::io::Cursor;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{Response, StatusCode};

/// Builds the response tiny_http sends for a request it refuses by itself (400, 408, 414,
/// 417, 431, 505), so that a server can give them the same shape as its own errors.
pub type ErrorResponder = Arc<dyn Fn(StatusCode) -> Response<Cursor<Vec<u8>>> + Send + Sync>;

/// Limits applied to every accepted connection.
#[derive(Clone)]
pub struct Limits {
    /// Longest request line (without its CRLF); a longer one is answered 414 and the
    /// connection closed. Nothing beyond the limit is buffered.
    pub max_request_line: usize,
    /// Largest header block (field lines with their CRLFs); a larger one is answered 431.
    pub max_header_bytes: usize,
    /// Most header fields; more are answered 431.
    pub max_header_fields: usize,
    /// Time a request's line, headers and body may take, counted from its first byte. Past
    /// it, a read fails with `ErrorKind::TimedOut` (while reading headers: 408) and the
    /// connection is closed.
    pub request_timeout: Option<Duration>,
    /// Time a connection may wait for the first byte of its next request before it is
    /// closed (without an answer).
    pub idle_timeout: Option<Duration>,
    /// Most connections open at once; a connection accepted beyond it is closed at once and
    /// counted in `ConnectionCounters::refused`.
    pub max_connections: Option<usize>,
    /// Counters of open and refused connections, shared with whoever wants to publish them.
    pub counters: Arc<ConnectionCounters>,
    /// The responses to requests tiny_http refuses itself; empty bodies when `None`.
    pub error_response: Option<ErrorResponder>,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_request_line: usize::MAX,
            max_header_bytes: usize::MAX,
            max_header_fields: usize::MAX,
            request_timeout: None,
            idle_timeout: None,
            max_connections: None,
            counters: Arc::new(ConnectionCounters::default()),
            error_response: None,
        }
    }
}

impl fmt::Debug for Limits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limits")
            .field("max_request_line", &self.max_request_line)
            .field("max_header_bytes", &self.max_header_bytes)
            .field("max_header_fields", &self.max_header_fields)
            .field("request_timeout", &self.request_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

impl Limits {
    pub(crate) fn error(&self, status: u16) -> Response<Cursor<Vec<u8>>> {
        match &self.error_response {
            Some(make) => make(StatusCode(status)),
            None => Response::from_data(Vec::new()).with_status_code(status),
        }
    }
}

/// How many connections are open, and how many were refused for being over the limit.
#[derive(Debug, Default)]
pub struct ConnectionCounters {
    open: AtomicUsize,
    refused: AtomicU64,
}

impl ConnectionCounters {
    /// Connections accepted and not yet closed.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections closed at once because `max_connections` were already open.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    pub(crate) fn count_refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }
}

/// Held by both halves of an accepted socket: the connection counts as open until the last
/// of them (and so the descriptor) is gone.
pub(crate) struct OpenConnection(Arc<ConnectionCounters>);

impl OpenConnection {
    pub(crate) fn new(counters: Arc<ConnectionCounters>) -> Arc<OpenConnection> {
        counters.open.fetch_add(1, Ordering::Relaxed);
        Arc::new(OpenConnection(counters))
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No limit (the published behaviour, and a connection without `Limits`).
    Unbounded,
    /// Waiting for a request's first byte: each read may block this long.
    Idle(Duration),
    /// Inside a request: every read must be done by this instant.
    Until(Instant),
}

/// The read deadline of one connection, shared by its reading half (which applies it to the
/// socket before each read) and by the code that knows where a request starts.
#[derive(Debug)]
pub(crate) struct ReadControl {
    phase: Mutex<Phase>,
    /// Once set, reads return end of stream: after a timeout, or when the server asked for
    /// the connection to close.
    closed: AtomicBool,
}

impl ReadControl {
    pub(crate) fn new() -> Arc<ReadControl> {
        Arc::new(ReadControl {
            phase: Mutex::new(Phase::Unbounded),
            closed: AtomicBool::new(false),
        })
    }

    fn set(&self, phase: Phase) {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner()) = phase;
    }

    /// Between requests: wait at most `idle` for the next one (forever when `None`).
    pub(crate) fn idle(&self, idle: Option<Duration>) {
        self.set(idle.map_or(Phase::Unbounded, Phase::Idle));
    }

    /// A request's first byte arrived: the rest of it must be in within `timeout`.
    pub(crate) fn request_started(&self, timeout: Option<Duration>) {
        self.set(timeout.map_or(Phase::Unbounded, |t| Phase::Until(Instant::now() + t)));
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The socket timeout for the next read: `Err(())` when the deadline already passed,
    /// `Ok(None)` for no timeout.
    pub(crate) fn next_timeout(&self) -> Result<Option<Duration>, ()> {
        match *self.phase.lock().unwrap_or_else(|p| p.into_inner()) {
            Phase::Unbounded => Ok(None),
            Phase::Idle(d) => Ok(Some(d.max(Duration::from_millis(1)))),
            Phase::Until(at) => {
                let left = at.saturating_duration_since(Instant::now());
                // A zero timeout means "none" to set_read_timeout; the deadline has passed.
                if left < Duration::from_millis(1) {
                    Err(())
                } else {
                    Ok(Some(left))
                }
            }
        }
    }
}
