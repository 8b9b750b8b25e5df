//! The HTTP server: a fixed pool of workers taking requests from tiny_http, one straight path
//! per request: read → route → authorize → body → handler → respond → log.

use std::io::{self, Write};
use std::mem::ManuallyDrop;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tiny_http::{Header, Request, Response};

use crate::app::App;
use crate::auth;
use crate::error::ApiError;
use crate::http::{read_body, split_url, Body, Reply, Req};
use crate::routes::{self, Endpoint};

/// A started server; dropping it does not stop it, `shutdown` does.
pub struct Running {
    http: Arc<tiny_http::Server>,
    workers: Vec<JoinHandle<()>>,
    /// Each worker sends once when it ends.
    ended: mpsc::Receiver<()>,
    stopping: Arc<AtomicBool>,
    /// Requests a worker is serving right now.
    busy: Arc<AtomicUsize>,
    addr: SocketAddr,
    /// The listening socket, owned by tiny_http; kept to shut it down.
    listener_fd: RawFd,
    /// Its gate is opened and its journal written out to the database on shutdown.
    app: Arc<App>,
}

/// Binds the listening socket with `TCP_NODELAY` and a send timeout, which Linux passes on
/// to every accepted socket: without `TCP_NODELAY` each separately written piece of a
/// response waits for the client's delayed ACK.
pub fn bind(addr: &str) -> io::Result<TcpListener> {
    let listener = TcpListener::bind(addr)?;
    // SAFETY: borrows the listener's descriptor without taking ownership (never closed here);
    // setsockopt on a listening TCP socket is valid.
    let view = ManuallyDrop::new(unsafe { TcpStream::from_raw_fd(listener.as_raw_fd()) });
    view.set_nodelay(true)?;
    // Also inherited: a client that stops reading its answer frees the worker after this
    // long instead of never. (A receive timeout cannot be set the same way: it would make
    // tiny_http's accept time out, which ends its accept loop.)
    view.set_write_timeout(Some(CLIENT_WRITE_TIMEOUT))?;
    Ok(listener)
}

/// How long writing to a client may block before the client is given up.
pub const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest request line (SPEC: 414 beyond it).
pub const MAX_REQUEST_LINE: usize = 8 * 1024;
/// Largest header block and most header fields (SPEC: 431 beyond them).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
pub const MAX_HEADER_FIELDS: usize = 100;

/// What tiny_http enforces on every connection before a request reaches a worker.
fn limits(app: &App) -> tiny_http::Limits {
    tiny_http::Limits {
        max_request_line: MAX_REQUEST_LINE,
        max_header_bytes: MAX_HEADER_BYTES,
        max_header_fields: MAX_HEADER_FIELDS,
        request_timeout: Some(app.config.request_read_timeout),
        idle_timeout: Some(app.config.idle_timeout),
        max_connections: Some(app.config.max_connections),
        counters: app.connections.clone(),
        error_response: Some(Arc::new(refusal)),
    }
}

/// The answer to a request tiny_http refuses before it reaches us, in our error shape.
fn refusal(status: tiny_http::StatusCode) -> Response<io::Cursor<Vec<u8>>> {
    let e = match status.0 {
        408 => ApiError::RequestTimeout,
        414 => ApiError::RequestLineTooLong {
            limit: MAX_REQUEST_LINE,
        },
        431 => ApiError::HeadersTooLarge {
            bytes: MAX_HEADER_BYTES,
            fields: MAX_HEADER_FIELDS,
        },
        417 => ApiError::Unsupported {
            status: 417,
            message: "the Expect header is not supported (only 100-continue is)",
        },
        505 => ApiError::Unsupported {
            status: 505,
            message: "only HTTP/1.0 and HTTP/1.1 are supported",
        },
        _ => ApiError::bad_request("the request is not valid HTTP/1.1"),
    };
    let reply = Reply::error(&e);
    let data = match reply.body {
        Body::Bytes { data, .. } => data,
        _ => Vec::new(),
    };
    let mut response = Response::from_data(data).with_status_code(e.status());
    for (n, v) in [
        ("Content-Type", "application/json"),
        ("x-switcher-error", e.code()),
    ] {
        response.add_header(header(n, v).expect("valid header"));
    }
    response
}

pub fn start(app: Arc<App>, listener: TcpListener) -> io::Result<Running> {
    let addr = listener.local_addr()?;
    let listener_fd = listener.as_raw_fd();
    let http = Arc::new(
        tiny_http::Server::from_listener_with_limits(listener, None, limits(&app))
            .map_err(|e| io::Error::other(e.to_string()))?,
    );
    let stopping = Arc::new(AtomicBool::new(false));
    let busy = Arc::new(AtomicUsize::new(0));
    let (ended_tx, ended) = mpsc::channel();
    let workers = (0..app.config.workers)
        .map(|i| {
            let (app, http, stopping, busy, ended_tx) = (
                app.clone(),
                http.clone(),
                stopping.clone(),
                busy.clone(),
                ended_tx.clone(),
            );
            thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || {
                    worker(&app, &http, &stopping, &busy);
                    let _ = ended_tx.send(());
                })
        })
        .collect::<io::Result<Vec<_>>>()?;
    Ok(Running {
        http,
        workers,
        ended,
        stopping,
        busy,
        addr,
        listener_fd,
        app,
    })
}

impl Running {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections, lets the requests in hand (and those already received)
    /// finish, then ships the audit journal, all within `grace`; returns whether everything
    /// finished. Rows still in the journal stay there for the next start. Until the requests
    /// in hand are done, the workers also answer what arrives on connections already open,
    /// each such answer closing its connection.
    ///
    /// `cause` is logged once the workers know: from that line on, every answer closes its
    /// connection.
    pub fn shutdown(self, grace: Duration, cause: &str) -> bool {
        self.stopping.store(true, Ordering::SeqCst);
        crate::info!("{cause}; finishing requests in flight");
        // Shutting the listening socket down makes tiny_http's accept loop end and refuses
        // new connections; the socket itself stays owned (and is closed) by tiny_http.
        // SAFETY: borrows the descriptor without closing it; shutdown(2) on a listening
        // socket only changes its state.
        let listener = ManuallyDrop::new(unsafe { TcpStream::from_raw_fd(self.listener_fd) });
        let _ = listener.shutdown(std::net::Shutdown::Both);
        let deadline = Instant::now() + grace;
        // A keep-alive client that sends a request meanwhile gets its answer (with
        // `Connection: close`) instead of waiting, unanswered, for the process to end.
        while self.busy.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        // Workers waiting for a turn go to the queue too, where each `unblock` ends exactly
        // one worker, after whatever was queued before it.
        self.app.gate.close();
        for _ in &self.workers {
            self.http.unblock();
        }
        let mut remaining = self.workers.len();
        while remaining > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.ended.recv_timeout(left) {
                Ok(()) => remaining -= 1,
                Err(_) => break,
            }
        }
        if remaining > 0 {
            crate::warn!("{remaining} request(s) still running after the shutdown grace period");
        }
        let shipped = self.app.journal.drain(deadline);
        if !shipped {
            crate::warn!(
                "{} audit row(s) stay in the journal for the next start",
                self.app.journal.backlog()
            );
        }
        remaining == 0 && shipped
    }
}

fn worker(app: &App, http: &tiny_http::Server, stopping: &AtomicBool, busy: &AtomicUsize) {
    loop {
        // Only a few workers take requests at a time; the others wait for a turn (`gate`).
        app.gate.hold();
        match http.recv() {
            Ok(rq) => {
                let _busy = Busy::count(busy);
                serve(app, rq, stopping.load(Ordering::SeqCst));
            }
            // The queue is first in, first out: requests received before the shutdown's
            // `unblock` are still served by the workers that take them.
            Err(_) if stopping.load(Ordering::SeqCst) => {
                app.gate.leave();
                return;
            }
            Err(e) => {
                // tiny_http's accept loop ends for good on its first error: nothing will
                // arrive any more, so exit and let the supervisor start a fresh process.
                crate::error!("the listener failed ({e}); exiting so the service can be restarted");
                std::process::exit(1);
            }
        }
    }
}

/// A request counted in `Running::busy` for as long as this lives (a panic included).
struct Busy<'a>(&'a AtomicUsize);

impl<'a> Busy<'a> {
    fn count(busy: &'a AtomicUsize) -> Busy<'a> {
        busy.fetch_add(1, Ordering::SeqCst);
        Busy(busy)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One request, from its head to the log line. `stopping`: the service is shutting down, so
/// the connection closes after this answer.
fn serve(app: &App, mut rq: Request, stopping: bool) {
    let started = Instant::now();
    crate::metrics::begin();
    let received_at = std::time::SystemTime::now();
    let method = rq.method().as_str().to_ascii_uppercase();
    let (path, query) = split_url(rq.url());
    // The body is read under tiny_http's read deadline (REQUEST_READ_TIMEOUT_MS from the
    // request's first byte), which also bounds the drain of a body refused unread.
    let arrival = (received_at, started);
    let reply = match prepare(app, &mut rq, &method, &path, query, arrival) {
        Ok((endpoint, who, req)) => {
            let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
                if endpoint.is_data_plane() {
                    routes::dispatch(app, &endpoint, &who, &req)
                } else {
                    app.gate
                        .aside(|| routes::dispatch(app, &endpoint, &who, &req))
                }
            }));
            match outcome {
                Ok(Ok(reply)) => reply,
                Ok(Err(e)) => error_reply(&method, &path, &e),
                Err(_) => error_reply(
                    &method,
                    &path,
                    &ApiError::Internal("handler panicked".into()),
                ),
            }
        }
        Err(e) => {
            if matches!(
                e,
                ApiError::PayloadTooLarge { .. } | ApiError::RequestTimeout
            ) {
                // Reading on would only fetch bytes we refuse (or that are late): the
                // connection closes after the answer instead.
                rq.close_connection();
                error_reply(&method, &path, &e).closing()
            } else {
                error_reply(&method, &path, &e)
            }
        }
    };
    let reply = if stopping && !reply.is_closing() {
        rq.close_connection();
        reply.closing()
    } else {
        reply
    };
    let status = reply.status;
    // Only the service's own 401s are refusals of a key (an upstream's is relayed as it came).
    let refused_key = status == 401
        && reply
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("x-switcher-error"));
    // A streamed body runs handler code while it is sent: a panic there must not take the
    // worker with it either.
    // Writing waits on the client (a stream, on its upstream too): aside.
    if panic::catch_unwind(AssertUnwindSafe(|| app.gate.aside(|| send(rq, reply)))).is_err() {
        crate::error!(
            "{method} {}: panicked while sending the reply",
            path.escape_debug()
        );
    }
    let took = started.elapsed();
    let done = crate::metrics::finish();
    app.metrics
        .request(app.metrics.route_index(&path), status, took);
    if refused_key {
        app.metrics.unauthorized();
    }
    app.metrics.exchange(&done, took);
    let target = done.series.as_deref();
    crate::log::request(&crate::log::RequestLine {
        method: &method,
        path: &path,
        status,
        duration_ms: took.as_secs_f64() * 1000.0,
        agent: done.agent.as_deref(),
        profile: target.map(|t| t.profile.as_str()),
        model: target.map(|t| t.model.as_str()),
    });
}

fn error_reply(method: &str, path: &str, e: &ApiError) -> Reply {
    match e {
        // Expected while the database is away, and already reported once when it went.
        _ if e.status() == 503 => crate::warn!("{method} {}: {}", path.escape_debug(), e.chain()),
        _ if e.status() >= 500 => crate::error!("{method} {}: {}", path.escape_debug(), e.chain()),
        _ => {}
    }
    // Anthropic's clients read only Anthropic's error shape.
    if routes::messages::is_messages_path(path) {
        return routes::messages::error_reply(e);
    }
    Reply::error(e)
}

/// Everything before the handler: route, key, body.
fn prepare(
    app: &App,
    rq: &mut Request,
    method: &str,
    path: &str,
    query: Vec<(String, String)>,
    (received_at, started): (std::time::SystemTime, Instant),
) -> Result<(Endpoint, auth::Principal, Req), ApiError> {
    let endpoint = routes::resolve(method, path)?;
    let headers: Vec<(String, String)> = rq
        .headers()
        .iter()
        .map(|h| {
            (
                h.field.as_str().as_str().to_ascii_lowercase(),
                h.value.as_str().to_string(),
            )
        })
        .collect();
    let authorization = headers
        .iter()
        .find(|(n, _)| n == "authorization")
        .map(|(_, v)| v.as_str());
    let access = match endpoint {
        Endpoint::Metrics if app.config.metrics_public => auth::Access::Public,
        _ => endpoint.access(),
    };
    let who = auth::authorize(app, access, authorization)?;
    // Every declared body is read here, under the read deadline, even where the handler
    // ignores it: tiny_http would otherwise drain it when the request is dropped, after the
    // deadline is gone, and a client that stalls its body would hold the worker forever.
    let declared = rq.body_length();
    let body = app
        .gate
        .aside(|| read_body(rq.as_reader(), declared, app.config.max_body_bytes))?;
    Ok((
        endpoint,
        who,
        Req {
            path: path.to_string(),
            query,
            raw_query: rq.url().split_once('?').map_or("", |(_, q)| q).to_string(),
            headers,
            body,
            received_at,
            started,
        },
    ))
}

fn header(name: &str, value: &str) -> Option<Header> {
    Header::from_bytes(name.as_bytes(), header_value(value).as_bytes()).ok()
}

/// Header values are visible ASCII: anything else (a model name like `modèle`) is
/// percent-encoded as UTF-8, the same way on every path.
fn header_value(value: &str) -> std::borrow::Cow<'_, str> {
    if value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return value.into();
    }
    let mut out = String::with_capacity(value.len() * 3);
    for b in value.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out.into()
}

/// Writes the reply; a client that went away is not an error worth more than a debug line.
fn send(rq: Request, reply: Reply) {
    let closing = reply.is_closing();
    let Reply {
        status,
        headers,
        body,
    } = reply;
    let result = match body {
        Body::Stream(write) => send_stream(rq, status, &headers, write),
        Body::Bytes { data, content_type } => {
            let mut response = Response::from_data(data).with_status_code(status);
            response.add_header(header("Content-Type", content_type).expect("valid header"));
            for (n, v) in &headers {
                if let Some(h) = header(n, v) {
                    response.add_header(h);
                }
            }
            if closing {
                response = response.with_connection_close();
            }
            rq.respond(response)
        }
    };
    if let Err(e) = result {
        crate::debug!("response not delivered: {e}");
    }
}

/// A streamed answer is written by hand: tiny_http buffers a reader-backed body into 8 KiB
/// chunks, which would hold server-sent events back. Each write becomes one HTTP chunk.
fn send_stream(
    rq: Request,
    status: u16,
    headers: &[(String, String)],
    write: crate::http::StreamFn,
) -> io::Result<()> {
    if rq.http_version() == &tiny_http::HTTPVersion(1, 0) {
        // HTTP/1.0 has no chunked encoding, and tiny_http would keep the connection open
        // after a body that ends by closing it: such a client gets the events in one body.
        // Bounded like a whole answer: past it the client gets a 502 instead.
        let mut events = crate::http::Capped::new(crate::upstream::MAX_ANSWER_BYTES);
        match write(&mut events) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::FileTooLarge => {
                let path = rq.url().split('?').next().unwrap_or_default().to_string();
                let e = ApiError::BadGateway(format!(
                    "upstream answer is larger than {} MiB",
                    crate::upstream::MAX_ANSWER_BYTES >> 20
                ));
                send(rq, error_reply("POST", &path, &e));
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        let mut response = Response::from_data(events.data).with_status_code(status);
        for (n, v) in std::iter::once(("Content-Type", "text/event-stream"))
            .chain(headers.iter().map(|(n, v)| (n.as_str(), v.as_str())))
        {
            if let Some(h) = header(n, v) {
                response.add_header(h);
            }
        }
        return rq.respond(response);
    }
    let mut out = rq.into_writer();
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
         Transfer-Encoding: chunked\r\n",
        reason(status)
    );
    for (n, v) in headers {
        head.push_str(&format!("{n}: {}\r\n", header_value(v)));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    out.flush()?;
    let mut chunked = Chunked { inner: &mut out };
    write(&mut chunked)?;
    out.write_all(b"0\r\n\r\n")?;
    out.flush()
}

struct Chunked<'a, W: Write + ?Sized> {
    inner: &'a mut W,
}

impl<W: Write + ?Sized> Write for Chunked<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut frame = Vec::with_capacity(buf.len() + 12);
        frame.extend_from_slice(format!("{:x}\r\n", buf.len()).as_bytes());
        frame.extend_from_slice(buf);
        frame.extend_from_slice(b"\r\n");
        self.inner.write_all(&frame)?;
        self.inner.flush()?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}
