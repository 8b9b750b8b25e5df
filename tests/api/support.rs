//! The test harness: the real binary against a fresh database, and fake upstream providers.
#![allow(dead_code)] // Each test module uses its own part of the harness.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

pub const ADMIN_KEY: &str = "test-admin-key-0123456789";
pub const AGENT_KEY: &str = "test-agent-key-9876543210";

/// `DATABASE_URL` of the maintenance database tests create their databases from.
pub fn base_database_url() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// The same URL with another database name.
pub fn database_url_for(name: &str) -> String {
    let base = base_database_url();
    let (head, query) = match base.split_once('?') {
        Some((h, q)) => (h.to_string(), format!("?{q}")),
        None => (base.clone(), String::new()),
    };
    let scheme_end = head.find("://").map(|i| i + 3).unwrap_or(0);
    let root = match head[scheme_end..].find('/') {
        Some(i) => &head[..scheme_end + i],
        None => &head[..],
    };
    format!("{root}/{name}{query}")
}

pub fn admin_client() -> postgres::Client {
    postgres::Client::connect(&base_database_url(), postgres::NoTls)
        .expect("the test Postgres must be reachable at DATABASE_URL")
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A database that exists for one test and is dropped (with force) afterwards.
pub struct TestDb {
    pub name: String,
    pub url: String,
    /// A second handle on another test's database (a second instance) leaves it alone.
    owned: bool,
}

impl TestDb {
    pub fn create() -> TestDb {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!(
            "switcher_test_{}_{}_{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        admin_client()
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create the test database");
        let url = database_url_for(&name);
        TestDb {
            name,
            url,
            owned: true,
        }
    }

    /// The same database for a second server; dropping it drops nothing.
    pub fn shared(&self) -> TestDb {
        TestDb {
            name: self.name.clone(),
            url: self.url.clone(),
            owned: false,
        }
    }

    /// The same database reached through `url` (a forwarder); dropping it drops nothing.
    pub fn via(&self, url: String) -> TestDb {
        TestDb {
            name: self.name.clone(),
            url,
            owned: false,
        }
    }

    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url, postgres::NoTls).expect("connect to the test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        if let Ok(mut c) = postgres::Client::connect(&base_database_url(), postgres::NoTls) {
            let _ = c.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// The server binary, running against its own database on a free port.
pub struct TestApp {
    pub url: String,
    pub port: u16,
    child: Child,
    logs: Arc<Mutex<String>>,
    pub db: TestDb,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_switcher-api")
}

/// An empty working directory, so that no `.env` is picked up by accident.
pub fn empty_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "switcher-test-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl TestApp {
    pub fn spawn() -> TestApp {
        TestApp::spawn_with(&[])
    }

    /// Starts the server with extra environment variables (which override the defaults).
    pub fn spawn_with(env: &[(&str, &str)]) -> TestApp {
        let db = TestDb::create();
        TestApp::spawn_on(db, env)
    }

    pub fn spawn_on(db: TestDb, env: &[(&str, &str)]) -> TestApp {
        let mut vars: HashMap<&str, String> = HashMap::new();
        vars.insert("DATABASE_URL", db.url.clone());
        vars.insert("HOST", "127.0.0.1".into());
        vars.insert("PORT", "0".into());
        vars.insert("ROUTER_ADMIN_KEY", ADMIN_KEY.into());
        vars.insert("ROUTER_AGENT_KEY", AGENT_KEY.into());
        vars.insert("WORKERS", "8".into());
        vars.insert("DB_POOL_SIZE", "4".into());
        vars.insert("LOG_LEVEL", "debug".into());
        for (k, v) in env {
            vars.insert(k, v.to_string());
        }
        let mut child = Command::new(binary())
            .current_dir(empty_dir())
            .env_remove("ROUTER_KMS_KEY")
            .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start switcher-api");

        let logs = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest
                        .split(|c: char| c.is_whitespace() || c == '"')
                        .next()
                        .unwrap_or("")
                        .to_string();
                    let _ = tx.send(addr);
                }
                let mut logs = sink.lock().unwrap();
                logs.push_str(&line);
                logs.push('\n');
            }
        });
        let stdout = child.stdout.take().unwrap();
        let sink = logs.clone();
        thread::spawn(move || {
            let mut out = String::new();
            let _ = BufReader::new(stdout).read_to_string(&mut out);
            sink.lock().unwrap().push_str(&out);
        });

        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "the server did not start; its output:\n{}",
                    logs.lock().unwrap()
                );
            }
        };
        let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
        TestApp {
            url: format!("http://127.0.0.1:{port}"),
            port,
            child,
            logs,
            db,
        }
    }

    /// Everything the server printed so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    pub fn request(&self, method: &str, path: &str) -> Call {
        Call {
            request: ureq::http::Request::builder()
                .method(method)
                .uri(format!("{}{path}", self.url)),
        }
    }

    pub fn admin(&self, method: &str, path: &str) -> Call {
        self.request(method, path).key(ADMIN_KEY)
    }

    pub fn agent(&self, method: &str, path: &str) -> Call {
        self.request(method, path).key(AGENT_KEY)
    }

    /// Creates a profile and returns it; panics unless the server answers 201.
    pub fn create_profile(
        &self,
        name: &str,
        provider_type: &str,
        base_url: &str,
        api_key: &str,
    ) -> Value {
        let r = self
            .admin("POST", "/admin/profiles")
            .json(&serde_json::json!({
                "profile_name": name, "provider_type": provider_type, "base_url": base_url,
                "credentials": {"api_key": api_key}
            }));
        assert_eq!(r.status, 201, "{}", r.text());
        r.json()
    }

    pub fn add_model(&self, profile: &str, model: &str, extra: Value) -> Value {
        let mut body = serde_json::json!({"profile_name": profile, "model_name": model});
        if let Value::Object(extra) = extra {
            body.as_object_mut().unwrap().extend(extra);
        }
        let r = self.admin("POST", "/admin/models").json(&body);
        assert!(r.status == 200 || r.status == 201, "{}", r.text());
        r.json()
    }

    /// Waits until the audit journal holds nothing unwritten (`/healthz` says
    /// `audit_backlog: 0`): every answered request's row is then in the database, and no row
    /// can still arrive for it.
    pub fn wait_audit_written(&self) {
        let drained = eventually(Duration::from_secs(30), || {
            let r = self.request("GET", "/healthz").send();
            r.status == 200 && r.json()["audit_backlog"] == 0
        });
        assert!(drained, "the audit journal did not drain: {}", self.logs());
    }

    pub fn switch(&self, agent_id: &str, profile: &str, model: &str) -> Value {
        let r = self.agent("POST", "/api/switch").json(&serde_json::json!({
            "agent_id": agent_id, "profile_name": profile, "model_name": model
        }));
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }

    /// Stops this server with SIGKILL: no shutdown, no last writes.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.exit_code()
    }

    /// Waits (at most 30 s) for the process to end by itself and returns its exit code.
    pub fn exit_code(&mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("--- server output ---\n{}", self.logs());
        }
    }
}

/// A client like any other: statuses are answers, not errors; a minute at most per call.
pub fn client() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// A request being built.
pub struct Call {
    request: ureq::http::request::Builder,
}

/// A finished request: any status, never an `Err`.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `error.message` of an error body.
    pub fn error_message(&self) -> String {
        self.json()["error"]["message"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

impl Call {
    pub fn key(self, key: &str) -> Call {
        self.header("Authorization", &format!("Bearer {key}"))
    }

    pub fn header(self, name: &str, value: &str) -> Call {
        Call {
            request: self.request.header(name, value),
        }
    }

    pub fn send(self) -> Reply {
        finish(client().run(self.request.body(()).expect("a valid request")))
    }

    pub fn json(self, body: &Value) -> Reply {
        self.header("Content-Type", "application/json")
            .body(&serde_json::to_vec(body).unwrap())
    }

    pub fn body(self, body: &[u8]) -> Reply {
        finish(client().run(self.request.body(body).expect("a valid request")))
    }
}

/// Status, headers and body of a finished call.
pub fn finish(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
    let response = result.unwrap_or_else(|e| panic!("request failed: {e}"));
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let mut body = Vec::new();
    response
        .into_body()
        .into_reader()
        .read_to_end(&mut body)
        .unwrap();
    Reply {
        status,
        headers,
        body,
    }
}

/// What a fake upstream received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the upstream received JSON")
    }
}

/// What a fake upstream answers.
pub enum Answer {
    Json(u16, Value),
    Raw(u16, &'static str, Vec<u8>),
    /// Server-sent events written one by one with a pause before each.
    Events(Vec<String>, Duration),
    /// Waits, then answers.
    Delay(Duration, Box<Answer>),
}

type Handler = dyn Fn(&Received) -> Answer + Send + Sync;

/// A provider faked by a small HTTP server that records every request.
pub struct FakeUpstream {
    pub url: String,
    received: Arc<Mutex<Vec<Received>>>,
    server: Arc<tiny_http::Server>,
}

impl FakeUpstream {
    pub fn start(handler: impl Fn(&Received) -> Answer + Send + Sync + 'static) -> FakeUpstream {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let port = server.server_addr().to_ip().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        for _ in 0..8 {
            let (server, received, handler) = (server.clone(), received.clone(), handler.clone());
            thread::spawn(move || {
                while let Ok(mut rq) = server.recv() {
                    let mut body = Vec::new();
                    let _ = rq.as_reader().read_to_end(&mut body);
                    let got = Received {
                        method: rq.method().as_str().to_string(),
                        path: rq.url().to_string(),
                        headers: rq
                            .headers()
                            .iter()
                            .map(|h| {
                                (
                                    h.field.as_str().as_str().to_string(),
                                    h.value.as_str().to_string(),
                                )
                            })
                            .collect(),
                        body,
                    };
                    received.lock().unwrap().push(got.clone());
                    respond(rq, handler(&got));
                }
            });
        }
        FakeUpstream {
            url: format!("http://127.0.0.1:{port}"),
            received,
            server,
        }
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn last(&self) -> Received {
        self.received()
            .pop()
            .expect("the upstream received a request")
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        for _ in 0..8 {
            self.server.unblock();
        }
    }
}

fn respond(rq: tiny_http::Request, answer: Answer) {
    use std::io::Write;
    match answer {
        Answer::Json(status, value) => {
            let response = tiny_http::Response::from_data(serde_json::to_vec(&value).unwrap())
                .with_status_code(status)
                .with_header(
                    tiny_http::Header::from_bytes("Content-Type", "application/json").unwrap(),
                );
            let _ = rq.respond(response);
        }
        Answer::Raw(status, content_type, data) => {
            let response = tiny_http::Response::from_data(data)
                .with_status_code(status)
                .with_header(tiny_http::Header::from_bytes("Content-Type", content_type).unwrap());
            let _ = rq.respond(response);
        }
        Answer::Events(events, pause) => {
            let mut w = rq.into_writer();
            let _ = w.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n",
            );
            let _ = w.flush();
            for e in events {
                thread::sleep(pause);
                if w.write_all(e.as_bytes()).and_then(|_| w.flush()).is_err() {
                    return;
                }
            }
        }
        Answer::Delay(pause, inner) => {
            thread::sleep(pause);
            respond(rq, *inner);
        }
    }
}

/// Polls `check` until it holds or `limit` passes; for effects that land after a response.
pub fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

impl TestApp {
    /// Stops this server and starts a new one on the same database, with other variables.
    pub fn restart_with(self, env: &[(&str, &str)]) -> TestApp {
        let mut this = std::mem::ManuallyDrop::new(self);
        let _ = this.child.kill();
        let _ = this.child.wait();
        // SAFETY: `this` is never touched again and never dropped, so each field is moved out
        // exactly once; the database survives the move, which is the point.
        let (db, child, logs, url) = unsafe {
            (
                std::ptr::read(&this.db),
                std::ptr::read(&this.child),
                std::ptr::read(&this.logs),
                std::ptr::read(&this.url),
            )
        };
        drop((child, logs, url));
        TestApp::spawn_on(db, env)
    }
}

/// How a run of the binary that is expected to exit by itself ended.
#[derive(Debug)]
pub struct Exit {
    /// `None` when it had to be killed after the time limit.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Every variable the binary reads, removed so that the test process's own cannot leak in.
const CONFIG_VARS: &[&str] = &[
    "DATABASE_URL",
    "HOST",
    "PORT",
    "ROUTER_ADMIN_KEY",
    "ROUTER_AGENT_KEY",
    "ROUTER_KMS_KEY",
    "REQUIRE_AGENT_KEY_FOR_PROXY",
    "UPSTREAM_TIMEOUT_MS",
    "REQUEST_READ_TIMEOUT_MS",
    "IDLE_TIMEOUT_MS",
    "MAX_CONNECTIONS",
    "WORKERS",
    "DB_POOL_SIZE",
    "MAX_BODY_BYTES",
    "LOG_LEVEL",
    "AUDIT_JOURNAL_DIR",
    "AUDIT_JOURNAL_MAX_BYTES",
    "STATE_RESYNC_MS",
    "UPSTREAM_CA_FILE",
];

/// Runs the binary in an empty directory with exactly `env`, and waits at most `limit`.
pub fn run_binary(args: &[&str], env: &[(&str, &str)], limit: Duration) -> Exit {
    let mut command = Command::new(binary());
    command.current_dir(empty_dir()).args(args);
    for var in CONFIG_VARS {
        command.env_remove(var);
    }
    let mut child = command
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start switcher-api");
    let collect = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut out = Vec::new();
            let _ = pipe.read_to_end(&mut out);
            String::from_utf8_lossy(&out).into_owned()
        })
    };
    let stdout = collect(Box::new(child.stdout.take().unwrap()));
    let stderr = collect(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let code = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    Exit {
        code,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// The host and port of the test Postgres.
fn postgres_addr() -> String {
    let config: postgres::Config = base_database_url()
        .parse()
        .expect("DATABASE_URL is a valid Postgres URL");
    let host = config
        .get_hosts()
        .iter()
        .find_map(|h| match h {
            postgres::config::Host::Tcp(h) => Some(h.clone()),
            _ => None,
        })
        .unwrap_or_else(|| "127.0.0.1".to_string());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}")
}

/// The URL of database `name` reached through 127.0.0.1:`port` instead of the real server.
pub fn database_url_via(port: u16, name: &str) -> String {
    let url = database_url_for(name);
    let scheme_end = url.find("://").map(|i| i + 3).unwrap_or(0);
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let userinfo = authority.rfind('@').map(|i| &authority[..=i]).unwrap_or("");
    format!(
        "{}{userinfo}127.0.0.1:{port}{}",
        &url[..scheme_end],
        &rest[authority_end..]
    )
}

/// A TCP forwarder in front of the test Postgres. `stop` takes the database away (every
/// forwarded connection is cut and new ones are refused); `restart` gives it back on the
/// same port.
pub struct PgForwarder {
    pub port: u16,
    target: String,
    running: Option<Forwarding>,
}

struct Forwarding {
    stop: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<Mutex<Vec<std::net::TcpStream>>>,
    acceptor: thread::JoinHandle<()>,
}

impl PgForwarder {
    pub fn start() -> PgForwarder {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the forwarder");
        let port = listener.local_addr().unwrap().port();
        let mut forwarder = PgForwarder {
            port,
            target: postgres_addr(),
            running: None,
        };
        forwarder.serve(listener);
        forwarder
    }

    /// The URL of database `name` through this forwarder.
    pub fn database_url(&self, name: &str) -> String {
        database_url_via(self.port, name)
    }

    fn serve(&mut self, listener: std::net::TcpListener) {
        use std::sync::atomic::AtomicBool;
        // Polled rather than blocking, so that `stop` can end the accept loop and drop the
        // listener, after which connections are refused.
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let (flag, list, target) = (stop.clone(), conns.clone(), self.target.clone());
        let acceptor = thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                let client = match listener.accept() {
                    Ok((client, _)) => client,
                    Err(_) => {
                        thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                };
                let _ = client.set_nonblocking(false);
                let Ok(server) = std::net::TcpStream::connect(&target) else {
                    continue;
                };
                let mut list = list.lock().unwrap();
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
                        continue;
                    };
                    thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
                list.push(client);
                list.push(server);
            }
        });
        self.running = Some(Forwarding {
            stop,
            conns,
            acceptor,
        });
    }

    /// Cuts every forwarded connection and refuses new ones until `restart`.
    pub fn stop(&mut self) {
        if let Some(f) = self.running.take() {
            f.stop.store(true, Ordering::SeqCst);
            let _ = f.acceptor.join();
            for conn in f.conns.lock().unwrap().drain(..) {
                let _ = conn.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    /// Listens on the same port again.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(20);
        let listener = loop {
            match std::net::TcpListener::bind(("127.0.0.1", self.port)) {
                Ok(l) => break l,
                Err(e) if Instant::now() > deadline => {
                    panic!("cannot listen on port {} again: {e}", self.port)
                }
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        };
        self.serve(listener);
    }
}

impl Drop for PgForwarder {
    fn drop(&mut self) {
        self.stop();
    }
}
