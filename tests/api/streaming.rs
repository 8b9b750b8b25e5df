//! Streaming through the proxy, for every provider type.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{eventually, Answer, FakeUpstream, Received, TestApp, AGENT_KEY};

// ---------------------------------------------------------------------------------------------
// A scripted upstream that reports, from its own side of the connection, how far it got
// ---------------------------------------------------------------------------------------------

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// What the scripted upstream answers one request with.
enum Script {
    /// A `text/event-stream`: each event is written and flushed after its pause.
    Events(Vec<(Duration, String)>),
    /// A JSON document with this status.
    Json(u16, Value),
}

/// The first event at once, then `gap` before each of the others.
fn paced(events: &[String], gap: Duration) -> Vec<(Duration, String)> {
    events
        .iter()
        .enumerate()
        .map(|(i, e)| (if i == 0 { Duration::ZERO } else { gap }, e.clone()))
        .collect()
}

/// Counts over every stream the upstream served. `support::FakeUpstream` streams too, but
/// gives no way to see how far a stream got, which is what proves relaying live and
/// cancellation prompt.
#[derive(Default)]
struct Progress {
    /// Streams whose every event and closing chunk were written.
    finished: AtomicUsize,
    /// Streams whose connection failed under a write: the proxy had closed it.
    cut: AtomicUsize,
}

/// A fake provider on tiny_http whose event streams follow a script.
struct ScriptedUpstream {
    url: String,
    server: Arc<tiny_http::Server>,
    received: Arc<Mutex<Vec<Received>>>,
    progress: Arc<Progress>,
}

const UPSTREAM_THREADS: usize = 8;

impl ScriptedUpstream {
    fn start(script: impl Fn(&Received) -> Script + Send + Sync + 'static) -> ScriptedUpstream {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let port = server.server_addr().to_ip().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let progress = Arc::new(Progress::default());
        let script: Arc<dyn Fn(&Received) -> Script + Send + Sync> = Arc::new(script);
        for _ in 0..UPSTREAM_THREADS {
            let (server, received, progress, script) = (
                server.clone(),
                received.clone(),
                progress.clone(),
                script.clone(),
            );
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
                            .map(|h| (h.field.to_string(), h.value.to_string()))
                            .collect(),
                        body,
                    };
                    received.lock().unwrap().push(got.clone());
                    match script(&got) {
                        Script::Json(status, value) => {
                            let response =
                                tiny_http::Response::from_data(value.to_string().into_bytes())
                                    .with_status_code(status)
                                    .with_header(
                                        tiny_http::Header::from_bytes(
                                            "Content-Type",
                                            "application/json",
                                        )
                                        .unwrap(),
                                    );
                            let _ = rq.respond(response);
                        }
                        Script::Events(steps) => stream_events(rq, steps, &progress),
                    }
                }
            });
        }
        ScriptedUpstream {
            url: format!("http://127.0.0.1:{port}"),
            server,
            received,
            progress,
        }
    }

    fn last(&self) -> Received {
        self.received
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the upstream received a request")
    }

    fn finished(&self) -> usize {
        self.progress.finished.load(Ordering::SeqCst)
    }

    fn cut(&self) -> usize {
        self.progress.cut.load(Ordering::SeqCst)
    }
}

impl Drop for ScriptedUpstream {
    fn drop(&mut self) {
        for _ in 0..UPSTREAM_THREADS {
            self.server.unblock();
        }
    }
}

/// Writes the events as a chunked `text/event-stream`, as the providers' APIs do: the final
/// empty chunk tells the proxy where the stream ends, on a connection that stays open.
fn stream_events(rq: tiny_http::Request, steps: Vec<(Duration, String)>, progress: &Progress) {
    let mut w = rq.into_writer();
    let mut write = |bytes: &[u8]| w.write_all(bytes).and_then(|()| w.flush());
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
                Transfer-Encoding: chunked\r\n\r\n";
    if write(head.as_bytes()).is_err() {
        progress.cut.fetch_add(1, Ordering::SeqCst);
        return;
    }
    for (pause, event) in steps {
        thread::sleep(pause);
        let chunk = format!("{:x}\r\n{event}\r\n", event.len());
        if write(chunk.as_bytes()).is_err() {
            progress.cut.fetch_add(1, Ordering::SeqCst);
            return;
        }
    }
    if write(b"0\r\n\r\n").is_ok() {
        progress.finished.fetch_add(1, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------------------------
// A client that reads the proxy's answer as it arrives
// ---------------------------------------------------------------------------------------------

enum Framing {
    Chunked,
    Length(usize),
    UntilClose,
}

/// `POST /v1/chat/completions` spoken as raw HTTP/1.1, so that every piece of the body is
/// seen the moment it arrives, the chunked framing is checked, and the socket can be closed
/// mid-stream.
struct Stream {
    status: u16,
    headers: Vec<(String, String)>,
    reader: BufReader<TcpStream>,
    framing: Framing,
    ended: bool,
    /// De-chunked bytes not yet handed out as events.
    pending: Vec<u8>,
    /// Every de-chunked body byte read so far.
    body: Vec<u8>,
}

fn read_line(reader: &mut BufReader<TcpStream>) -> String {
    let mut line = Vec::new();
    reader
        .read_until(b'\n', &mut line)
        .expect("read from the server");
    assert!(
        line.ends_with(b"\n"),
        "the connection closed mid-line: {:?}",
        String::from_utf8_lossy(&line)
    );
    while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        line.pop();
    }
    String::from_utf8(line).expect("a UTF-8 line")
}

impl Stream {
    fn open(app: &TestApp, agent_id: &str, request: &Value) -> Stream {
        let socket = TcpStream::connect(("127.0.0.1", app.port)).expect("connect");
        // A bound on every read, so that a stream that never ends fails the test, not hangs it.
        socket
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Stream::exchange(BufReader::new(socket), app, agent_id, request)
    }

    /// Sends another request on the same connection, once this answer was read to its end.
    fn open_again(self, app: &TestApp, agent_id: &str, request: &Value) -> Stream {
        assert!(self.ended, "the previous answer was read to its end");
        assert!(
            self.reader.buffer().is_empty(),
            "bytes after the end of the answer: {:?}",
            String::from_utf8_lossy(self.reader.buffer())
        );
        Stream::exchange(self.reader, app, agent_id, request)
    }

    fn exchange(
        mut reader: BufReader<TcpStream>,
        app: &TestApp,
        agent_id: &str,
        request: &Value,
    ) -> Stream {
        let body = serde_json::to_vec(request).unwrap();
        let socket = reader.get_mut();
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\
             Authorization: Bearer {AGENT_KEY}\r\nx-agent-id: {agent_id}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            app.port,
            body.len()
        );
        socket.write_all(head.as_bytes()).unwrap();
        socket.write_all(&body).unwrap();

        let status_line = read_line(&mut reader);
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP status line: {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let line = read_line(&mut reader);
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').expect("a header line");
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
        let mut stream = Stream {
            status,
            headers,
            reader,
            framing: Framing::UntilClose,
            ended: false,
            pending: Vec::new(),
            body: Vec::new(),
        };
        stream.framing = if stream
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            Framing::Chunked
        } else if let Some(length) = stream.header("content-length") {
            Framing::Length(length.parse().expect("a numeric Content-Length"))
        } else {
            Framing::UntilClose
        };
        stream
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn content_type(&self) -> &str {
        self.header("content-type").unwrap_or("")
    }

    /// The next piece of the body as the server framed it; `None` once the body ended.
    fn next_piece(&mut self) -> Option<Vec<u8>> {
        if self.ended {
            return None;
        }
        let piece = match self.framing {
            Framing::Chunked => {
                let size_line = read_line(&mut self.reader);
                let size = size_line
                    .split(';')
                    .next()
                    .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
                    .unwrap_or_else(|| panic!("not a chunk size line: {size_line:?}"));
                if size == 0 {
                    while !read_line(&mut self.reader).is_empty() {}
                    self.ended = true;
                    return None;
                }
                let mut data = vec![0; size + 2];
                self.reader
                    .read_exact(&mut data)
                    .expect("a whole chunk and its CRLF");
                assert!(data.ends_with(b"\r\n"), "a chunk not followed by CRLF");
                data.truncate(size);
                data
            }
            Framing::Length(length) => {
                let mut data = vec![0; length];
                self.reader.read_exact(&mut data).expect("the whole body");
                self.ended = true;
                data
            }
            Framing::UntilClose => {
                let mut data = vec![0; 16 * 1024];
                let n = self.reader.read(&mut data).expect("read the body");
                if n == 0 {
                    self.ended = true;
                    return None;
                }
                data.truncate(n);
                data
            }
        };
        self.body.extend_from_slice(&piece);
        Some(piece)
    }

    /// The next server-sent event, without its closing blank line; `None` once the body ended.
    fn next_event(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.pending.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = self.pending.drain(..end + 2).take(end).collect();
                return Some(String::from_utf8(event).expect("UTF-8 events"));
            }
            match self.next_piece() {
                Some(piece) => self.pending.extend_from_slice(&piece),
                None => {
                    assert!(
                        self.pending.is_empty(),
                        "the stream ended inside an event: {:?}",
                        String::from_utf8_lossy(&self.pending)
                    );
                    return None;
                }
            }
        }
    }

    /// Every event up to the end of the body.
    fn remaining_events(&mut self) -> Vec<String> {
        std::iter::from_fn(|| self.next_event()).collect()
    }

    /// The whole body, including what was already read.
    fn body(mut self) -> Vec<u8> {
        while self.next_piece().is_some() {}
        self.body
    }

    fn json(self) -> Value {
        let body = self.body();
        serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!("not JSON ({e}): {}", String::from_utf8_lossy(&body));
        })
    }

    /// Goes away mid-stream, as a client that was killed or cancelled its request.
    fn leave(self) {
        let _ = self.reader.get_ref().shutdown(Shutdown::Both);
    }
}

/// The JSON of a one-line `data:` event; `[DONE]` comes back as that string.
fn payload(event: &str) -> Value {
    let data = event
        .strip_prefix("data: ")
        .filter(|d| !d.contains('\n'))
        .unwrap_or_else(|| panic!("not a single `data:` line: {event:?}"));
    if data == "[DONE]" {
        return Value::from("[DONE]");
    }
    serde_json::from_str(data).unwrap_or_else(|e| panic!("not JSON ({e}): {data}"))
}

// ---------------------------------------------------------------------------------------------
// Setup, events and the audit trail
// ---------------------------------------------------------------------------------------------

const UPSTREAM_KEY: &str = "sk-upstream-secret-5551";
const OPENAI_MODEL: &str = "gpt-4o-mini";
const ANTHROPIC_MODEL: &str = "claude-sonnet-4-5";

/// A profile named `up` reaching `upstream_url`, and `agent_id` switched to its model.
fn route(app: &TestApp, provider_type: &str, upstream_url: &str, agent_ids: &[&str]) -> String {
    let (base_url, model) = if provider_type == "anthropic" {
        (upstream_url.to_string(), ANTHROPIC_MODEL)
    } else {
        (format!("{upstream_url}/v1"), OPENAI_MODEL)
    };
    app.create_profile("up", provider_type, &base_url, UPSTREAM_KEY);
    app.add_model("up", model, json!({}));
    for agent_id in agent_ids {
        app.switch(agent_id, "up", model);
    }
    model.to_string()
}

fn chat(content: &str) -> Value {
    json!({
        "model": "whatever-the-agent-thinks",
        "stream": true,
        "messages": [{"role": "user", "content": content}]
    })
}

fn openai_chunk(delta: Value, finish_reason: Option<&str>) -> String {
    let chunk = json!({
        "id": "chatcmpl-upstream-1", "object": "chat.completion.chunk", "created": 1_700_000_000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
    });
    format!("data: {chunk}\n\n")
}

const DONE: &str = "data: [DONE]\n\n";

/// An OpenAI text answer as its API streams it.
fn openai_text_events() -> Vec<String> {
    vec![
        openai_chunk(json!({"role": "assistant", "content": ""}), None),
        openai_chunk(json!({"content": "Hel"}), None),
        openai_chunk(json!({"content": "lo there"}), None),
        openai_chunk(json!({}), Some("stop")),
        DONE.to_string(),
    ]
}

fn anthropic_event(data: Value) -> String {
    format!(
        "event: {}\ndata: {data}\n\n",
        data["type"].as_str().unwrap()
    )
}

/// An Anthropic answer with a text block and then a tool_use block, as its API streams it.
fn anthropic_tool_use_events() -> Vec<String> {
    let delta = |index: u64, delta: Value| {
        anthropic_event(json!({"type": "content_block_delta", "index": index, "delta": delta}))
    };
    vec![
        anthropic_event(json!({"type": "message_start", "message": {
            "id": "msg_01StreamTest", "type": "message", "role": "assistant", "content": [],
            "model": "claude-sonnet-4-5-20250929", "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 21, "cache_creation_input_tokens": 5,
                      "cache_read_input_tokens": 100, "output_tokens": 1}
        }})),
        anthropic_event(json!({"type": "ping"})),
        anthropic_event(json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}})),
        delta(0, json!({"type": "text_delta", "text": "Let me look "})),
        delta(0, json!({"type": "text_delta", "text": "that up."})),
        anthropic_event(json!({"type": "content_block_stop", "index": 0})),
        anthropic_event(json!({"type": "content_block_start", "index": 1,
            "content_block": {"type": "tool_use", "id": "toolu_01WeatherCall",
                              "name": "get_weather", "input": {}}})),
        delta(
            1,
            json!({"type": "input_json_delta", "partial_json": "{\"city\": \"Reyk"}),
        ),
        delta(
            1,
            json!({"type": "input_json_delta", "partial_json": "javik\"}"}),
        ),
        anthropic_event(json!({"type": "content_block_stop", "index": 1})),
        anthropic_event(json!({"type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": null},
            "usage": {"output_tokens": 42}})),
        anthropic_event(json!({"type": "message_stop"})),
    ]
}

/// The OpenAI deltas the Anthropic tool_use stream above must become, in order.
fn expected_tool_use_deltas() -> Vec<Value> {
    vec![
        json!({"role": "assistant", "content": ""}),
        json!({"content": "Let me look "}),
        json!({"content": "that up."}),
        json!({"tool_calls": [{"index": 0, "id": "toolu_01WeatherCall", "type": "function",
                               "function": {"name": "get_weather", "arguments": ""}}]}),
        json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\": \"Reyk"}}]}),
        json!({"tool_calls": [{"index": 0, "function": {"arguments": "javik\"}"}}]}),
        json!({}),
    ]
}

#[derive(Debug)]
struct AuditRow {
    stream: bool,
    status: i32,
    prompt_tokens: Option<i32>,
    completion_tokens: Option<i32>,
    total_tokens: Option<i32>,
    error: Option<String>,
    /// The whole row as JSON, to search for text that must never be stored.
    whole: String,
}

fn query_audit(client: &mut postgres::Client, agent_id: &str) -> Vec<AuditRow> {
    client
        .query(
            "SELECT stream, status, prompt_tokens, completion_tokens, total_tokens, error,
                    row_to_json(a)::text
             FROM audit_requests a WHERE agent_id = $1 ORDER BY id",
            &[&agent_id],
        )
        .expect("query audit_requests")
        .iter()
        .map(|r| AuditRow {
            stream: r.get(0),
            status: r.get(1),
            prompt_tokens: r.get(2),
            completion_tokens: r.get(3),
            total_tokens: r.get(4),
            error: r.get(5),
            whole: r.get(6),
        })
        .collect()
}

/// The agent's audit rows once the journal has written everything (so a second row for the
/// same request would be there too); there must be `expected`.
fn audit_rows(app: &TestApp, agent_id: &str, expected: usize) -> Vec<AuditRow> {
    let mut client = app.db.client();
    let arrived = eventually(Duration::from_secs(15), || {
        query_audit(&mut client, agent_id).len() >= expected
    });
    assert!(arrived, "{expected} audit row(s) for {agent_id} never came");
    app.wait_audit_written();
    let rows = query_audit(&mut client, agent_id);
    assert_eq!(rows.len(), expected, "audit rows for {agent_id}: {rows:#?}");
    rows
}

fn assert_no_text_of(row: &AuditRow, texts: &[&str]) {
    for text in texts {
        assert!(
            !row.whole.contains(text),
            "the audit row holds {text:?}: {}",
            row.whole
        );
    }
}

// ---------------------------------------------------------------------------------------------
// OpenAI-type profiles: the upstream's events relayed unchanged, live
// ---------------------------------------------------------------------------------------------

fn an_openai_type_stream_is_relayed_unchanged_and_live(provider_type: &str) {
    let events = openai_text_events();
    let mut steps = paced(&events, ms(50));
    // The long pause after the first event is the window in which a relaying proxy has
    // delivered it and a buffering one has delivered nothing.
    steps[1].0 = ms(1500);
    let upstream = ScriptedUpstream::start(move |_| Script::Events(steps.clone()));
    let app = TestApp::spawn();
    let model = route(&app, provider_type, &upstream.url, &["streamer"]);

    let mut stream = Stream::open(&app, "streamer", &chat("Say hello, twice over"));
    assert_eq!(stream.status, 200);
    assert!(
        stream.content_type().starts_with("text/event-stream"),
        "Content-Type {:?}",
        stream.content_type()
    );
    assert_eq!(stream.header("x-switcher-profile"), Some("up"));
    assert_eq!(stream.header("x-switcher-model"), Some(model.as_str()));

    let first = stream.next_event().expect("a first event");
    assert_eq!(
        upstream.finished(),
        0,
        "the first event reached the client only once the upstream had finished"
    );
    assert_eq!(format!("{first}\n\n"), events[0]);

    let rest = stream.remaining_events();
    assert_eq!(rest.last().map(String::as_str), Some("data: [DONE]"));
    assert_eq!(
        String::from_utf8(stream.body()).unwrap(),
        events.concat(),
        "the client gets the upstream's events unchanged and in order"
    );

    let sent = upstream.last();
    assert_eq!(sent.method, "POST");
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(
        sent.header("authorization"),
        Some(format!("Bearer {UPSTREAM_KEY}").as_str())
    );
    let sent = sent.json();
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["model"], model.as_str());
    assert_eq!(sent["messages"], chat("Say hello, twice over")["messages"]);

    let rows = audit_rows(&app, "streamer", 1);
    let row = &rows[0];
    assert!(row.stream);
    assert_eq!(row.status, 200);
    assert_eq!(row.error, None);
    // No usage chunk was streamed (the request had no include_usage), so none is known.
    assert_eq!(
        (row.prompt_tokens, row.completion_tokens, row.total_tokens),
        (None, None, None)
    );
    assert_no_text_of(row, &["Say hello", "lo there"]);
}

#[test]
fn an_openai_stream_is_relayed_unchanged_and_live_with_the_model_replaced() {
    an_openai_type_stream_is_relayed_unchanged_and_live("openai");
}

#[test]
fn an_openai_compatible_stream_is_relayed_unchanged_and_live_with_the_model_replaced() {
    an_openai_type_stream_is_relayed_unchanged_and_live("openai_compatible");
}

#[test]
fn a_streamed_openai_request_is_audited_once_with_the_usage_of_its_final_chunk() {
    let events = vec![
        openai_chunk(json!({"role": "assistant", "content": ""}), None),
        openai_chunk(json!({"content": "The secret answer is forty-two"}), None),
        openai_chunk(json!({}), Some("stop")),
        format!(
            "data: {}\n\n",
            json!({
                "id": "chatcmpl-upstream-1", "object": "chat.completion.chunk",
                "created": 1_700_000_000, "model": "gpt-4o-mini-2024-07-18", "choices": [],
                "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
            })
        ),
        DONE.to_string(),
    ];
    let steps = paced(&events, ms(20));
    let upstream = ScriptedUpstream::start(move |_| Script::Events(steps.clone()));
    let app = TestApp::spawn();
    route(&app, "openai", &upstream.url, &["counter"]);

    let mut request = chat("Tell me the secret answer");
    request["stream_options"] = json!({"include_usage": true});
    let mut stream = Stream::open(&app, "counter", &request);
    assert_eq!(stream.status, 200);
    let relayed = stream.remaining_events();
    assert_eq!(relayed.last().map(String::as_str), Some("data: [DONE]"));
    assert_eq!(
        payload(&relayed[3])["usage"]["total_tokens"],
        18,
        "{relayed:?}"
    );
    assert_eq!(
        upstream.last().json()["stream_options"],
        json!({"include_usage": true})
    );

    let rows = audit_rows(&app, "counter", 1);
    let row = &rows[0];
    assert!(row.stream);
    assert_eq!(row.status, 200);
    assert_eq!(row.error, None);
    assert_eq!(
        (row.prompt_tokens, row.completion_tokens, row.total_tokens),
        (Some(11), Some(7), Some(18))
    );
    assert_no_text_of(row, &["secret answer", "forty-two"]);
}

#[test]
fn an_openai_error_event_mid_stream_is_relayed_and_the_stream_ends_without_done() {
    let error = format!(
        "data: {}\n\n",
        json!({"error": {"message": "The server had an error while processing your request.",
                         "type": "server_error", "param": null, "code": null}})
    );
    let events = vec![
        openai_chunk(json!({"role": "assistant", "content": ""}), None),
        openai_chunk(json!({"content": "Half an ans"}), None),
        error,
    ];
    let steps = paced(&events, ms(20));
    let upstream = ScriptedUpstream::start(move |_| Script::Events(steps.clone()));
    let app = TestApp::spawn();
    route(&app, "openai", &upstream.url, &["unlucky"]);

    let mut stream = Stream::open(&app, "unlucky", &chat("Hello"));
    assert_eq!(stream.status, 200);
    let relayed = stream.remaining_events();
    assert_eq!(
        payload(relayed.last().expect("events"))["error"]["type"],
        "server_error",
        "{relayed:#?}"
    );
    assert_eq!(String::from_utf8(stream.body()).unwrap(), events.concat());

    let rows = audit_rows(&app, "unlucky", 1);
    assert!(rows[0].stream);
    assert_eq!(rows[0].status, 200);
}

// ---------------------------------------------------------------------------------------------
// Anthropic profiles: events translated live into OpenAI chunks
// ---------------------------------------------------------------------------------------------

/// Checks the chunks every Anthropic translation shares: one id, one created, the object
/// type, and `finish_reason` only on the last choice chunk.
fn assert_one_answer(chunks: &[Value]) {
    let id = chunks[0]["id"].as_str().expect("a string id");
    assert!(!id.is_empty());
    let created = chunks[0]["created"].as_u64().expect("a numeric created");
    for chunk in chunks {
        assert_eq!(chunk["id"], id, "one id for all chunks: {chunk}");
        assert_eq!(
            chunk["created"], created,
            "one created for all chunks: {chunk}"
        );
        assert_eq!(chunk["object"], "chat.completion.chunk", "{chunk}");
    }
}

fn tool_request(include_usage: bool) -> Value {
    let mut request = chat("What is the weather in Reykjavik?");
    request["tools"] = json!([{"type": "function", "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}
    }}]);
    if include_usage {
        request["stream_options"] = json!({"include_usage": true});
    }
    request
}

#[test]
fn an_anthropic_tool_use_stream_becomes_openai_chunks_live_ending_in_done() {
    let mut steps = paced(&anthropic_tool_use_events(), ms(20));
    steps[1].0 = ms(1500);
    let upstream = ScriptedUpstream::start(move |_| Script::Events(steps.clone()));
    let app = TestApp::spawn();
    route(&app, "anthropic", &upstream.url, &["claude-agent"]);

    let mut stream = Stream::open(&app, "claude-agent", &tool_request(false));
    assert_eq!(stream.status, 200);
    assert!(
        stream.content_type().starts_with("text/event-stream"),
        "Content-Type {:?}",
        stream.content_type()
    );
    assert_eq!(stream.header("x-switcher-model"), Some(ANTHROPIC_MODEL));
    let first = stream.next_event().expect("a first event");
    assert_eq!(
        upstream.finished(),
        0,
        "the first chunk reached the client only once the upstream had finished"
    );

    let mut events = vec![first];
    events.extend(stream.remaining_events());
    let mut chunks: Vec<Value> = events.iter().map(|e| payload(e)).collect();
    assert_eq!(chunks.pop(), Some(Value::from("[DONE]")), "{events:#?}");
    assert_one_answer(&chunks);
    let deltas: Vec<Value> = chunks
        .iter()
        .map(|c| c["choices"][0]["delta"].clone())
        .collect();
    assert_eq!(deltas, expected_tool_use_deltas());
    let finish_reasons: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .collect();
    let (last, earlier) = finish_reasons.split_last().unwrap();
    assert_eq!(*last, "tool_calls");
    assert!(earlier.iter().all(|r| r.is_null()), "{finish_reasons:?}");
    assert!(
        chunks
            .iter()
            .all(|c| c.get("usage").is_none_or(Value::is_null)),
        "no usage chunk without stream_options.include_usage: {chunks:#?}"
    );

    let sent = upstream.last();
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.header("x-api-key"), Some(UPSTREAM_KEY));
    assert_eq!(sent.header("anthropic-version"), Some("2023-06-01"));
    let sent = sent.json();
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["model"], ANTHROPIC_MODEL);

    // Without include_usage the client is sent no usage, but the audit row still has it.
    let rows = audit_rows(&app, "claude-agent", 1);
    let row = &rows[0];
    assert!(row.stream);
    assert_eq!(row.status, 200);
    assert_eq!(row.error, None);
    assert_eq!(
        (row.prompt_tokens, row.completion_tokens, row.total_tokens),
        (Some(126), Some(42), Some(168))
    );
    assert_no_text_of(row, &["Reykjavik", "Reyk", "look that up", "city"]);
}

#[test]
fn an_anthropic_stream_with_include_usage_ends_with_a_usage_chunk_before_done() {
    let steps = paced(&anthropic_tool_use_events(), ms(20));
    let upstream = ScriptedUpstream::start(move |_| Script::Events(steps.clone()));
    let app = TestApp::spawn();
    route(&app, "anthropic", &upstream.url, &["claude-agent"]);

    let mut stream = Stream::open(&app, "claude-agent", &tool_request(true));
    assert_eq!(stream.status, 200);
    let events = stream.remaining_events();
    let mut chunks: Vec<Value> = events.iter().map(|e| payload(e)).collect();
    assert_eq!(chunks.pop(), Some(Value::from("[DONE]")), "{events:#?}");
    let usage_chunk = chunks.pop().expect("a usage chunk");
    assert_eq!(usage_chunk["choices"], json!([]), "{usage_chunk}");
    assert_eq!(
        usage_chunk["usage"],
        json!({"prompt_tokens": 126, "completion_tokens": 42, "total_tokens": 168,
               "prompt_tokens_details": {"cached_tokens": 100}})
    );
    chunks.push(usage_chunk);
    assert_one_answer(&chunks);
    let deltas: Vec<Value> = chunks[..chunks.len() - 1]
        .iter()
        .map(|c| c["choices"][0]["delta"].clone())
        .collect();
    assert_eq!(deltas, expected_tool_use_deltas());

    // Anthropic has no `stream_options`; its API refuses fields it does not know.
    let sent = upstream.last().json();
    assert_eq!(sent.get("stream_options"), None, "{sent}");

    let rows = audit_rows(&app, "claude-agent", 1);
    assert_eq!(
        (
            rows[0].prompt_tokens,
            rows[0].completion_tokens,
            rows[0].total_tokens
        ),
        (Some(126), Some(42), Some(168))
    );
}

#[test]
fn an_anthropic_error_event_mid_stream_becomes_an_error_event_and_ends_the_stream() {
    let all = anthropic_tool_use_events();
    let error = anthropic_event(json!({"type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"}}));
    let mut steps = paced(
        &[all[0].clone(), all[2].clone(), all[3].clone(), error],
        ms(20),
    );
    // What the upstream would send after its error, late: the stream must not wait for it.
    steps.push((ms(3000), all[4].clone()));
    steps.push((ms(20), all[11].clone()));
    let upstream = ScriptedUpstream::start(move |_| Script::Events(steps.clone()));
    let app = TestApp::spawn();
    route(&app, "anthropic", &upstream.url, &["claude-agent"]);

    let mut stream = Stream::open(&app, "claude-agent", &tool_request(false));
    assert_eq!(stream.status, 200);
    let events = stream.remaining_events();
    assert_eq!(
        upstream.finished(),
        0,
        "the stream ended only when the upstream did, not at its error"
    );
    let chunks: Vec<Value> = events.iter().map(|e| payload(e)).collect();
    assert_eq!(chunks.len(), 3, "{events:#?}");
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    assert_eq!(
        chunks[1]["choices"][0]["delta"],
        json!({"content": "Let me look "})
    );
    assert_eq!(
        chunks[2],
        json!({"error": {"message": "Overloaded", "type": "overloaded_error", "code": null}})
    );

    let rows = audit_rows(&app, "claude-agent", 1);
    assert!(rows[0].stream);
    assert_eq!(rows[0].status, 200);
}

#[test]
fn an_error_event_quoting_the_key_reaches_neither_the_agent_nor_the_audit() {
    let all = anthropic_tool_use_events();
    let error = anthropic_event(json!({"type": "error",
        "error": {"type": "authentication_error", "message": format!("bad key {UPSTREAM_KEY}")}}));
    let steps = paced(&[all[0].clone(), error], ms(20));
    let upstream = ScriptedUpstream::start(move |_| Script::Events(steps.clone()));
    let app = TestApp::spawn();
    route(&app, "anthropic", &upstream.url, &["claude-agent"]);

    let mut stream = Stream::open(&app, "claude-agent", &tool_request(false));
    let events = stream.remaining_events();
    let last = payload(events.last().unwrap());
    assert_eq!(
        last["error"]["message"], "bad key [redacted]",
        "{events:#?}"
    );
    assert!(!events.concat().contains(UPSTREAM_KEY));
    let rows = audit_rows(&app, "claude-agent", 1);
    assert!(rows[0].error.is_some());
    assert!(!rows[0].whole.contains(UPSTREAM_KEY), "{}", rows[0].whole);
}

#[test]
fn an_anthropic_stream_cut_short_ends_with_an_error_event_and_no_done() {
    // The upstream's body ends properly, but in the middle of the answer.
    let all = anthropic_tool_use_events();
    let steps = paced(&all[..5], ms(20));
    let upstream = ScriptedUpstream::start(move |_| Script::Events(steps.clone()));
    let app = TestApp::spawn();
    route(&app, "anthropic", &upstream.url, &["claude-agent"]);

    let mut stream = Stream::open(&app, "claude-agent", &tool_request(false));
    assert_eq!(stream.status, 200);
    let events = stream.remaining_events();
    let chunks: Vec<Value> = events.iter().map(|e| payload(e)).collect();
    assert_eq!(chunks.len(), 4, "{events:#?}");
    assert_eq!(chunks[3]["error"]["type"], "upstream_error", "{events:#?}");
    audit_rows(&app, "claude-agent", 1);
}

// ---------------------------------------------------------------------------------------------
// An upstream that refuses the stream outright
// ---------------------------------------------------------------------------------------------

#[test]
fn an_openai_upstream_refusing_a_stream_passes_its_status_and_json_error_back() {
    let refusal = json!({"error": {"message": "Rate limit reached", "type": "requests",
                                   "param": null, "code": "rate_limit_exceeded"}});
    let answer = refusal.clone();
    let upstream = ScriptedUpstream::start(move |_| Script::Json(429, answer.clone()));
    let app = TestApp::spawn();
    route(&app, "openai", &upstream.url, &["limited"]);

    let stream = Stream::open(&app, "limited", &chat("Hello"));
    assert_eq!(stream.status, 429);
    assert!(
        stream.content_type().starts_with("application/json"),
        "an error is JSON, not an event stream: {:?}",
        stream.content_type()
    );
    assert_eq!(stream.json(), refusal);

    let rows = audit_rows(&app, "limited", 1);
    assert!(rows[0].stream);
    assert_eq!(rows[0].status, 429);
}

#[test]
fn an_anthropic_upstream_refusing_a_stream_gives_its_status_and_an_openai_json_error() {
    let upstream = ScriptedUpstream::start(|_| {
        Script::Json(
            529,
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        )
    });
    let app = TestApp::spawn();
    route(&app, "anthropic", &upstream.url, &["claude-agent"]);

    let stream = Stream::open(&app, "claude-agent", &tool_request(false));
    assert_eq!(stream.status, 529);
    assert!(
        stream.content_type().starts_with("application/json"),
        "an error is JSON, not an event stream: {:?}",
        stream.content_type()
    );
    assert_eq!(
        stream.json(),
        json!({"error": {"message": "Overloaded", "type": "overloaded_error", "code": null}})
    );

    let rows = audit_rows(&app, "claude-agent", 1);
    assert!(rows[0].stream);
    assert_eq!(rows[0].status, 529);
}

// ---------------------------------------------------------------------------------------------
// UPSTREAM_TIMEOUT_MS bounds the first byte and every gap, not the whole stream
// ---------------------------------------------------------------------------------------------

#[test]
fn a_stream_that_stalls_past_the_upstream_timeout_ends_with_an_error_event() {
    let events = openai_text_events();
    let mut steps = paced(&events, ms(20));
    steps[1].0 = ms(6000);
    let upstream = ScriptedUpstream::start(move |_| Script::Events(steps.clone()));
    let app = TestApp::spawn_with(&[("UPSTREAM_TIMEOUT_MS", "500")]);
    route(&app, "openai", &upstream.url, &["staller"]);

    let mut stream = Stream::open(&app, "staller", &chat("Hello"));
    assert_eq!(stream.status, 200);
    let first = stream
        .next_event()
        .expect("the event sent before the stall");
    assert_eq!(format!("{first}\n\n"), events[0]);
    let error = payload(&stream.next_event().expect("an error event after the stall"));
    assert_eq!(error["error"]["type"], "upstream_error", "{error}");
    assert_eq!(error["error"]["code"], "upstream_timeout", "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{error}"
    );
    assert_eq!(stream.next_event(), None, "the stream ends after the error");
    assert_eq!(
        upstream.finished(),
        0,
        "the stream ended only when the stalled upstream did"
    );

    let rows = audit_rows(&app, "staller", 1);
    assert!(rows[0].stream);
    assert_eq!(rows[0].status, 200);
    assert!(rows[0].error.is_some(), "{:?}", rows[0]);
}

#[test]
fn a_stream_whose_upstream_sends_nothing_within_the_timeout_is_a_504_json_error() {
    let upstream = FakeUpstream::start(|_| {
        Answer::Delay(
            Duration::from_secs(5),
            Box::new(Answer::Events(openai_text_events(), ms(10))),
        )
    });
    let app = TestApp::spawn_with(&[("UPSTREAM_TIMEOUT_MS", "500")]);
    route(&app, "openai", &upstream.url, &["staller"]);

    let stream = Stream::open(&app, "staller", &chat("Hello"));
    assert_eq!(stream.status, 504);
    assert!(
        stream.content_type().starts_with("application/json"),
        "an error is JSON, not an event stream: {:?}",
        stream.content_type()
    );
    let body = stream.json();
    assert_eq!(body["error"]["code"], "upstream_timeout", "{body}");

    let rows = audit_rows(&app, "staller", 1);
    assert!(rows[0].stream);
    assert_eq!(rows[0].status, 504);
}

#[test]
fn a_stream_longer_than_the_timeout_whose_gaps_are_each_shorter_completes() {
    let mut events = vec![openai_chunk(
        json!({"role": "assistant", "content": ""}),
        None,
    )];
    events.extend((0..8).map(|i| openai_chunk(json!({"content": format!("part {i} ")}), None)));
    events.push(DONE.to_string());
    // Nine gaps of 300 ms: 2.7 s in all, against a timeout of 1 s.
    let steps = paced(&events, ms(300));
    let upstream = ScriptedUpstream::start(move |_| Script::Events(steps.clone()));
    let app = TestApp::spawn_with(&[("UPSTREAM_TIMEOUT_MS", "1000")]);
    route(&app, "openai", &upstream.url, &["patient"]);

    let mut stream = Stream::open(&app, "patient", &chat("Count slowly"));
    assert_eq!(stream.status, 200);
    stream.remaining_events();
    assert_eq!(String::from_utf8(stream.body()).unwrap(), events.concat());

    let rows = audit_rows(&app, "patient", 1);
    assert_eq!(rows[0].error, None);
}

// ---------------------------------------------------------------------------------------------
// Clients: one that goes away, one that stays, and short requests beside long streams
// ---------------------------------------------------------------------------------------------

#[test]
fn a_client_leaving_mid_stream_ends_the_upstream_call_frees_the_worker_and_is_audited_once() {
    let mut events = vec![openai_chunk(
        json!({"role": "assistant", "content": ""}),
        None,
    )];
    events.extend((0..60).map(|i| openai_chunk(json!({"content": format!("word{i} ")}), None)));
    events.push(DONE.to_string());
    // Some 15 s of events: far longer than noticing a departed client may take.
    let steps = paced(&events, ms(250));
    let upstream_runs_for: Duration = steps.iter().map(|(pause, _)| *pause).sum();
    let upstream = ScriptedUpstream::start(move |_| Script::Events(steps.clone()));
    // One worker: /healthz can only be answered once the stream let go of it.
    let app = TestApp::spawn_with(&[("WORKERS", "1")]);
    route(&app, "openai", &upstream.url, &["leaver"]);

    let opened = Instant::now();
    let mut stream = Stream::open(&app, "leaver", &chat("Talk for a long time"));
    assert_eq!(stream.status, 200);
    stream.next_event().expect("a first event");
    stream.leave();

    let cut = eventually(Duration::from_secs(10), || upstream.cut() > 0);
    assert!(
        cut,
        "the proxy kept reading from the upstream after its client left"
    );
    assert_eq!(upstream.finished(), 0);

    let health = app.request("GET", "/healthz").send();
    assert_eq!(health.status, 200, "{}", health.text());
    assert!(
        upstream.finished() == 0 && opened.elapsed() < upstream_runs_for,
        "/healthz was answered only once the abandoned stream would have ended"
    );

    let rows = audit_rows(&app, "leaver", 1);
    assert!(rows[0].stream);
    assert_eq!(rows[0].status, 200);
    assert!(
        rows[0].error.is_some(),
        "the row tells the client left: {:?}",
        rows[0]
    );
}

#[test]
fn three_long_streams_in_flight_do_not_keep_short_requests_waiting() {
    let mut events = vec![openai_chunk(
        json!({"role": "assistant", "content": ""}),
        None,
    )];
    events.extend((0..10).map(|i| openai_chunk(json!({"content": format!("bit{i} ")}), None)));
    events.push(DONE.to_string());
    // About 5.5 s per stream.
    let steps = paced(&events, ms(500));
    let upstream = ScriptedUpstream::start(move |_| Script::Events(steps.clone()));
    let app = TestApp::spawn_with(&[("WORKERS", "4")]);
    let agents = ["long-1", "long-2", "long-3"];
    route(&app, "openai", &upstream.url, &agents);

    let (started, in_flight) = mpsc::channel();
    let readers: Vec<_> = agents
        .iter()
        .map(|agent| {
            let mut stream = Stream::open(&app, agent, &chat("Go on"));
            let started = started.clone();
            thread::spawn(move || {
                assert_eq!(stream.status, 200);
                stream.next_event().expect("a first event");
                started.send(()).unwrap();
                stream.remaining_events();
                String::from_utf8(stream.body()).unwrap()
            })
        })
        .collect();
    for _ in &agents {
        in_flight
            .recv_timeout(Duration::from_secs(30))
            .expect("every stream delivers its first event");
    }

    let active = app.agent("GET", "/api/active?agent_id=long-1").send();
    assert_eq!(active.status, 200, "{}", active.text());
    assert_eq!(active.json()["model_name"], OPENAI_MODEL);
    let health = app.request("GET", "/healthz").send();
    assert_eq!(health.status, 200, "{}", health.text());
    assert_eq!(
        upstream.finished(),
        0,
        "the short requests were answered only after a stream had ended"
    );

    for reader in readers {
        let body = reader.join().expect("a stream reader");
        assert_eq!(body, events.concat());
    }
    for agent in agents {
        audit_rows(&app, agent, 1);
    }
}

#[test]
fn the_connection_that_carried_a_stream_serves_the_next_request() {
    let steps = paced(&openai_text_events(), ms(10));
    let upstream = ScriptedUpstream::start(move |_| Script::Events(steps.clone()));
    let app = TestApp::spawn();
    route(&app, "openai", &upstream.url, &["reuser"]);

    // HTTP clients such as the OpenAI SDKs keep connections alive between calls.
    let mut first = Stream::open(&app, "reuser", &chat("One"));
    assert_eq!(first.status, 200);
    first.remaining_events();
    let mut second = first.open_again(&app, "reuser", &chat("Two"));
    assert_eq!(second.status, 200);
    let events = second.remaining_events();
    assert_eq!(events.last().map(String::as_str), Some("data: [DONE]"));
    audit_rows(&app, "reuser", 2);
}

/// More upstream calls than the workers' turns on the cores (`src/gate.rs`: four per core)
/// are in flight at once, streamed and whole alike: a worker waiting on its upstream passes
/// its turn on. The upstream answers nobody until every call has reached it.
#[test]
fn more_slow_upstream_calls_than_turns_on_the_cores_are_all_in_flight_at_once() {
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    let calls = 4 * cores + 8;
    let upstream = BarrierUpstream::start(calls, Duration::from_secs(10));
    let workers = calls.to_string();
    let app = TestApp::spawn_with(&[("WORKERS", workers.as_str())]);
    route(&app, "openai", &upstream.url, &["crowd"]);

    let bodies: Vec<(bool, Vec<u8>)> = thread::scope(|s| {
        let handles: Vec<_> = (0..calls)
            .map(|i| {
                let app = &app;
                s.spawn(move || {
                    let streamed = i % 2 == 0;
                    let mut request = chat(&format!("call {i}"));
                    request["stream"] = json!(streamed);
                    let stream = Stream::open(app, "crowd", &request);
                    assert_eq!(stream.status, 200, "call {i}");
                    (streamed, stream.body())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    assert_eq!(
        upstream.most_waiting.load(Ordering::SeqCst),
        calls,
        "not every call reached the upstream while the others were still waiting on it"
    );
    for (streamed, body) in bodies {
        let text = String::from_utf8(body).unwrap();
        if streamed {
            assert!(text.ends_with(DONE), "a whole stream: {text:?}");
            assert!(text.contains("after the crowd"), "{text:?}");
        } else {
            let answer: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(
                answer["choices"][0]["message"]["content"],
                "after the crowd"
            );
        }
    }
    audit_rows(&app, "crowd", calls);
}

/// A provider with a thread per connection that holds every answer (a stream after its first
/// event) until `expected` requests have been waiting on it at once, or `limit` has passed;
/// `most_waiting` is the most that ever were.
struct BarrierUpstream {
    url: String,
    most_waiting: Arc<AtomicUsize>,
}

impl BarrierUpstream {
    fn start(expected: usize, limit: Duration) -> BarrierUpstream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let waiting = Arc::new(AtomicUsize::new(0));
        let most_waiting = Arc::new(AtomicUsize::new(0));
        let (w, most) = (waiting.clone(), most_waiting.clone());
        thread::spawn(move || {
            for conn in listener.incoming().map_while(Result::ok) {
                let (waiting, most) = (w.clone(), most.clone());
                thread::spawn(move || {
                    Self::answer(conn, expected, limit, &waiting, &most);
                });
            }
        });
        BarrierUpstream { url, most_waiting }
    }

    fn answer(
        mut conn: TcpStream,
        expected: usize,
        limit: Duration,
        waiting: &AtomicUsize,
        most: &AtomicUsize,
    ) {
        let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
        let Some(body) = read_whole_request(&mut conn) else {
            return;
        };
        let streamed = serde_json::from_slice::<Value>(&body)
            .map(|b| b["stream"] == json!(true))
            .unwrap_or(false);
        if streamed {
            let head =
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n";
            let first = openai_chunk(json!({"role": "assistant", "content": ""}), None);
            if conn
                .write_all(format!("{head}{first}").as_bytes())
                .and_then(|_| conn.flush())
                .is_err()
            {
                return;
            }
        }
        let now = waiting.fetch_add(1, Ordering::SeqCst) + 1;
        most.fetch_max(now, Ordering::SeqCst);
        let deadline = Instant::now() + limit;
        while most.load(Ordering::SeqCst) < expected && Instant::now() < deadline {
            thread::sleep(ms(5));
        }
        waiting.fetch_sub(1, Ordering::SeqCst);
        let reply = if streamed {
            let mut events = openai_chunk(json!({"content": "after the crowd"}), Some("stop"));
            events.push_str(DONE);
            events
        } else {
            let body = json!({
                "id": "chatcmpl-crowd", "object": "chat.completion", "created": 1,
                "model": OPENAI_MODEL,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "after the crowd"}}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
            })
            .to_string();
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        };
        let _ = conn.write_all(reply.as_bytes()).and_then(|_| conn.flush());
    }
}

/// A request's body, read after its head by its `Content-Length`.
fn read_whole_request(conn: &mut TcpStream) -> Option<Vec<u8>> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while data.len() < head_end + length {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    }
    Some(data[head_end..head_end + length].to_vec())
}
