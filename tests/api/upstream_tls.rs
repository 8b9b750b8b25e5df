//! The upstream side over TLS: a fake provider with a certificate from a CA made here (trusted
//! through `UPSTREAM_CA_FILE`), which counts its connections, so that pooling, timeouts on
//! reused connections, bounded answers and key masking can be seen from outside.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{empty_dir, eventually, run_binary, TestApp, ADMIN_KEY, AGENT_KEY};

/// A CA, and a certificate for `127.0.0.1` and `localhost` it signed; returns the directory.
fn certificates() -> PathBuf {
    let dir = empty_dir();
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.crt", "-days", "2"]);
    ca.extend(["-subj", "/CN=switcher upstream test CA"]);
    run(&ca);
    let mut csr = vec!["req", "-new"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    run(&csr);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-extfile",
        "server.ext",
        "-days",
        "2",
    ]);
    dir
}

/// What the fake provider got: which connection it came on, and the body.
#[derive(Clone, Debug)]
struct Got {
    connection: usize,
    body: Value,
}

/// What the fake provider does with one request.
enum Act {
    /// A chunked event stream, one chunk per event, and the connection kept.
    Events(Vec<String>),
    /// A whole JSON answer with a Content-Length.
    Json(Value),
    /// Sends a stream's head and `events`, then nothing more, until the client goes away.
    StallAfter(Vec<String>),
    /// Events for as long as the client reads them (at most a few thousand).
    Endless,
    /// Sends `first`, waits for the gate, then sends `rest` (two separate reads).
    Gated(String, String, mpsc::Receiver<()>),
    /// A chunked JSON answer of this many bytes.
    Huge(usize),
}

type Script = dyn Fn(usize, &Got) -> Act + Send + Sync;

/// A TLS provider on 127.0.0.1 that counts the connections it accepted and closed.
struct TlsUpstream {
    url: String,
    accepted: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    received: Arc<Mutex<Vec<Got>>>,
}

impl TlsUpstream {
    fn start(dir: &Path, script: impl Fn(usize, &Got) -> Act + Send + Sync + 'static) -> Self {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_file_iter(dir.join("server.crt"))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
        let config = Arc::new(
            rustls::ServerConfig::builder()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Script> = Arc::new(script);
        let (a, c, r) = (accepted.clone(), closed.clone(), received.clone());
        thread::spawn(move || {
            for tcp in listener.incoming().flatten() {
                let connection = a.fetch_add(1, Ordering::SeqCst) + 1;
                let (config, c, r, script) = (config.clone(), c.clone(), r.clone(), script.clone());
                thread::spawn(move || {
                    let tls = rustls::ServerConnection::new(config).unwrap();
                    let stream = rustls::StreamOwned::new(tls, tcp);
                    serve(stream, connection, &r, &*script);
                    c.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        TlsUpstream {
            url: format!("https://127.0.0.1:{port}/v1"),
            accepted,
            closed,
            received,
        }
    }

    fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn received(&self) -> Vec<Got> {
        self.received.lock().unwrap().clone()
    }
}

type Tls = rustls::StreamOwned<rustls::ServerConnection, TcpStream>;

/// Answers requests on one connection until it closes or the script ends it.
fn serve(stream: Tls, connection: usize, received: &Mutex<Vec<Got>>, script: &Script) {
    let mut stream = BufReader::new(stream);
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        // The request line, then headers up to the blank line.
        loop {
            line.clear();
            match stream.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        if stream.read_exact(&mut body).is_err() {
            return;
        }
        let got = Got {
            connection,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        };
        let n = {
            let mut all = received.lock().unwrap();
            all.push(got.clone());
            all.len()
        };
        let act = script(n, &got);
        let out = stream.get_mut();
        let kept = answer(out, act).is_ok();
        if !kept {
            return;
        }
    }
}

const STREAM_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";

fn chunk(out: &mut Tls, data: &[u8]) -> std::io::Result<()> {
    out.write_all(format!("{:x}\r\n", data.len()).as_bytes())?;
    out.write_all(data)?;
    out.write_all(b"\r\n")?;
    out.flush()
}

/// Writes one answer; an `Err` ends the connection.
fn answer(out: &mut Tls, act: Act) -> std::io::Result<()> {
    match act {
        Act::Events(events) => {
            out.write_all(STREAM_HEAD)?;
            for e in events {
                chunk(out, e.as_bytes())?;
            }
            out.write_all(b"0\r\n\r\n")?;
            out.flush()
        }
        Act::Json(value) => {
            let body = value.to_string();
            out.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )?;
            out.flush()
        }
        Act::StallAfter(events) => {
            if !events.is_empty() {
                out.write_all(STREAM_HEAD)?;
                for e in events {
                    chunk(out, e.as_bytes())?;
                }
            }
            // Nothing more until the other side gives up and closes.
            let mut sink = [0u8; 1024];
            while matches!(out.read(&mut sink), Ok(n) if n > 0) {}
            Err(std::io::ErrorKind::ConnectionAborted.into())
        }
        Act::Endless => {
            out.write_all(STREAM_HEAD)?;
            for i in 0..5000 {
                chunk(out, delta(&format!("word {i} ")).as_bytes())?;
                thread::sleep(Duration::from_millis(5));
            }
            Err(std::io::ErrorKind::ConnectionAborted.into())
        }
        Act::Gated(first, rest, gate) => {
            out.write_all(STREAM_HEAD)?;
            chunk(out, first.as_bytes())?;
            let _ = gate.recv_timeout(Duration::from_secs(30));
            chunk(out, rest.as_bytes())?;
            chunk(out, b"data: [DONE]\n\n")?;
            out.write_all(b"0\r\n\r\n")?;
            out.flush()
        }
        Act::Huge(size) => {
            out.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
            )?;
            chunk(out, b"{\"choices\":[],\"pad\":\"")?;
            let piece = vec![b'x'; 64 * 1024];
            let mut sent = 0;
            while sent < size {
                chunk(out, &piece)?;
                sent += piece.len();
            }
            chunk(out, b"\"}")?;
            out.write_all(b"0\r\n\r\n")?;
            out.flush()
        }
    }
}

fn delta(text: &str) -> String {
    let event = json!({"object": "chat.completion.chunk", "choices": [{"index": 0,
        "delta": {"content": text}, "finish_reason": null}]});
    format!("data: {event}\n\n")
}

fn a_stream() -> Vec<String> {
    vec![delta("Hel"), delta("lo"), "data: [DONE]\n\n".to_string()]
}

/// The switcher with `UPSTREAM_CA_FILE` set to the test CA, and an agent on the TLS upstream.
fn switcher_for(upstream: &TlsUpstream, dir: &Path, env: &[(&str, &str)]) -> TestApp {
    let ca = dir.join("ca.crt").to_string_lossy().into_owned();
    let mut all = vec![("UPSTREAM_CA_FILE", ca.as_str())];
    all.extend_from_slice(env);
    let app = TestApp::spawn_with(&all);
    app.create_profile(
        "tls",
        "openai_compatible",
        &upstream.url,
        "sk-tls-profile-key",
    );
    app.add_model("tls", "m", json!({}));
    app.switch("default", "tls", "m");
    app
}

fn stream_request() -> Value {
    json!({"stream": true, "messages": [{"role": "user", "content": "hi"}]})
}

#[test]
fn twenty_streams_one_after_another_use_one_tls_connection() {
    let dir = certificates();
    let upstream = TlsUpstream::start(&dir, |_, got| {
        if got.body["stream"] == true {
            Act::Events(a_stream())
        } else {
            Act::Json(json!({"object": "chat.completion", "choices": [],
                             "usage": {"prompt_tokens": 1, "completion_tokens": 2}}))
        }
    });
    let app = switcher_for(&upstream, &dir, &[]);
    for i in 0..20 {
        let r = app
            .agent("POST", "/v1/chat/completions")
            .json(&stream_request());
        assert_eq!(r.status, 200, "stream {i}: {}", r.text());
        let text = r.text();
        assert!(
            text.contains("Hel") && text.ends_with("data: [DONE]\n\n"),
            "stream {i}: {text}"
        );
    }
    // A whole call takes the same pooled connection.
    let r = app
        .agent("POST", "/v1/chat/completions")
        .json(&json!({"messages": [{"role": "user", "content": "hi"}]}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(upstream.received().len(), 21);
    assert_eq!(
        upstream.connections(),
        1,
        "every call opened its own connection: {:?}",
        upstream
            .received()
            .iter()
            .map(|g| g.connection)
            .collect::<Vec<_>>()
    );
}

#[test]
fn a_reused_connection_whose_upstream_stalls_still_times_out_with_504() {
    let dir = certificates();
    let upstream = TlsUpstream::start(&dir, |n, _| match n {
        1 | 3 => Act::Events(a_stream()),
        // On the connection of request 1: the head comes, then one event, then nothing.
        2 => Act::StallAfter(vec![delta("Hel")]),
        // On the connection of request 3: no head at all.
        _ => Act::StallAfter(Vec::new()),
    });
    let app = switcher_for(&upstream, &dir, &[("UPSTREAM_TIMEOUT_MS", "1000")]);
    let call = || {
        app.agent("POST", "/v1/chat/completions")
            .json(&stream_request())
    };
    assert_eq!(call().status, 200);

    let r = call();
    assert_eq!(r.status, 200, "the head came: {}", r.text());
    let text = r.text();
    assert!(
        text.contains("Hel") && text.contains("UPSTREAM_TIMEOUT_MS") && !text.contains("[DONE]"),
        "a stalled stream ends with the timeout's error event: {text}"
    );

    assert_eq!(call().status, 200);
    let r = call();
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(
        r.error_message().contains("UPSTREAM_TIMEOUT_MS"),
        "{}",
        r.text()
    );
    assert_eq!(r.header("x-switcher-error"), Some("upstream_timeout"));

    let on: Vec<usize> = upstream.received().iter().map(|g| g.connection).collect();
    assert_eq!(
        on,
        vec![1, 1, 2, 2],
        "each stall was on a reused connection, and the stalled one was not reused"
    );
}

#[test]
fn a_stream_the_client_leaves_midway_does_not_go_back_to_the_pool() {
    let dir = certificates();
    let upstream = TlsUpstream::start(&dir, |n, _| match n {
        1 => Act::Endless,
        _ => Act::Events(a_stream()),
    });
    let app = switcher_for(&upstream, &dir, &[]);

    let mut client = TcpStream::connect(("127.0.0.1", app.port)).unwrap();
    let body = stream_request().to_string();
    write!(
        client,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {AGENT_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("word 3 ") {
        let n = client.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended early");
        seen.extend_from_slice(&buf[..n]);
    }
    drop(client);
    assert!(
        eventually(Duration::from_secs(30), || upstream
            .closed
            .load(Ordering::SeqCst)
            >= 1),
        "the upstream connection of the abandoned stream stayed open"
    );

    let r = app
        .agent("POST", "/v1/chat/completions")
        .json(&stream_request());
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().ends_with("data: [DONE]\n\n"), "{}", r.text());
    let on: Vec<usize> = upstream.received().iter().map(|g| g.connection).collect();
    assert_eq!(on, vec![1, 2], "the half-read connection was reused");
}

#[test]
fn an_oversized_answer_is_a_502_and_the_worker_is_free_again() {
    let dir = certificates();
    let upstream = TlsUpstream::start(&dir, |n, _| match n {
        1 => Act::Huge(33 * 1024 * 1024),
        _ => Act::Json(json!({"object": "chat.completion", "choices": []})),
    });
    // One worker: the second call is answered only if the first one let go of it.
    let app = switcher_for(&upstream, &dir, &[("WORKERS", "1")]);
    let whole = json!({"messages": [{"role": "user", "content": "hi"}]});
    let r = app.agent("POST", "/v1/chat/completions").json(&whole);
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.error_message().contains("32 MiB"), "{}", r.text());
    let r = app.agent("POST", "/v1/chat/completions").json(&whole);
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn the_profiles_key_split_across_two_reads_of_a_stream_is_masked() {
    let dir = certificates();
    let (gate, wait) = mpsc::channel();
    let wait = Mutex::new(Some(wait));
    let upstream = TlsUpstream::start(&dir, move |_, _| {
        let first = r#"data: {"choices":[{"index":0,"delta":{"content":"your key is sk-tls-prof"#;
        let rest = "ile-key, keep it\"}}]}\n\n";
        Act::Gated(
            first.to_string(),
            rest.to_string(),
            wait.lock().unwrap().take().expect("one stream"),
        )
    });
    let app = switcher_for(&upstream, &dir, &[]);

    let mut client = TcpStream::connect(("127.0.0.1", app.port)).unwrap();
    let body = stream_request().to_string();
    write!(
        client,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {AGENT_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    // The first piece has come through (the part that cannot be the key): only then does the
    // upstream send the rest, so the switcher reads the key in two pieces.
    while !String::from_utf8_lossy(&seen).contains("your key is") {
        let n = client.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended early");
        seen.extend_from_slice(&buf[..n]);
    }
    gate.send(()).unwrap();
    client.read_to_end(&mut seen).unwrap();
    let text = String::from_utf8_lossy(&seen);
    assert!(text.contains("[DONE]"), "{text}");
    assert!(text.contains("[redacted]"), "{text}");
    assert!(
        !text.contains("sk-tls-prof") && !text.contains("ile-key"),
        "a piece of the key reached the agent: {text}"
    );
}

#[test]
fn without_the_ca_file_a_private_upstream_is_not_trusted() {
    let dir = certificates();
    let upstream = TlsUpstream::start(&dir, |_, _| Act::Events(a_stream()));
    let app = TestApp::spawn();
    app.create_profile(
        "tls",
        "openai_compatible",
        &upstream.url,
        "sk-tls-profile-key",
    );
    app.add_model("tls", "m", json!({}));
    app.switch("default", "tls", "m");
    let r = app
        .agent("POST", "/v1/chat/completions")
        .json(&stream_request());
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(
        r.error_message().contains("UPSTREAM_CA_FILE"),
        "{}",
        r.text()
    );
}

#[test]
fn a_bad_ca_file_is_a_startup_error_naming_the_variable() {
    let dir = empty_dir();
    let bad = dir.join("bad.pem");
    std::fs::write(&bad, "not a certificate\n").unwrap();
    for file in [
        bad.to_string_lossy().into_owned(),
        "/nonexistent/ca.pem".into(),
    ] {
        let exit = run_binary(
            &["serve"],
            &[
                ("ROUTER_ADMIN_KEY", ADMIN_KEY),
                ("ROUTER_AGENT_KEY", AGENT_KEY),
                ("UPSTREAM_CA_FILE", &file),
            ],
            Duration::from_secs(30),
        );
        assert!(exit.code.is_some_and(|c| c != 0), "{file}: {exit:?}");
        assert!(
            exit.stderr.contains("UPSTREAM_CA_FILE"),
            "{file}: {}",
            exit.stderr
        );
    }
}

#[test]
fn a_base_url_with_credentials_is_refused_naming_the_field() {
    let app = TestApp::spawn();
    let r = app.admin("POST", "/admin/profiles").json(&json!({
        "profile_name": "p", "provider_type": "openai_compatible",
        "base_url": "https://user:hunter2@llm.example/v1", "credentials": {"api_key": "sk-x"}
    }));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.error_message().contains("`base_url`"), "{}", r.text());
    assert!(!r.text().contains("hunter2"), "{}", r.text());

    let id = app.create_profile("q", "openai_compatible", "https://llm.example/v1", "sk-x")["id"]
        .clone();
    let r = app
        .admin("PATCH", &format!("/admin/profiles/{id}"))
        .json(&json!({"base_url": "https://user:hunter2@llm.example/v1"}));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.error_message().contains("`base_url`"), "{}", r.text());
    let r = app.admin("GET", "/admin/profiles").send();
    assert!(!r.text().contains("hunter2"), "{}", r.text());
}
