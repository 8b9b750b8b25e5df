//! Calls to providers: one ureq agent whose keep-alive connections (TLS sessions resumed) are
//! shared by whole calls and streams, every call bounded by `UPSTREAM_TIMEOUT_MS`, answers
//! bounded in size, failures mapped to our own 502/504 without a URL or a key in the message.

use std::io::{self, Read};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};
use ureq::unversioned::resolver::DefaultResolver;
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, DefaultConnector, NextTimeout, Transport,
};

use crate::error::ApiError;

/// The most of an upstream answer a worker holds in memory: a whole (non-streamed) answer, or
/// a stream sent to an HTTP/1.0 client as one body. Past it the answer is a 502.
pub const MAX_ANSWER_BYTES: usize = 32 * 1024 * 1024;

/// The largest response head (status line and headers) taken from an upstream; a larger one
/// is a 502. Providers send one or two KiB.
const MAX_RESPONSE_HEAD: usize = 32 * 1024;

/// What is read of a stream after its last event, to reach the end of its body so that the
/// connection can go back to the pool. An upstream that sends more is cut off instead.
const DRAIN_LIMIT: u64 = 64 * 1024;

/// Streams being drained at once (see `release`); past it a stream's connection is closed.
const MAX_DRAINS: usize = 64;

/// How long the end of a stream waits for its connection to be back in the pool.
const DRAIN_WAIT: Duration = Duration::from_millis(50);

/// The HTTP client for every provider. Cloning shares its connection pool.
#[derive(Clone)]
pub struct Upstream {
    agent: ureq::Agent,
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
    /// The body; each read is bounded by `UPSTREAM_TIMEOUT_MS`, the whole is not. Read to its
    /// end, it gives the connection back to the pool; dropped before, it closes it.
    pub body: Box<dyn Read + Send>,
}

impl Upstream {
    /// `extra_roots`: DER certificates trusted besides the bundled web roots.
    pub fn new(timeout: Duration, pool_per_host: usize, extra_roots: &[Vec<u8>]) -> Upstream {
        let roots = if extra_roots.is_empty() {
            RootCerts::WebPki
        } else {
            let web = webpki_root_certs::TLS_SERVER_ROOT_CERTS
                .iter()
                .map(|c| Certificate::from_der(c.as_ref()).to_owned());
            let extra = extra_roots
                .iter()
                .map(|der| Certificate::from_der(der).to_owned());
            RootCerts::Specific(Arc::new(web.chain(extra).collect()))
        };
        // Every timeout is set on the agent, none per request: a request-level configuration
        // makes ureq build a fresh rustls configuration (no session resumption) for each new
        // connection until the agent's own is cached. Whole calls get their overall deadline
        // from `call` instead.
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .proxy(None)
            .no_delay(true)
            .user_agent(concat!("switcher-api/", env!("CARGO_PKG_VERSION")))
            .tls_config(TlsConfig::builder().root_certs(roots).build())
            .timeout_connect(Some(timeout))
            .timeout_send_request(Some(timeout))
            .timeout_send_body(Some(timeout))
            // The wait for the answer's head, on a new or a reused connection alike.
            .timeout_recv_response(Some(timeout))
            // Per read: for a stream, every gap between events.
            .timeout_per_read(Some(timeout))
            .timeout_per_write(Some(timeout))
            // ureq fills both buffers of every connection with zeros up front, 128 KiB each
            // by default: with 64 pooled connections that alone was 16 MiB of RSS. The input
            // buffer must hold a whole response head (with room to spare); the output buffer
            // only the longest line of the request head (the rest is written in parts).
            .input_buffer_size(2 * MAX_RESPONSE_HEAD)
            .max_response_header_size(MAX_RESPONSE_HEAD)
            .output_buffer_size(16 * 1024)
            .max_idle_connections(pool_per_host * 4)
            .max_idle_connections_per_host(pool_per_host)
            .build();
        Upstream {
            agent: ureq::Agent::with_parts(
                config,
                DefaultConnector::new().chain(Coalescing),
                DefaultResolver::default(),
            ),
            timeout,
        }
    }

    fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<ureq::http::Response<ureq::Body>, ApiError> {
        let result = match (method, body) {
            ("GET", _) => headers
                .iter()
                .fold(self.agent.get(url), |r, (n, v)| r.header(*n, *v))
                .call(),
            (_, body) => headers
                .iter()
                .fold(self.agent.post(url), |r, (n, v)| r.header(*n, *v))
                .send(body.unwrap_or_default()),
        };
        result.map_err(|e| describe(&e, self.timeout))
    }

    /// A whole call (request and answer) within the timeout; the answer at most
    /// `MAX_ANSWER_BYTES`.
    pub fn call(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Answer, ApiError> {
        let deadline = Instant::now() + self.timeout;
        let response = self.send(method, url, headers, body)?;
        let status = response.status().as_u16();
        let declared = declared_length(&response);
        let mut reader = Deadline {
            inner: response.into_body().into_reader(),
            deadline,
        };
        let body = self.read_body(&mut reader, declared)?;
        Ok(Answer { status, body })
    }

    /// Reads an answer's body whole, up to `MAX_ANSWER_BYTES`; `declared` is its
    /// `Content-Length`, when it has one.
    pub fn read_body(
        &self,
        reader: &mut dyn Read,
        declared: Option<u64>,
    ) -> Result<Vec<u8>, ApiError> {
        if declared.is_some_and(|n| n > MAX_ANSWER_BYTES as u64) {
            return Err(too_large());
        }
        // A declared length is allocated once; otherwise the buffer doubles, which keeps it
        // under twice the answer.
        let mut body = Vec::with_capacity(declared.unwrap_or(0) as usize);
        reader
            .take(MAX_ANSWER_BYTES as u64 + 1)
            .read_to_end(&mut body)
            .map_err(|e| self.io_failure(&e))?;
        if body.len() > MAX_ANSWER_BYTES {
            return Err(too_large());
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
        let response = self.send("POST", url, headers, Some(body))?;
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase();
        Ok(Streaming {
            status: response.status().as_u16(),
            content_type,
            body: Box::new(response.into_body().into_reader()),
        })
    }

    /// Maps a failure while reading an answer's body.
    pub fn io_failure(&self, e: &io::Error) -> ApiError {
        if is_timeout_io(e) {
            return self.timed_out();
        }
        if let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<ureq::Error>()) {
            return describe(inner, self.timeout);
        }
        ApiError::BadGateway(format!("upstream connection failed: {}", io_reason(e)))
    }

    fn timed_out(&self) -> ApiError {
        timed_out(self.timeout)
    }
}

/// Gives a stream that already sent its last event back to the pool: what is left of its body
/// (normally just the end of the chunked encoding) is read, so that ureq keeps the connection.
///
/// The reading is done on a thread of its own, waited for only briefly: an upstream that sends
/// its last event and then keeps the body open must not hold the agent's answer back (the
/// drain then goes on for at most `UPSTREAM_TIMEOUT_MS` and ends in a closed connection).
pub fn release(mut body: Box<dyn Read + Send>) {
    static DRAINING: AtomicUsize = AtomicUsize::new(0);
    if DRAINING.fetch_add(1, Ordering::SeqCst) >= MAX_DRAINS {
        DRAINING.fetch_sub(1, Ordering::SeqCst);
        return;
    }
    let (done, drained) = mpsc::sync_channel::<()>(1);
    let spawned = std::thread::Builder::new()
        .name("upstream-drain".into())
        .spawn(move || {
            let mut rest = body.as_mut().take(DRAIN_LIMIT);
            let _ = io::copy(&mut rest, &mut io::sink());
            drop(body);
            DRAINING.fetch_sub(1, Ordering::SeqCst);
            let _ = done.send(());
        });
    match spawned {
        Ok(_) => {
            let _ = drained.recv_timeout(DRAIN_WAIT);
        }
        Err(_) => {
            DRAINING.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Reads the extra CA certificates of `UPSTREAM_CA_FILE`: their DER, or why they are unusable.
pub fn read_ca_file(path: &std::path::Path) -> Result<Vec<Vec<u8>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot be read: {e}"))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(PemItem::Certificate(cert)) => {
                // The same check rustls makes when it builds the trust store, which would
                // otherwise skip a bad certificate without a word.
                let der = rustls::pki_types::CertificateDer::from(cert.der().to_vec());
                rustls::RootCertStore::empty().add(der).map_err(|e| {
                    format!(
                        "holds a certificate that cannot be a trust anchor (certificate {}): {e}",
                        certs.len() + 1
                    )
                })?;
                certs.push(cert.der().to_vec());
            }
            Ok(_) => {}
            Err(e) => return Err(format!("is not a valid PEM file: {e}")),
        }
    }
    if certs.is_empty() {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into());
    }
    Ok(certs)
}

/// The whole-call deadline, checked before each read (each read is bounded by the agent's
/// per-read timeout too).
struct Deadline<R> {
    inner: R,
    deadline: Instant,
}

impl<R: Read> Read for Deadline<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if Instant::now() >= self.deadline {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.inner.read(buf)
    }
}

fn declared_length(response: &ureq::http::Response<ureq::Body>) -> Option<u64> {
    response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

fn too_large() -> ApiError {
    ApiError::BadGateway(format!(
        "upstream answer is larger than {} MiB",
        MAX_ANSWER_BYTES >> 20
    ))
}

fn timed_out(timeout: Duration) -> ApiError {
    ApiError::GatewayTimeout(format!(
        "upstream did not answer within {} ms (UPSTREAM_TIMEOUT_MS)",
        timeout.as_millis()
    ))
}

/// Turns a transport failure into a 502/504 whose message never carries the URL (which is the
/// profile's base_url).
fn describe(e: &ureq::Error, timeout: Duration) -> ApiError {
    use ureq::Error as E;
    let reason = match e {
        E::Timeout(_) => return timed_out(timeout),
        E::Io(io) if is_timeout_io(io) => return timed_out(timeout),
        // rustls reports a failed handshake through the socket, as an I/O error.
        E::Io(io) => match io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            Some(tls) => tls_reason(tls),
            None => io_reason(io),
        },
        E::HostNotFound => "its host name does not resolve",
        E::ConnectionFailed => "the connection failed",
        E::BadUri(_) | E::Http(_) | E::RequireHttpsOnly(_) => {
            "the profile's base_url is not a usable URL"
        }
        E::Protocol(_) | E::LargeResponseHeader(..) => "it answered invalid HTTP",
        E::BodyExceedsLimit(_) => return too_large(),
        E::Rustls(tls) => tls_reason(tls),
        E::Tls(_) | E::Pem(_) => "the TLS handshake failed",
        _ => "the request failed",
    };
    ApiError::BadGateway(format!("upstream unreachable: {reason}"))
}

fn tls_reason(e: &rustls::Error) -> &'static str {
    match e {
        rustls::Error::InvalidCertificate(_) => {
            "its TLS certificate is not trusted (a private CA goes in UPSTREAM_CA_FILE)"
        }
        _ => "the TLS handshake failed",
    }
}

fn is_timeout_io(e: &io::Error) -> bool {
    if let Some(ureq::Error::Timeout(_)) = e.get_ref().and_then(|i| i.downcast_ref()) {
        return true;
    }
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

/// The last link of the agent's connector chain (over TCP, and TLS where it applies). Per
/// call it saves a write, a packet and about five system calls:
/// - ureq writes a request's head and its body separately, so with `TCP_NODELAY` they left
///   as two packets, and the provider's server woke up twice. Here what ureq transmits is
///   held back (as long as it fits the output buffer) until the call turns to reading the
///   answer, and leaves in one write.
/// - ureq probes a connection both when it goes back to the pool and when it is taken out
///   (each probe three system calls: non-blocking on, a read, non-blocking off). Only the
///   probe at checkout matters: it also sees what the one at return would have seen (bytes
///   past the answer, or a closed connection), and a connection idle in the pool can only
///   have been closed since.
/// - ureq sets a socket's timeout again whenever the time left changes, i.e. before almost
///   every read and write. The time left is rounded up to the next 10 ms here, so that
///   successive reads and writes of a call find the socket's timeout already set.
#[derive(Debug)]
struct Coalescing;

/// The granularity of socket timeouts (see `Coalescing`): a deadline may pass this much later.
const TIMEOUT_STEP: Duration = Duration::from_millis(10);

fn coarse(mut timeout: NextTimeout) -> NextTimeout {
    use ureq::unversioned::transport::time::Duration as Left;
    if let Left::Exact(left) = timeout.after {
        let step = TIMEOUT_STEP.as_nanos();
        let rounded = left.as_nanos().div_ceil(step) * step;
        timeout.after = Left::Exact(Duration::from_nanos(rounded.try_into().unwrap_or(u64::MAX)));
    }
    timeout
}

impl Connector<Box<dyn Transport>> for Coalescing {
    type Out = CoalescingTransport;

    fn connect(
        &self,
        _details: &ConnectionDetails,
        chained: Option<Box<dyn Transport>>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        Ok(chained.map(|inner| CoalescingTransport {
            inner,
            held: Vec::new(),
            used: false,
        }))
    }
}

#[derive(Debug)]
struct CoalescingTransport {
    inner: Box<dyn Transport>,
    /// Transmitted by ureq, not yet written.
    held: Vec<u8>,
    /// Read or written since the last probe: the connection is on its way back to the pool.
    used: bool,
}

impl CoalescingTransport {
    /// Writes what is held, through the start of the inner output buffer.
    fn release(&mut self, timeout: NextTimeout) -> Result<(), ureq::Error> {
        if self.held.is_empty() {
            return Ok(());
        }
        let n = self.held.len();
        self.inner.buffers().output()[..n].copy_from_slice(&self.held);
        self.held.clear();
        self.inner.transmit_output(n, timeout)
    }
}

impl Transport for CoalescingTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        self.inner.buffers()
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        self.used = true;
        let timeout = coarse(timeout);
        let capacity = self.inner.buffers().output().len();
        let held = self.held.len();
        if held + amount <= capacity {
            // Held back: the head, and whatever follows it that still fits.
            let output = self.inner.buffers().output();
            self.held.extend_from_slice(&output[..amount]);
            return Ok(());
        }
        // Too much to hold: what was held goes first, then this piece (saved meanwhile,
        // since the inner buffer carries both).
        let piece = self.inner.buffers().output()[..amount].to_vec();
        self.release(timeout)?;
        self.inner.buffers().output()[..amount].copy_from_slice(&piece);
        self.inner.transmit_output(amount, timeout)
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        self.used = true;
        let timeout = coarse(timeout);
        self.release(timeout)?;
        self.inner.await_input(timeout)
    }

    fn maybe_await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        self.used = true;
        let timeout = coarse(timeout);
        self.release(timeout)?;
        self.inner.maybe_await_input(timeout)
    }

    fn is_open(&mut self) -> bool {
        if std::mem::take(&mut self.used) {
            // Going back to the pool; the checkout probes it.
            return self.held.is_empty();
        }
        self.inner.is_open()
    }

    fn is_tls(&self) -> bool {
        self.inner.is_tls()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_without_certificates_is_refused_with_a_reason() {
        let dir = std::env::temp_dir().join(format!("switcher-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        assert!(read_ca_file(&empty)
            .unwrap_err()
            .contains("no PEM certificate"));
        let bad = dir.join("bad.pem");
        std::fs::write(
            &bad,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert!(read_ca_file(&bad).unwrap_err().contains("trust anchor"));
        assert!(read_ca_file(&dir.join("missing.pem"))
            .unwrap_err()
            .contains("cannot be read"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_answer_over_the_bound_is_a_502_even_without_a_length() {
        let upstream = Upstream::new(Duration::from_secs(1), 1, &[]);
        let mut big = io::repeat(b'x').take(MAX_ANSWER_BYTES as u64 + 10);
        assert_eq!(
            upstream.read_body(&mut big, None).unwrap_err().status(),
            502
        );
        let mut small: &[u8] = b"{}";
        assert_eq!(
            upstream
                .read_body(&mut small, Some(MAX_ANSWER_BYTES as u64 + 1))
                .unwrap_err()
                .status(),
            502
        );
        let mut small: &[u8] = b"{}";
        assert_eq!(upstream.read_body(&mut small, Some(2)).unwrap(), b"{}");
    }

    /// An inner transport that records each write it is asked for.
    #[derive(Debug)]
    struct Recorder {
        buffers: ureq::unversioned::transport::LazyBuffers,
        writes: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
        probes: Arc<AtomicUsize>,
    }

    impl Transport for Recorder {
        fn buffers(&mut self) -> &mut dyn Buffers {
            &mut self.buffers
        }
        fn transmit_output(&mut self, amount: usize, _: NextTimeout) -> Result<(), ureq::Error> {
            let bytes = self.buffers.output()[..amount].to_vec();
            self.writes.lock().unwrap().push(bytes);
            Ok(())
        }
        fn await_input(&mut self, _: NextTimeout) -> Result<bool, ureq::Error> {
            Ok(false)
        }
        fn is_open(&mut self) -> bool {
            self.probes.fetch_add(1, Ordering::SeqCst);
            true
        }
    }

    type Writes = Arc<std::sync::Mutex<Vec<Vec<u8>>>>;

    fn coalescing(output: usize) -> (CoalescingTransport, Writes, Arc<AtomicUsize>) {
        let writes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let probes = Arc::new(AtomicUsize::new(0));
        let inner = Recorder {
            buffers: ureq::unversioned::transport::LazyBuffers::new(1024, output),
            writes: writes.clone(),
            probes: probes.clone(),
        };
        let transport = CoalescingTransport {
            inner: Box::new(inner),
            held: Vec::new(),
            used: false,
        };
        (transport, writes, probes)
    }

    fn transmit(t: &mut CoalescingTransport, bytes: &[u8]) {
        t.buffers().output()[..bytes.len()].copy_from_slice(bytes);
        t.transmit_output(bytes.len(), NextTimeout::default())
            .unwrap();
    }

    #[test]
    fn a_head_and_its_body_leave_in_one_write_once_the_answer_is_awaited() {
        let (mut t, writes, _) = coalescing(64);
        transmit(&mut t, b"POST / HTTP/1.1\r\n\r\n");
        transmit(&mut t, b"{\"a\":1}");
        assert!(
            writes.lock().unwrap().is_empty(),
            "nothing written before the read"
        );
        t.await_input(NextTimeout::default()).unwrap();
        assert_eq!(
            *writes.lock().unwrap(),
            vec![b"POST / HTTP/1.1\r\n\r\n{\"a\":1}".to_vec()]
        );
    }

    #[test]
    fn what_does_not_fit_the_buffer_is_written_in_order() {
        let (mut t, writes, _) = coalescing(16);
        transmit(&mut t, b"head-head-");
        transmit(&mut t, b"body-body-body-1");
        transmit(&mut t, b"tail");
        t.await_input(NextTimeout::default()).unwrap();
        let writes = writes.lock().unwrap();
        assert_eq!(writes.concat(), b"head-head-body-body-body-1tail".to_vec());
        assert!(writes.iter().all(|w| w.len() <= 16), "{writes:?}");
    }

    #[test]
    fn only_the_probe_at_checkout_reaches_the_socket() {
        let (mut t, _, probes) = coalescing(64);
        // Checked out of the pool: probed.
        assert!(t.is_open());
        assert_eq!(probes.load(Ordering::SeqCst), 1);
        transmit(&mut t, b"GET / HTTP/1.1\r\n\r\n");
        t.await_input(NextTimeout::default()).unwrap();
        // Back to the pool right after its answer: not probed.
        assert!(t.is_open());
        assert_eq!(probes.load(Ordering::SeqCst), 1);
        // Out of the pool again: probed.
        assert!(t.is_open());
        assert_eq!(probes.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn socket_timeouts_are_rounded_up_to_the_step_and_zero_stays_zero() {
        use ureq::unversioned::transport::time::Duration as Left;
        let at = |d: Duration| {
            let t = NextTimeout {
                after: Left::Exact(d),
                ..NextTimeout::default()
            };
            match coarse(t).after {
                Left::Exact(d) => d,
                Left::NotHappening => panic!("became infinite"),
            }
        };
        assert_eq!(
            at(Duration::from_micros(29_999_999)),
            Duration::from_secs(30)
        );
        assert_eq!(
            at(Duration::from_micros(29_990_001)),
            Duration::from_secs(30)
        );
        assert_eq!(at(Duration::from_millis(20)), Duration::from_millis(20));
        assert_eq!(at(Duration::ZERO), Duration::ZERO);
        assert!(coarse(NextTimeout::default()).after.is_not_happening());
    }
}
