//! What a client without any key can cost: oversized request lines and headers, idle and slow
//! connections, too many connections. Memory and threads must come back when they go.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use serde_json::Value;

use crate::support::{eventually, TestApp};

/// Generous: the machine running the tests is slow and busy.
const LONG: Duration = Duration::from_secs(90);

/// A raw HTTP answer read to the end of the connection.
struct RawAnswer {
    status: u16,
    head: String,
    body: String,
}

impl RawAnswer {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}{}", self.head, self.body))
    }
}

/// Sends `request` on a fresh connection and reads until the server closes it.
fn raw(app: &TestApp, request: &[u8]) -> RawAnswer {
    let mut s = TcpStream::connect(("127.0.0.1", app.port)).unwrap();
    s.set_read_timeout(Some(LONG)).unwrap();
    // The server may stop reading (and answer) before all of it is sent.
    let _ = s.write_all(request);
    let mut answer = Vec::new();
    match s.read_to_end(&mut answer) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset && !answer.is_empty() => {}
        Err(e) => panic!(
            "the connection was neither answered nor closed: {e}; got {:?}",
            String::from_utf8_lossy(&answer)
        ),
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    RawAnswer {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

fn assert_refused(answer: &RawAnswer, status: u16, code: &str) {
    assert_eq!(answer.status, status, "{}{}", answer.head, answer.body);
    assert_eq!(answer.header("x-switcher-error").as_deref(), Some(code));
    assert_eq!(
        answer.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(
        answer.header("connection").as_deref(),
        Some("close"),
        "{}",
        answer.head
    );
    let body = answer.json();
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(!body["error"]["message"].as_str().unwrap_or("").is_empty());
}

#[test]
fn a_request_line_over_8_kib_is_414_in_the_error_shape() {
    let app = TestApp::spawn();
    let long = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(9000));
    let answer = raw(&app, long.as_bytes());
    assert_refused(&answer, 414, "request_line_too_long");

    // Exactly at the limit it is an ordinary request (an unknown path).
    let path = format!("/{}", "a".repeat(8 * 1024 - "GET  HTTP/1.1".len() - 1));
    let line = format!("GET {path} HTTP/1.1");
    assert_eq!(line.len(), 8 * 1024);
    let answer = raw(
        &app,
        format!("{line}\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert_eq!(answer.status, 404, "{}", answer.head);
}

#[test]
fn a_header_block_over_64_kib_or_100_fields_is_431_in_the_error_shape() {
    let app = TestApp::spawn();
    let request = |headers: &str| format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{headers}\r\n");

    let one_big = format!("X-Big: {}\r\n", "b".repeat(70 * 1024));
    assert_refused(
        &raw(&app, request(&one_big).as_bytes()),
        431,
        "headers_too_large",
    );

    let many_small: String = (0..40)
        .map(|i| format!("X-Part-{i}: {}\r\n", "c".repeat(2000)))
        .collect();
    assert_refused(
        &raw(&app, request(&many_small).as_bytes()),
        431,
        "headers_too_large",
    );

    // Host plus 100 more is 101 fields.
    let too_many: String = (0..100).map(|i| format!("X-F{i}: v\r\n")).collect();
    assert_refused(
        &raw(&app, request(&too_many).as_bytes()),
        431,
        "headers_too_large",
    );

    // Host, Connection and 98 more is 100 fields: fine.
    let just_enough: String = (0..98).map(|i| format!("X-F{i}: v\r\n")).collect();
    let answer = raw(
        &app,
        request(&format!("Connection: close\r\n{just_enough}")).as_bytes(),
    );
    assert_eq!(answer.status, 200, "{}{}", answer.head, answer.body);
}

/// The server's resident memory in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count()
}

/// Sends `total` bytes of header after a request line, in pieces, until the server stops
/// taking them; `one_line` makes them a single header line.
fn flood_headers(port: u16, total: usize, one_line: bool) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return;
    };
    let _ = s.set_write_timeout(Some(LONG));
    if s.write_all(b"GET /healthz HTTP/1.1\r\nX-Flood: ").is_err() {
        return;
    }
    let piece: Vec<u8> = if one_line {
        vec![b'f'; 64 * 1024]
    } else {
        let line = format!("{}\r\nX-Flood: ", "f".repeat(1000));
        line.repeat(64).into_bytes()
    };
    let mut sent = 0;
    while sent < total {
        if s.write_all(&piece).is_err() {
            return;
        }
        sent += piece.len();
    }
}

#[test]
fn twenty_connections_sending_10_mb_of_headers_each_leave_memory_where_it_was() {
    let app = TestApp::spawn();
    let pid = app.pid();
    // Warm up: the first requests allocate what the server keeps for good.
    for _ in 0..3 {
        assert_eq!(app.request("GET", "/healthz").send().status, 200);
    }
    flood_headers(app.port, 1 << 20, true);
    let before = rss_kib(pid);
    let threads_before = threads(pid);

    let floods: Vec<_> = (0..20)
        .map(|i| {
            let port = app.port;
            thread::spawn(move || flood_headers(port, 10 << 20, i % 2 == 0))
        })
        .collect();
    let mut peak = 0;
    for f in floods {
        while !f.is_finished() {
            peak = peak.max(rss_kib(pid));
            thread::sleep(Duration::from_millis(5));
        }
        f.join().unwrap();
    }
    assert!(
        eventually(LONG, || threads(pid) <= threads_before),
        "threads: {} before, {} after",
        threads_before,
        threads(pid)
    );
    let after = rss_kib(pid);
    eprintln!("RSS {before} KiB before, peak {peak} KiB, {after} KiB after");
    // Without limits this was hundreds of MiB; a few MiB of allocator slack is allowed.
    assert!(
        after < before + 6 * 1024,
        "RSS {before} KiB before, {after} KiB after (peak {peak} KiB)"
    );
    assert!(
        peak < before + 32 * 1024,
        "RSS {before} KiB before, peak {peak} KiB"
    );
    assert_eq!(app.request("GET", "/healthz").send().status, 200);
}

/// Raises this process's open-file limit to its hard limit, for tests that hold thousands of
/// sockets.
fn raise_open_file_limit() {
    // SAFETY: plain syscalls on a stack struct they fill or read.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Reads `s` until the server closes it; false if it stays open for `LONG`.
fn closed_by_server(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(LONG)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn two_thousand_idle_connections_are_closed_after_idle_timeout_ms_and_their_threads_end() {
    raise_open_file_limit();
    let app = TestApp::spawn_with(&[("IDLE_TIMEOUT_MS", "2000"), ("MAX_CONNECTIONS", "5000")]);
    let pid = app.pid();
    assert_eq!(app.request("GET", "/healthz").send().status, 200);
    let threads_before = threads(pid);
    let rss_before = rss_kib(pid);

    let mut idle: Vec<TcpStream> = (0..2000)
        .map(|_| TcpStream::connect(("127.0.0.1", app.port)).unwrap())
        .collect();
    let mut peak = threads(pid);
    for s in &mut idle {
        peak = peak.max(threads(pid));
        assert!(
            closed_by_server(s),
            "an idle connection was still open after {LONG:?}"
        );
    }
    assert!(
        eventually(LONG, || threads(pid) <= threads_before),
        "threads: {threads_before} before, {} after",
        threads(pid)
    );
    let rss_after = rss_kib(pid);
    eprintln!(
        "threads {threads_before} before, peak {peak}; RSS {rss_before} KiB before, \
         {rss_after} KiB after"
    );
    assert!(
        peak > threads_before,
        "the idle connections were never held"
    );
    assert_eq!(app.request("GET", "/healthz").send().status, 200);
}

#[test]
fn a_client_sending_its_headers_a_byte_a_second_is_cut_off_at_request_read_timeout_ms() {
    let app = TestApp::spawn_with(&[
        ("REQUEST_READ_TIMEOUT_MS", "3000"),
        ("IDLE_TIMEOUT_MS", "600000"),
    ]);
    let request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: yes\r\n\r\n";
    let mut s = TcpStream::connect(("127.0.0.1", app.port)).unwrap();
    let mut writer = s.try_clone().unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let (stop, count) = (done.clone(), sent.clone());
    let trickle = thread::spawn(move || {
        for &b in request {
            if stop.load(Ordering::SeqCst) || writer.write_all(&[b]).is_err() {
                return;
            }
            count.fetch_add(1, Ordering::SeqCst);
            // Each gap is far below the deadline: only a deadline on the whole request
            // (not one per read) stops this client.
            thread::sleep(Duration::from_secs(1));
        }
    });
    s.set_read_timeout(Some(LONG)).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    done.store(true, Ordering::SeqCst);
    trickle.join().unwrap();
    let answer = String::from_utf8_lossy(&answer);
    let sent = sent.load(Ordering::SeqCst);
    assert!(
        sent < request.len(),
        "the whole request went through ({sent} bytes): {answer}"
    );
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
}

#[test]
fn connections_over_max_connections_are_closed_at_once_and_a_normal_client_is_served() {
    let max = 20;
    let app = TestApp::spawn_with(&[("MAX_CONNECTIONS", "20"), ("IDLE_TIMEOUT_MS", "600000")]);
    // `max` keep-alive connections, each known to be open because it was answered.
    let mut held: Vec<TcpStream> = (0..max)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", app.port)).unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            s.set_read_timeout(Some(LONG)).unwrap();
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap();
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
            s
        })
        .collect();

    for i in 0..50 {
        let mut extra = TcpStream::connect(("127.0.0.1", app.port)).unwrap();
        let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut answer = Vec::new();
        extra.set_read_timeout(Some(LONG)).unwrap();
        match extra.read_to_end(&mut answer) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Err(e) => panic!("extra connection {i} was not closed: {e}"),
        }
        assert!(answer.is_empty(), "extra connection {i} was served");
    }
    // The connections within the limit still work.
    for s in &mut held[..3] {
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    }
    // Once some go, a normal client is served.
    held.truncate(max - 5);
    let served = eventually(LONG, || {
        crate::support::client()
            .get(format!("{}/healthz", app.url))
            .call()
            .is_ok_and(|r| r.status() == 200)
    });
    assert!(
        served,
        "no normal client was served after connections closed"
    );
}

/// A burst of keep-alive connections (wrk opening 64 at once): every one of them is served
/// while all stay open. tiny_http's task pool once queued a connection behind a thread that
/// it counted as idle but had already promised to an earlier one, so that the connection
/// waited for another one to close: with clients that keep theirs open, for ever.
#[test]
fn a_burst_of_64_keep_alive_connections_is_served_while_they_all_stay_open() {
    let app = TestApp::spawn_with(&[("IDLE_TIMEOUT_MS", "600000"), ("MAX_CONNECTIONS", "256")]);
    for _ in 0..3 {
        let mut conns: Vec<TcpStream> = (0..64)
            .map(|_| TcpStream::connect(("127.0.0.1", app.port)).unwrap())
            .collect();
        for s in &mut conns {
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
        }
        for (i, s) in conns.iter_mut().enumerate() {
            // Bounds a hang only: a stalled connection is never answered at all.
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&got).contains("\"audit_backlog\"") {
                match s.read(&mut buf) {
                    Ok(0) => panic!("connection {i} closed unanswered"),
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) => panic!(
                        "connection {i} of 64 was not served while the others stayed open: {e}"
                    ),
                }
            }
            assert!(
                String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"),
                "connection {i}: {}",
                String::from_utf8_lossy(&got)
            );
        }
    }
}
