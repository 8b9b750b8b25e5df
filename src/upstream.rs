//! Calls to providers: shared ureq agents, every call bounded by `UPSTREAM_TIMEOUT_MS`,
//! failures mapped to our own 502/504 without a URL or a key in the message.

use std::error::Error as _;
use std::io::{self, Read};
use std::time::Duration;

use crate::error::ApiError;

/// The most of an upstream answer we hold in memory (non-streaming).
const MAX_RESPONSE_BYTES: u64 = 64 * 1024 * 1024;

/// The HTTP client for every provider. Cloning shares its connection pools.
#[derive(Clone)]
pub struct Upstream {
    /// Whole calls: pooled connections, each call under one deadline.
    agent: ureq::Agent,
    /// Streams: a fresh connection each. ureq 2 clears a pooled socket's timeouts and only
    /// sets the read timeout again once the body is read, so on a reused connection the wait
    /// for the answer's head would be unbounded; a new connection has it from the start.
    streams: ureq::Agent,
    timeout: Duration,
}

/// An upstream's answer, read whole.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// An upstream's answer whose body is still arriving.
pub struct Streaming {
    pub status: u16,
    pub content_type: String,
    pub body: Box<dyn Read + Send>,
}

impl Upstream {
    pub fn new(timeout: Duration, pool_per_host: usize) -> Upstream {
        let builder = || {
            ureq::AgentBuilder::new()
                .timeout_connect(timeout)
                // Per read: for streams this bounds the first byte and every gap between events.
                .timeout_read(timeout)
                .timeout_write(timeout)
                .no_delay(true)
                .redirects(0)
                .user_agent(concat!("switcher-api/", env!("CARGO_PKG_VERSION")))
        };
        Upstream {
            agent: builder()
                .max_idle_connections(pool_per_host * 4)
                .max_idle_connections_per_host(pool_per_host)
                .build(),
            streams: builder().max_idle_connections(0).build(),
            timeout,
        }
    }

    fn request(
        agent: &ureq::Agent,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
    ) -> ureq::Request {
        headers
            .iter()
            .fold(agent.request(method, url), |r, (n, v)| r.set(n, v))
    }

    /// A whole call (request and answer) within the timeout.
    pub fn call(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Answer, ApiError> {
        let request = Self::request(&self.agent, method, url, headers).timeout(self.timeout);
        let response = respond(match body {
            Some(b) => request.send_bytes(b),
            None => request.call(),
        })?;
        let status = response.status();
        let body = self.read_body(&mut response.into_reader())?;
        Ok(Answer { status, body })
    }

    /// Reads an answer's body whole, up to `MAX_RESPONSE_BYTES`.
    pub fn read_body(&self, reader: &mut dyn Read) -> Result<Vec<u8>, ApiError> {
        let mut body = Vec::new();
        reader
            .take(MAX_RESPONSE_BYTES + 1)
            .read_to_end(&mut body)
            .map_err(|e| self.io_failure(&e))?;
        if body.len() as u64 > MAX_RESPONSE_BYTES {
            return Err(ApiError::BadGateway(format!(
                "upstream answer is larger than {} MiB",
                MAX_RESPONSE_BYTES >> 20
            )));
        }
        Ok(body)
    }

    /// Sends the request and returns once the answer's head is in; the body is read later,
    /// each read bounded by the timeout but not the whole.
    pub fn open_stream(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Streaming, ApiError> {
        let response =
            respond(Self::request(&self.streams, "POST", url, headers).send_bytes(body))?;
        Ok(Streaming {
            status: response.status(),
            content_type: response.content_type().to_string(),
            body: Box::new(response.into_reader()),
        })
    }

    /// Maps a failure while reading an answer's body.
    pub fn io_failure(&self, e: &io::Error) -> ApiError {
        if is_timeout_io(e) {
            self.timed_out()
        } else {
            ApiError::BadGateway(format!("upstream connection failed: {}", io_reason(e)))
        }
    }

    fn timed_out(&self) -> ApiError {
        ApiError::GatewayTimeout(format!(
            "upstream did not answer within {} ms (UPSTREAM_TIMEOUT_MS)",
            self.timeout.as_millis()
        ))
    }
}

/// Keeps every HTTP status as an answer; turns transport failures into 502/504.
fn respond(result: Result<ureq::Response, ureq::Error>) -> Result<ureq::Response, ApiError> {
    match result {
        Ok(r) | Err(ureq::Error::Status(_, r)) => Ok(r),
        Err(ureq::Error::Transport(t)) => Err(transport_failure(&t)),
    }
}

fn transport_failure(t: &ureq::Transport) -> ApiError {
    if t.kind() == ureq::ErrorKind::Dns {
        return ApiError::BadGateway("upstream unreachable: its host name does not resolve".into());
    }
    let mut source = t.source();
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if is_timeout_io(io) {
                return ApiError::GatewayTimeout(
                    "upstream did not answer in time (UPSTREAM_TIMEOUT_MS)".into(),
                );
            }
            return ApiError::BadGateway(format!("upstream unreachable: {}", io_reason(io)));
        }
        source = e.source();
    }
    // The kind's description never carries the URL (which is the profile's base_url).
    let reason = match t.kind() {
        ureq::ErrorKind::ConnectionFailed => "the connection failed",
        ureq::ErrorKind::InvalidUrl | ureq::ErrorKind::UnknownScheme => {
            "the profile's base_url is not a usable URL"
        }
        ureq::ErrorKind::BadStatus | ureq::ErrorKind::BadHeader => "it answered invalid HTTP",
        _ => "the request failed",
    };
    ApiError::BadGateway(format!("upstream unreachable: {reason}"))
}

fn is_timeout_io(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

fn io_reason(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused",
        io::ErrorKind::ConnectionReset => "connection reset",
        io::ErrorKind::ConnectionAborted => "connection aborted",
        io::ErrorKind::UnexpectedEof => "connection closed before a full answer",
        io::ErrorKind::BrokenPipe => "connection closed",
        io::ErrorKind::InvalidData => "invalid answer",
        _ => "I/O error",
    }
}
