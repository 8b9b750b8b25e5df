//! The process: healthcheck exit codes and graceful shutdown.

use std::process::Command;
use std::thread;
use std::time::Duration;

use serde_json::json;

use crate::support::*;

fn healthcheck(url: &str) -> i32 {
    Command::new(binary())
        .args(["healthcheck", "--url", url])
        .current_dir(empty_dir())
        .output()
        .expect("run healthcheck")
        .status
        .code()
        .unwrap_or(-1)
}

#[test]
fn healthcheck_exits_zero_for_a_healthy_server_and_non_zero_otherwise() {
    let app = TestApp::spawn();
    assert_eq!(healthcheck(&app.url), 0);

    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    assert_ne!(healthcheck(&url), 0);

    // A server that answers something other than 200.
    let not_ok = FakeUpstream::start(|_| Answer::Json(503, json!({"status": "down"})));
    assert_ne!(healthcheck(&not_ok.url), 0);
}

#[test]
fn healthcheck_reads_the_port_from_the_environment() {
    let app = TestApp::spawn();
    let out = Command::new(binary())
        .arg("healthcheck")
        .current_dir(empty_dir())
        .env("PORT", app.port.to_string())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "healthy");
}

#[test]
fn sigterm_lets_a_request_in_flight_finish_and_records_it() {
    let upstream = FakeUpstream::start(|_| {
        Answer::Delay(
            Duration::from_secs(2),
            Box::new(Answer::Json(
                200,
                json!({"id": "c1", "object": "chat.completion", "choices": [],
                       "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}),
            )),
        )
    });
    let mut app = TestApp::spawn();
    app.create_profile("slow", "openai_compatible", &upstream.url, "sk-slow");
    app.switch("default", "slow", "m");

    let url = app.url.clone();
    let in_flight = thread::spawn(move || {
        crate::support::client()
            .post(format!("{url}/v1/chat/completions"))
            .header("Authorization", format!("Bearer {AGENT_KEY}"))
            .header("Content-Type", "application/json")
            .send(r#"{"model": "x", "messages": [{"role": "user", "content": "hi"}]}"#)
            .map(|r| r.status().as_u16())
            .map_err(|e| e.to_string())
    });
    // The request is with the upstream once the upstream has received it.
    assert!(eventually(Duration::from_secs(20), || !upstream
        .received()
        .is_empty()));

    let code = app.terminate();
    assert_eq!(in_flight.join().unwrap(), Ok(200));
    assert_eq!(code, Some(0), "{}", app.logs());

    let rows: i64 = app
        .db
        .client()
        .query_one(
            "SELECT count(*) FROM audit_requests WHERE status = 200 AND total_tokens = 2",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(rows, 1);
}

#[test]
fn after_sigterm_new_connections_are_refused() {
    let mut app = TestApp::spawn();
    assert_eq!(app.terminate(), Some(0));
    assert!(std::net::TcpStream::connect(("127.0.0.1", app.port)).is_err());
}

/// Sends a request head declaring `length` body bytes, sends none, and returns the status line.
fn declare_body(port: u16, head: &str, length: &str) -> String {
    use std::io::{BufRead, BufReader, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        conn,
        "{head}\r\nHost: x\r\nContent-Length: {length}\r\n\r\n"
    )
    .unwrap();
    let mut status = String::new();
    BufReader::new(conn).read_line(&mut status).unwrap();
    status
}

#[test]
fn requests_declaring_enormous_bodies_cannot_bring_the_server_down() {
    let app = TestApp::spawn_with(&[("WORKERS", "2"), ("REQUEST_READ_TIMEOUT_MS", "500")]);
    for _ in 0..3 {
        // Answered before the body is read: the unread rest used to be drained into one
        // buffer of its declared size.
        let status = declare_body(app.port, "POST /nope HTTP/1.1", "18446744073709551615");
        assert!(status.starts_with("HTTP/1.1 404"), "{status}");
        let status = declare_body(app.port, "POST /admin/profiles HTTP/1.1", "109951162777600");
        assert!(status.starts_with("HTTP/1.1 401"), "{status}");
    }
    let r = app.request("GET", "/healthz").send();
    assert_eq!(r.status, 200);
    assert!(!app.logs().contains("panicked"), "{}", app.logs());
}

#[test]
fn a_stream_whose_upstream_stalls_is_504_even_right_after_a_call_to_the_same_upstream() {
    // The first call leaves a pooled connection behind; a stream must not inherit that
    // connection's cleared timeouts and wait for its head forever.
    let upstream = FakeUpstream::start(|received| {
        if received.json()["stream"] == json!(true) {
            Answer::Delay(
                Duration::from_secs(20),
                Box::new(Answer::Json(200, json!({}))),
            )
        } else {
            Answer::Json(
                200,
                json!({"id": "c1", "object": "chat.completion", "choices": []}),
            )
        }
    });
    let app = TestApp::spawn_with(&[("UPSTREAM_TIMEOUT_MS", "500")]);
    app.create_profile("acct", "openai_compatible", &upstream.url, "sk-pooled");
    app.switch("default", "acct", "m");
    let hello = json!({"model": "x", "messages": [{"role": "user", "content": "hi"}]});
    let r = app.agent("POST", "/v1/chat/completions").json(&hello);
    assert_eq!(r.status, 200, "{}", r.text());

    let mut streamed = hello.clone();
    streamed["stream"] = json!(true);
    let started = std::time::Instant::now();
    let r = app.agent("POST", "/v1/chat/completions").json(&streamed);
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[test]
fn a_second_sigterm_stops_without_waiting_for_requests_in_flight() {
    let upstream = FakeUpstream::start(|_| {
        Answer::Delay(
            Duration::from_secs(30),
            Box::new(Answer::Json(200, json!({}))),
        )
    });
    let mut app = TestApp::spawn();
    app.create_profile("slow", "openai_compatible", &upstream.url, "sk-slow-123");
    app.switch("default", "slow", "m");
    let url = app.url.clone();
    thread::spawn(move || {
        let _ = crate::support::client()
            .post(format!("{url}/v1/chat/completions"))
            .header("Authorization", format!("Bearer {AGENT_KEY}"))
            .header("Content-Type", "application/json")
            .send(r#"{"messages": [{"role": "user", "content": "hi"}]}"#);
    });
    assert!(eventually(Duration::from_secs(20), || !upstream
        .received()
        .is_empty()));
    let pid = app.pid().to_string();
    let kill = || Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    kill();
    assert!(eventually(Duration::from_secs(10), || app
        .logs()
        .contains("finishing requests in flight")));
    kill();
    let started = std::time::Instant::now();
    let code = app.terminate();
    assert_eq!(code, Some(1), "{}", app.logs());
    assert!(started.elapsed() < Duration::from_secs(20));
}

/// A SIGTERM or SIGINT while the first contact with the database hangs (a server that
/// accepts the connection and never answers) ends the process at once, as a signal stop.
#[test]
fn a_stop_signal_while_the_database_does_not_answer_at_startup_exits_at_once() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;

    for (signal, number) in [("-TERM", libc::SIGTERM), ("-INT", libc::SIGINT)] {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port();
        let (accepted_tx, accepted) = std::sync::mpsc::channel();
        thread::spawn(move || {
            // Held open and never answered, until the test ends.
            let mut held = Vec::new();
            for stream in silent.incoming().flatten() {
                held.push(stream);
                let _ = accepted_tx.send(());
            }
        });
        let mut child = Command::new(binary())
            .current_dir(empty_dir())
            .env_remove("ROUTER_KMS_KEY")
            .env(
                "DATABASE_URL",
                format!("postgres://postgres@127.0.0.1:{port}/switcher?sslmode=disable"),
            )
            .envs([
                ("HOST", "127.0.0.1"),
                ("PORT", "0"),
                ("ROUTER_ADMIN_KEY", ADMIN_KEY),
                ("ROUTER_AGENT_KEY", AGENT_KEY),
                ("AUDIT_JOURNAL_DIR", empty_dir().to_str().unwrap()),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start switcher-api");
        accepted
            .recv_timeout(Duration::from_secs(30))
            .expect("the server tries the database");
        let sent = std::time::Instant::now();
        Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if sent.elapsed() > Duration::from_secs(4) {
                let _ = child.kill();
                panic!("{signal}: still running 4 s after the signal");
            }
            thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(status.signal(), Some(number), "{signal}: {status:?}");
    }
}

/// A keep-alive connection that sends its next request while the service drains its requests
/// in flight gets that answer, marked `Connection: close`, and is closed after it: it is
/// neither left hanging nor cut off without an answer.
#[test]
fn during_shutdown_a_kept_alive_connection_gets_its_answer_and_is_closed() {
    use std::io::{Read, Write};
    let upstream = FakeUpstream::start(|_| {
        Answer::Delay(
            Duration::from_secs(3),
            Box::new(Answer::Json(200, json!({}))),
        )
    });
    let mut app = TestApp::spawn();
    app.create_profile("slow", "openai_compatible", &upstream.url, "sk-slow-456");
    app.switch("default", "slow", "m");

    let get = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let mut kept = std::net::TcpStream::connect(("127.0.0.1", app.port)).unwrap();
    kept.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    kept.write_all(get).unwrap();
    let first = read_one_answer(&mut kept);
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(
        !first.to_ascii_lowercase().contains("connection: close"),
        "{first}"
    );

    let url = app.url.clone();
    let in_flight = thread::spawn(move || {
        crate::support::client()
            .post(format!("{url}/v1/chat/completions"))
            .header("Authorization", format!("Bearer {AGENT_KEY}"))
            .header("Content-Type", "application/json")
            .send(r#"{"messages": [{"role": "user", "content": "hi"}]}"#)
            .map(|r| r.status().as_u16())
            .map_err(|e| e.to_string())
    });
    assert!(eventually(Duration::from_secs(20), || !upstream
        .received()
        .is_empty()));
    let pid = app.pid().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(eventually(Duration::from_secs(10), || app
        .logs()
        .contains("finishing requests in flight")));

    // The slow request is still in flight: the service is draining, not gone.
    kept.write_all(get).unwrap();
    let mut answer = Vec::new();
    kept.read_to_end(&mut answer)
        .expect("the answer, then the end of the connection");
    let answer = String::from_utf8_lossy(&answer).to_string();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );

    assert_eq!(in_flight.join().unwrap(), Ok(200));
    assert_eq!(app.exit_code(), Some(0), "{}", app.logs());
}

/// Reads one whole answer (head and `Content-Length` body) and nothing after it.
fn read_one_answer(s: &mut std::net::TcpStream) -> String {
    use std::io::Read;
    let mut bytes = Vec::new();
    let mut byte = [0u8; 1];
    while !bytes.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).expect("an answer's head");
        bytes.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&bytes).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .expect("a Content-Length");
    let mut body = vec![0u8; length];
    s.read_exact(&mut body).expect("the answer's body");
    bytes.extend(body);
    String::from_utf8_lossy(&bytes).to_string()
}
