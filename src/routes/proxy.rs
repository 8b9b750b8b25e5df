//! `/v1/*`: the OpenAI-compatible endpoint agents call, relayed to their active model.
//!
//! This is the data plane: a request here reads the in-memory routing state, calls the
//! upstream and appends its audit row to the journal. It never touches the database.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::anthropic;
use crate::anthropic_inbound;
use crate::anthropic_passthrough;
use crate::anthropic_stream;
use crate::app::App;
use crate::audit::{self, Endpoint, RequestRecord, Target};
use crate::auth::{self, Access, Principal};
use crate::error::ApiError;
use crate::http::{Reply, Req};
use crate::input::{check_agent_id, Fields};
use crate::journal::Journal;
use crate::provider::ProviderType;
use crate::responses_stream;
use crate::sse;
use crate::state::{no_active_model, Route, Snapshot};
use crate::upstream::{self, Answer, Streaming};
use crate::usage::Usage;

use crate::anthropic::ANTHROPIC_VERSION;

/// Fields a model's `drop_params` can never remove: the proxy itself depends on them.
const PROTECTED_FIELDS: [&str; 3] = ["model", "messages", "stream"];

/// `GET /v1/models`: enabled models of every profile, as `PROFILE::model`.
pub fn list_models(app: &App) -> Result<Reply, ApiError> {
    Ok(Reply::raw_json(200, loaded(app)?.models_body().to_vec()))
}

/// The routing state, or a 503 while none was ever loaded (the database has not been
/// reached since startup).
pub(super) fn loaded(app: &App) -> Result<Arc<Snapshot>, ApiError> {
    app.state.snapshot().ok_or_else(|| ApiError::Unavailable {
        code: "state_not_loaded",
        message: "the routing state is not loaded yet: the database has not been reached \
                  since this instance started"
            .into(),
    })
}

pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(super) fn elapsed_ms(started: Instant) -> i32 {
    started.elapsed().as_millis().min(i32::MAX as u128) as i32
}

/// `POST /v1/chat/completions`: the key in `Authorization: Bearer`, errors in OpenAI's shape.
pub fn chat_completions(app: &App, req: &Req) -> Result<Reply, ApiError> {
    let key = auth::bearer(req.header("authorization"));
    serve(
        app,
        req,
        Endpoint::ChatCompletions,
        key,
        relay,
        Reply::error,
    )
}

/// How one proxy route turns a request into an upstream call and its answer.
pub(super) type RelayFn = fn(&App, &Req, &mut RequestRecord) -> Result<Relay, ApiError>;

/// What every proxy route does, top to bottom: the agent, its key, room in the journal, then
/// the route's relay; every request that gets that far leaves one audit row, appended before
/// the answer's last byte goes out. `error_reply` gives errors the route's dialect.
pub(super) fn serve(
    app: &App,
    req: &Req,
    endpoint: Endpoint,
    key: Option<&str>,
    relay: RelayFn,
    error_reply: fn(&ApiError) -> Reply,
) -> Result<Reply, ApiError> {
    let claimed = claimed_agent(req)?;
    // A refused key leaves no row (anyone could fill the table with them).
    let who = auth::authorize_key(app, Access::Proxy, key)?;
    let agent_id = agent_of(&who, claimed)?;
    crate::metrics::note_agent(&agent_id);
    app.journal.check_room()?;
    let mut record = RequestRecord {
        endpoint,
        agent_id,
        received_at: req.received_at,
        ..RequestRecord::default()
    };
    let reply = match relay(app, req, &mut record) {
        // A stream appends its row itself, once it has ended.
        Ok(Relay::Streamed(reply)) => return Ok(reply),
        Ok(Relay::Answered(reply)) => {
            if reply.status >= 400 {
                // The upstream's own error, relayed as it came: the log and the audit row
                // say what it was, since the client cannot tell it from ours otherwise.
                let hint = loaded(app)
                    .ok()
                    .and_then(|s| {
                        s.route(&record.agent_id)
                            .and_then(|r| version_hint(r, reply.status))
                    })
                    .unwrap_or_default();
                let what = format!(
                    "the upstream answered {}: {}{hint}",
                    reply.status,
                    upstream_reason(&reply)
                );
                crate::warn!(
                    "POST {} (agent {}): {what}",
                    req.path.escape_debug(),
                    record.agent_id.escape_debug()
                );
                record.error = Some(what);
            }
            reply
        }
        Err(e) => {
            if e.status() >= 500 {
                crate::error!("POST {}: {e}", req.path.escape_debug());
            }
            record.error = Some(e.message());
            error_reply(&e)
        }
    };
    record.status = reply.status;
    record.latency_ms = elapsed_ms(req.started);
    note_usage(&record);
    app.journal.append(&record)?;
    Ok(with_target_headers(reply, record.target.as_ref()))
}

/// The agent's route and its profile's key, noted in the audit record.
pub(super) fn resolve(app: &App, record: &mut RequestRecord) -> Result<(Route, String), ApiError> {
    let snapshot = loaded(app)?;
    let route = snapshot
        .route(&record.agent_id)
        .cloned()
        .ok_or_else(|| ApiError::bad_request(no_active_model(&record.agent_id)))?;
    if let Some(series) = snapshot.series(&route) {
        crate::metrics::note_series(series);
    }
    let profile = &route.profile;
    record.target = Some(Target {
        profile_name: profile.name.clone(),
        provider_type: profile.provider_type.as_str().to_string(),
        model_name: route.model.name.clone(),
    });
    let api_key = app.open_api_key(profile.id, &profile.name, &profile.sealed_credentials)?;
    Ok((route, api_key))
}

/// What the upstream sent back.
pub(super) enum Sent {
    /// A whole answer: a non-streaming call, or a stream that came back as one JSON document
    /// (an error, or an upstream that ignored `stream`).
    Whole(Answer),
    /// A successful event stream, still arriving.
    Stream(Streaming),
}

/// One whole upstream call, noted for `/metrics` (its status, or ours when it failed).
pub(super) fn call(app: &App, call: &Call) -> Result<Answer, ApiError> {
    let headers: Vec<(&str, &str)> = call.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let started = Instant::now();
    let answer = app.gate.aside(|| {
        app.upstream
            .call("POST", &call.url, &headers, Some(&call.body))
    });
    let status = answer.as_ref().map_or_else(ApiError::status, |a| a.status);
    crate::metrics::note_upstream(status, started.elapsed());
    answer
}

/// The token usage of a finished request, for `/metrics`.
pub(super) fn note_usage(record: &RequestRecord) {
    if let Some(u) = record.usage {
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        crate::metrics::note_tokens(count(u.prompt_tokens), count(u.completion_tokens));
    }
}

/// Calls the upstream, as a stream when `stream`.
pub(super) fn send(app: &App, call: &Call, stream: bool) -> Result<Sent, ApiError> {
    if !stream {
        return Ok(Sent::Whole(self::call(app, call)?));
    }
    let headers: Vec<(&str, &str)> = call.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let started = Instant::now();
    let opened = app
        .gate
        .aside(|| app.upstream.open_stream(&call.url, &headers, &call.body));
    let status = opened.as_ref().map_or_else(ApiError::status, |s| s.status);
    crate::metrics::note_upstream(status, started.elapsed());
    let mut streaming = opened?;
    // Reading the answer is waiting on the upstream too, not time spent in the service.
    streaming.body = Box::new(crate::metrics::TimedRead(streaming.body));
    let is_event_stream = streaming.content_type.starts_with("text/event-stream");
    if !(200..300).contains(&streaming.status) || !is_event_stream {
        return Ok(Sent::Whole(read_whole(app, streaming)?));
    }
    Ok(Sent::Stream(streaming))
}

/// The agent a request says it speaks for (`x-agent-id`), if it says so.
pub fn claimed_agent(req: &Req) -> Result<Option<String>, ApiError> {
    let Some(agent_id) = req
        .header("x-agent-id")
        .map(str::trim)
        .filter(|a| !a.is_empty())
    else {
        return Ok(None);
    };
    // Not a usable agent id, so there is nothing to attribute an audit row to.
    check_agent_id(agent_id)
        .map_err(|e| ApiError::bad_request(format!("header x-agent-id: {}", e.message())))?;
    Ok(Some(agent_id.to_string()))
}

/// The agent a request speaks for: an agent key's own agent (a different `x-agent-id` is a
/// 403), else `x-agent-id`, else `default`.
pub fn agent_of(who: &Principal, claimed: Option<String>) -> Result<String, ApiError> {
    match (who.bound_agent(), claimed) {
        (Some(own), None) => Ok(own.to_string()),
        (_, Some(claimed)) => {
            who.may_act_for(&claimed)?;
            Ok(claimed)
        }
        (None, None) => Ok("default".to_string()),
    }
}

pub(super) fn with_target_headers(reply: Reply, target: Option<&Target>) -> Reply {
    match target {
        Some(t) => reply
            .with_header("x-switcher-profile", &t.profile_name)
            .with_header("x-switcher-model", &t.model_name),
        None => reply,
    }
}

pub(super) enum Relay {
    /// A complete answer; the caller appends the audit row.
    Answered(Reply),
    /// A stream that appends its own audit row when it ends.
    Streamed(Reply),
}

fn relay(app: &App, req: &Req, record: &mut RequestRecord) -> Result<Relay, ApiError> {
    let body = req.json_object()?;
    record.prompt_sha256 = Some(audit::prompt_sha256(&body));
    check_chat_request(&body)?;
    let stream = body.get("stream") == Some(&Value::Bool(true));
    let include_usage = body
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        == Some(&Value::Bool(true));
    record.stream = stream;

    let (route, api_key) = resolve(app, record)?;
    let (profile, model) = (&route.profile, &route.model);
    let body = drop_params(body, &model.drop_params);
    let call = match profile.provider_type {
        ProviderType::Anthropic => anthropic_call(&route, body, &api_key)?,
        ProviderType::OpenAiCompatible | ProviderType::OpenAi => {
            openai_call(&route, body, &api_key)
        }
    };
    let streaming = match send(app, &call, stream)? {
        Sent::Whole(answer) => {
            let (reply, usage) = finish_answer(&route, answer, &api_key)?;
            record.usage = usage;
            return Ok(Relay::Answered(reply));
        }
        Sent::Stream(streaming) => streaming,
    };
    let relay = match profile.provider_type {
        ProviderType::Anthropic => Translate::Anthropic(anthropic_stream::Translator::new(
            unix_now(),
            &model.name,
            include_usage,
        )),
        ProviderType::OpenAi | ProviderType::OpenAiCompatible => Translate::Passthrough {
            parser: sse::Parser::new(),
            usage: None,
            done: false,
        },
    };
    Ok(Relay::Streamed(stream_reply(
        app,
        streaming,
        relay,
        record,
        req.started,
        api_key,
    )))
}

/// Removes the model's `drop_params` from the top level of the request.
pub(super) fn drop_params(mut body: Map<String, Value>, drop: &[String]) -> Map<String, Value> {
    for field in drop {
        if !PROTECTED_FIELDS.contains(&field.as_str()) {
            body.remove(field);
        }
    }
    body
}

/// An upstream request, ready to send.
pub(super) struct Call {
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

pub(super) fn openai_call(route: &Route, mut body: Map<String, Value>, api_key: &str) -> Call {
    body.insert("model".into(), Value::String(route.model.name.clone()));
    if let Some(cap) = route.model.max_tokens {
        apply_max_tokens(&mut body, cap, route.profile.provider_type);
    }
    Call {
        url: format!("{}/chat/completions", route.profile.base_url),
        headers: vec![
            ("Authorization", format!("Bearer {api_key}")),
            ("Content-Type", "application/json".into()),
        ],
        body: serde_json::to_vec(&body).unwrap_or_default(),
    }
}

/// The model's `max_tokens` is the default when the request sets no limit and the cap when it
/// asks for more. OpenAI itself takes `max_completion_tokens` (its reasoning models refuse
/// `max_tokens`); OpenAI-compatible servers widely know only `max_tokens`.
fn apply_max_tokens(body: &mut Map<String, Value>, cap: i64, provider_type: ProviderType) {
    let mut found = false;
    for field in ["max_completion_tokens", "max_tokens"] {
        if let Some(v) = body.get_mut(field) {
            if let Some(n) = v.as_i64() {
                found = true;
                if n > cap {
                    *v = Value::from(cap);
                }
            } else if v.is_null() {
                *v = Value::from(cap);
                found = true;
            }
        }
    }
    if !found {
        let field = if provider_type == ProviderType::OpenAi {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        body.insert(field.into(), Value::from(cap));
    }
}

pub(super) fn anthropic_call(
    route: &Route,
    body: Map<String, Value>,
    api_key: &str,
) -> Result<Call, ApiError> {
    let translated = anthropic::translate_request(
        &Value::Object(body),
        &route.model.name,
        route.model.max_tokens,
    )
    .map_err(|e| ApiError::BadRequest(e.0))?;
    Ok(Call {
        url: format!("{}/v1/messages", route.profile.base_url),
        headers: vec![
            ("x-api-key", api_key.to_string()),
            ("anthropic-version", ANTHROPIC_VERSION.to_string()),
            ("Content-Type", "application/json".into()),
        ],
        body: serde_json::to_vec(&translated).unwrap_or_default(),
    })
}

pub(super) fn read_whole(app: &App, mut streaming: Streaming) -> Result<Answer, ApiError> {
    let body = app
        .gate
        .aside(|| app.upstream.read_body(&mut streaming.body, None))?;
    Ok(Answer {
        status: streaming.status,
        body,
    })
}

/// Turns a complete upstream answer into the agent's reply, with its usage when known.
fn finish_answer(
    route: &Route,
    answer: Answer,
    api_key: &str,
) -> Result<(Reply, Option<Usage>), ApiError> {
    let not_json = || {
        ApiError::BadGateway(format!(
            "upstream answered status {} with a body that is not JSON{}",
            answer.status,
            version_hint(route, answer.status).unwrap_or_default()
        ))
    };
    let ok = (200..300).contains(&answer.status);
    if route.profile.provider_type == ProviderType::Anthropic {
        let parsed: Value = serde_json::from_slice(&answer.body).map_err(|_| not_json())?;
        if !ok {
            let body = serde_json::to_vec(&anthropic::translate_error(&parsed)).unwrap_or_default();
            return Ok((Reply::raw_json(answer.status, redact(body, api_key)), None));
        }
        if !parsed.get("content").is_some_and(Value::is_array) {
            return Err(ApiError::BadGateway(format!(
                "upstream answered status {} with a body that is not an Anthropic message",
                answer.status
            )));
        }
        let usage = parsed
            .get("usage")
            .and_then(anthropic::usage_from_anthropic);
        let body = anthropic::translate_response(&parsed, unix_now());
        return Ok((Reply::json(answer.status, &body), usage));
    }
    // The upstream's own bytes go back unchanged (its key masked): only `usage` is read.
    let usage = crate::usage::usage_field(&answer.body)
        .map_err(|_| not_json())?
        .filter(|_| ok)
        .and_then(|u| Usage::from_openai(&u));
    Ok((
        Reply::raw_json(answer.status, redact(answer.body, api_key)),
        usage,
    ))
}

/// The short reason an upstream's error body gives (`error.message`, `error`, `message` or
/// `detail`), at most 200 characters; the body was masked of the profile's key already.
fn upstream_reason(reply: &Reply) -> String {
    let crate::http::Body::Bytes { data, .. } = &reply.body else {
        return "(no body)".into();
    };
    let parsed: Value = serde_json::from_slice(data).unwrap_or(Value::Null);
    let text = [
        parsed.pointer("/error/message"),
        parsed.get("error"),
        parsed.get("message"),
        parsed.get("detail"),
    ]
    .into_iter()
    .flatten()
    .find_map(Value::as_str)
    .unwrap_or("(no message)");
    let short: String = text.chars().take(200).collect();
    short.escape_debug().to_string()
}

/// For a 404 from an OpenAI-type upstream whose `base_url` has no version path: most such
/// servers serve `/v1/chat/completions`, so the likely fix is a `/v1` on the base URL.
fn version_hint(route: &Route, status: u16) -> Option<String> {
    let profile = &route.profile;
    if status != 404 || profile.provider_type == ProviderType::Anthropic {
        return None;
    }
    let path = profile.base_url.splitn(4, '/').nth(3).unwrap_or_default();
    let versioned = path.split('/').any(|segment| {
        segment.len() > 1
            && segment.starts_with('v')
            && segment[1..]
                .bytes()
                .all(|b| b.is_ascii_digit() || b == b'.')
    });
    (!versioned).then(|| {
        format!(
            " (hint: the profile's base_url {} has no version path; OpenAI-compatible servers \
             usually serve /v1/chat/completions: set base_url to {}/v1 with PATCH \
             /admin/profiles/{})",
            profile.base_url, profile.base_url, profile.id
        )
    })
}

/// Upstream errors may quote the key they were sent ("Incorrect API key provided: sk-…");
/// the agent must never see a profile's credential, so every occurrence is masked.
pub(super) fn redact(body: Vec<u8>, secret: &str) -> Vec<u8> {
    let secret = secret.as_bytes();
    // A key this short would mask ordinary text; no provider issues one.
    if secret.len() < 6 || !body.windows(secret.len()).any(|w| w == secret) {
        return body;
    }
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        if body[i..].starts_with(secret) {
            out.extend_from_slice(b"[redacted]");
            i += secret.len();
        } else {
            out.push(body[i]);
            i += 1;
        }
    }
    out
}

/// `redact` for a body that comes in pieces: an occurrence of the key split across two reads
/// is masked too. Only a tail that could be the start of the key is held back, until the next
/// piece (or the end) shows whether it is.
pub(super) struct Redactor {
    secret: String,
    held: Vec<u8>,
}

impl Redactor {
    pub(super) fn new(secret: &str) -> Redactor {
        Redactor {
            secret: secret.to_string(),
            held: Vec::new(),
        }
    }

    pub(super) fn feed(&mut self, bytes: Vec<u8>) -> Vec<u8> {
        if self.secret.len() < 6 {
            return bytes;
        }
        let mut data = std::mem::take(&mut self.held);
        if data.is_empty() {
            data = bytes;
        } else {
            data.extend_from_slice(&bytes);
        }
        let mut out = redact(data, &self.secret);
        let secret = self.secret.as_bytes();
        if let Some(k) = (1..secret.len())
            .rev()
            .find(|&k| out.ends_with(&secret[..k]))
        {
            self.held = out.split_off(out.len() - k);
        }
        out
    }

    /// What was held back, once nothing more comes.
    pub(super) fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.held)
    }
}

/// The checks every provider type gets, so that a malformed request is a 400 naming the
/// field here rather than whatever each upstream makes of it.
fn check_chat_request(body: &Map<String, Value>) -> Result<(), ApiError> {
    let f = Fields(body);
    let messages = f
        .opt_list("messages", "a list of messages")?
        .ok_or_else(|| ApiError::bad_request("field `messages` is required"))?;
    for (i, message) in messages.iter().enumerate() {
        let Value::Object(message) = message else {
            return Err(ApiError::bad_request(format!(
                "field `messages[{i}]` must be an object"
            )));
        };
        if !message.get("role").is_some_and(Value::is_string) {
            return Err(ApiError::bad_request(format!(
                "field `messages[{i}].role` must be a string"
            )));
        }
    }
    f.opt_bool("stream")?;
    for name in ["max_tokens", "max_completion_tokens", "n"] {
        f.opt_whole(name)?;
    }
    for name in [
        "temperature",
        "top_p",
        "presence_penalty",
        "frequency_penalty",
    ] {
        f.opt_number(name)?;
    }
    f.opt_object("stream_options")?;
    f.opt_list("tools", "a list")?;
    Ok(())
}

/// How a stream's bytes become the agent's bytes.
pub(super) enum Translate {
    /// OpenAI-type upstreams: bytes relayed as they are, watched for usage and `[DONE]`.
    Passthrough {
        parser: sse::Parser,
        usage: Option<Usage>,
        done: bool,
    },
    /// Anthropic upstream, OpenAI client.
    Anthropic(anthropic_stream::Translator),
    /// OpenAI-type upstream, Anthropic client (`/v1/messages`).
    Inbound(anthropic_inbound::StreamTranslator),
    /// Anthropic upstream, Anthropic client: bytes relayed as they are, watched for usage
    /// and `message_stop`. `failure` notes a stream that ended without either.
    AnthropicPassthrough {
        watcher: anthropic_passthrough::Watcher,
        failure: Option<String>,
    },
    /// Responses client (`/v1/responses`) of a chat upstream; from an Anthropic upstream
    /// the events first become chat chunks (`anthropic`), then Responses events.
    Responses {
        anthropic: Option<Box<anthropic_stream::Translator>>,
        responses: Box<responses_stream::Translator>,
    },
    /// Responses client of an `openai` profile: bytes relayed as they are, watched.
    ResponsesPassthrough(responses_stream::Watcher),
}

impl Translate {
    fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        match self {
            Translate::Anthropic(t) => t.feed(bytes),
            Translate::Inbound(t) => t.feed(bytes),
            Translate::AnthropicPassthrough { watcher, .. } => {
                watcher.feed(bytes);
                bytes.to_vec()
            }
            Translate::Responses {
                anthropic,
                responses,
            } => match anthropic {
                Some(a) => {
                    let chunks = a.feed(bytes);
                    responses.feed(&chunks)
                }
                None => responses.feed(bytes),
            },
            Translate::ResponsesPassthrough(watcher) => {
                watcher.feed(bytes);
                bytes.to_vec()
            }
            Translate::Passthrough {
                parser,
                usage,
                done,
            } => {
                // A parse failure only loses usage for the audit; the bytes still go through.
                for event in parser.feed(bytes).unwrap_or_default() {
                    if event.data == "[DONE]" {
                        *done = true;
                    } else if event.data.contains("\"usage\"") {
                        if let Ok(v) = serde_json::from_str::<Value>(&event.data) {
                            if let Some(u) = v.get("usage").and_then(Usage::from_openai) {
                                *usage = Some(u);
                            }
                        }
                    }
                }
                bytes.to_vec()
            }
        }
    }

    fn finish(&mut self) -> Vec<u8> {
        match self {
            Translate::Anthropic(t) => t.finish(),
            Translate::Inbound(t) => t.finish(),
            Translate::AnthropicPassthrough { watcher, failure } => {
                if watcher.is_done() {
                    return Vec::new();
                }
                // The client must not take a cut answer for a whole one.
                let message = "the upstream stream ended before message_stop";
                *failure = Some(message.into());
                anthropic_inbound::error_event(message)
            }
            Translate::Responses {
                anthropic,
                responses,
            } => {
                let mut out = match anthropic {
                    Some(a) => {
                        let chunks = a.finish();
                        responses.feed(&chunks)
                    }
                    None => Vec::new(),
                };
                out.extend(responses.finish());
                out
            }
            Translate::ResponsesPassthrough(_) | Translate::Passthrough { .. } => Vec::new(),
        }
    }

    /// The upstream connection failed mid-stream: the error event of the client's dialect.
    fn broken(&mut self, e: &ApiError) -> Vec<u8> {
        match self {
            Translate::Inbound(t) => t.broken(&e.message()),
            Translate::AnthropicPassthrough { .. } => anthropic_inbound::error_event(&e.message()),
            Translate::Responses { responses, .. } => responses.broken(&e.message()),
            Translate::ResponsesPassthrough(_) => Vec::new(),
            Translate::Anthropic(_) | Translate::Passthrough { .. } => {
                sse::data_event(&e.body().to_string()).into_bytes()
            }
        }
    }

    /// Why the stream did not end properly, for the audit row.
    fn error(&self) -> Option<String> {
        match self {
            Translate::Anthropic(t) => t.error().map(str::to_string),
            Translate::Inbound(t) => t.error().map(str::to_string),
            Translate::AnthropicPassthrough { watcher, failure } => failure
                .clone()
                .or_else(|| watcher.error().map(str::to_string)),
            // Relayed as it came: an OpenAI-type stream that ends without `[DONE]` is passed
            // on as it is (some compatible servers never send it), but the audit notes it.
            Translate::Responses { responses, .. } => responses.error().map(str::to_string),
            Translate::ResponsesPassthrough(w) => match w.error() {
                Some(e) => Some(e.to_string()),
                None if !w.is_done() => {
                    Some("the upstream stream ended before response.completed".into())
                }
                None => None,
            },
            Translate::Passthrough { done: false, .. } => {
                Some("the upstream stream ended without [DONE]".into())
            }
            Translate::Passthrough { .. } => None,
        }
    }

    fn is_done(&self) -> bool {
        match self {
            Translate::Anthropic(t) => t.is_done(),
            Translate::Inbound(t) => t.is_done(),
            Translate::AnthropicPassthrough { watcher, .. } => watcher.is_done(),
            Translate::Responses { responses, .. } => responses.is_done(),
            Translate::ResponsesPassthrough(w) => w.is_done(),
            Translate::Passthrough { done, .. } => *done,
        }
    }

    fn usage(&self) -> Option<Usage> {
        match self {
            Translate::Anthropic(t) => t.usage(),
            Translate::Inbound(t) => t.usage(),
            Translate::AnthropicPassthrough { watcher, .. } => watcher.usage(),
            Translate::Responses {
                anthropic,
                responses,
            } => responses
                .usage()
                .or_else(|| anthropic.as_ref().and_then(|a| a.usage())),
            Translate::ResponsesPassthrough(w) => w.usage(),
            Translate::Passthrough { usage, .. } => *usage,
        }
    }
}

/// The streamed reply: relays event by event. Once the upstream ended (or failed, or the
/// agent went away), the audit row is appended, and only then is the terminating chunk sent,
/// so no answered stream is without its row.
pub(super) fn stream_reply(
    app: &App,
    streaming: Streaming,
    mut relay: Translate,
    record: &RequestRecord,
    started: Instant,
    api_key: String,
) -> Reply {
    let mut record = record.clone();
    record.status = streaming.status;
    let target = record.target.clone();
    let journal: Arc<Journal> = app.journal.clone();
    let upstream = app.upstream.clone();
    let status = streaming.status;
    let mut body = streaming.body;
    let reply = Reply::stream(
        status,
        Box::new(move |out: &mut dyn Write| {
            let mut buf = vec![0u8; 16 * 1024];
            let mut client_gone = None;
            let mut failure = None;
            let mut redactor = Redactor::new(&api_key);
            let mut upstream_ended = false;
            loop {
                let bytes = match body.read(&mut buf) {
                    Ok(0) => {
                        upstream_ended = true;
                        relay.finish()
                    }
                    Ok(n) => relay.feed(&buf[..n]),
                    Err(e) => {
                        upstream_ended = true;
                        let e = upstream.io_failure(&e);
                        failure = Some(e.message());
                        relay.broken(&e)
                    }
                };
                // An error event may quote the key, as error bodies may; so may a model that
                // was shown it, and one read may end in the middle of it.
                let mut bytes = redactor.feed(bytes);
                let last = upstream_ended || relay.is_done();
                if last {
                    bytes.extend(redactor.finish());
                }
                if !bytes.is_empty() {
                    if let Err(e) = out.write_all(&bytes) {
                        client_gone = Some(e);
                        break;
                    }
                }
                if last {
                    break;
                }
            }
            // A stream that gave its last event is read to its end, so that its connection
            // goes back to the pool. Any other is dropped half-read, which closes its
            // connection (and ends a generation the agent no longer reads).
            if client_gone.is_none() && !upstream_ended {
                upstream::release(body);
            } else {
                drop(body);
            }
            record.error = match &client_gone {
                Some(e) if e.kind() == std::io::ErrorKind::FileTooLarge => Some(format!(
                    "the stream is larger than {} MiB, the most an HTTP/1.0 client gets in one body",
                    upstream::MAX_ANSWER_BYTES >> 20
                )),
                Some(_) => Some("the client went away before the stream ended".into()),
                None => failure
                    .or_else(|| relay.error())
                    .map(|e| {
                        String::from_utf8_lossy(&redact(e.into_bytes(), &api_key)).into_owned()
                    })
                    // A note made before the stream began (tools dropped), when nothing failed.
                    .or_else(|| record.error.take()),
            };
            record.usage = relay.usage();
            record.latency_ms = elapsed_ms(started);
            note_usage(&record);
            if let Err(e) = journal.append(&record) {
                // Without its row the stream must not end as if complete.
                return Err(std::io::Error::other(e.message()));
            }
            match client_gone {
                Some(e) => Err(e),
                None => Ok(()),
            }
        }),
    );
    with_target_headers(reply, target.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn max_tokens_becomes_the_default_when_the_request_has_none() {
        let mut body = obj(json!({"messages": []}));
        apply_max_tokens(&mut body, 100, ProviderType::OpenAi);
        assert_eq!(body["max_completion_tokens"], 100);
        let mut body = obj(json!({"messages": []}));
        apply_max_tokens(&mut body, 100, ProviderType::OpenAiCompatible);
        assert_eq!(body["max_tokens"], 100);
    }

    #[test]
    fn max_tokens_caps_requests_that_ask_for_more() {
        let mut body = obj(json!({"max_tokens": 500, "max_completion_tokens": 50}));
        apply_max_tokens(&mut body, 100, ProviderType::OpenAi);
        assert_eq!(body["max_tokens"], 100);
        assert_eq!(body["max_completion_tokens"], 50);
    }

    #[test]
    fn drop_params_removes_fields_but_never_the_protected_ones() {
        let body = obj(
            json!({"temperature": 1, "top_p": 1, "model": "x", "stream": true, "messages": []}),
        );
        let kept = drop_params(
            body,
            &[
                "temperature".into(),
                "top_p".into(),
                "model".into(),
                "stream".into(),
            ],
        );
        assert_eq!(
            Value::Object(kept),
            json!({"model": "x", "stream": true, "messages": []})
        );
    }

    fn route_to(base_url: &str, provider_type: ProviderType) -> Route {
        Route {
            profile: Arc::new(crate::state::Profile {
                id: 3,
                name: "p".into(),
                provider_type,
                base_url: base_url.into(),
                sealed_credentials: Vec::new(),
            }),
            model: Arc::new(crate::state::Model {
                name: "m".into(),
                max_tokens: None,
                drop_params: Vec::new(),
            }),
        }
    }

    #[test]
    fn a_404_from_a_base_url_without_a_version_path_gets_a_hint() {
        let bare = route_to("http://localhost:8000", ProviderType::OpenAiCompatible);
        let hint = version_hint(&bare, 404).unwrap();
        assert!(
            hint.contains("http://localhost:8000/v1") && hint.contains("PATCH /admin/profiles/3"),
            "{hint}"
        );
        assert_eq!(version_hint(&bare, 500), None);
        for url in [
            "http://localhost:8000/v1",
            "https://api.example.com/openai/v1",
            "https://x.example/api/v4.1",
        ] {
            assert_eq!(
                version_hint(&route_to(url, ProviderType::OpenAi), 404),
                None,
                "{url}"
            );
        }
        assert_eq!(
            version_hint(
                &route_to("https://api.anthropic.com", ProviderType::Anthropic),
                404
            ),
            None
        );
    }

    #[test]
    fn an_upstream_error_is_summed_up_by_its_message() {
        let reason = |body: &str| upstream_reason(&Reply::raw_json(401, body.as_bytes().to_vec()));
        assert_eq!(
            reason(r#"{"error":{"message":"Incorrect API key provided: [redacted]"}}"#),
            "Incorrect API key provided: [redacted]"
        );
        assert_eq!(reason(r#"{"error":"model not found"}"#), "model not found");
        assert_eq!(reason(r#"{"detail":"Not Found"}"#), "Not Found");
        assert_eq!(reason("<html>"), "(no message)");
        assert_eq!(
            reason(&format!(r#"{{"message":"{}"}}"#, "x".repeat(500))).len(),
            200
        );
    }

    #[test]
    fn every_occurrence_of_the_key_is_masked() {
        let body =
            br#"{"error":{"message":"Incorrect API key provided: sk-secret-1. Key sk-secret-1"}}"#;
        let out = String::from_utf8(redact(body.to_vec(), "sk-secret-1")).unwrap();
        assert_eq!(
            out,
            r#"{"error":{"message":"Incorrect API key provided: [redacted]. Key [redacted]"}}"#
        );
        assert_eq!(redact(b"plain".to_vec(), "sk-secret-1"), b"plain");
    }

    #[test]
    fn a_key_split_across_pieces_is_masked_and_nothing_else_is_held() {
        let key = "sk-secret-123";
        let text = "before sk-secret-123 middle sk-secret-123 after sk-";
        for cut in 0..text.len() {
            let mut r = Redactor::new(key);
            let (a, b) = text.as_bytes().split_at(cut);
            let mut out = r.feed(a.to_vec());
            out.extend(r.feed(b.to_vec()));
            out.extend(r.finish());
            assert_eq!(
                String::from_utf8(out).unwrap(),
                "before [redacted] middle [redacted] after sk-",
                "cut at {cut}"
            );
        }
        let mut r = Redactor::new(key);
        assert_eq!(r.feed(b"data: {}\n\n".to_vec()), b"data: {}\n\n");
    }

    #[test]
    fn malformed_chat_requests_name_the_field() {
        for (body, field) in [
            (json!({}), "`messages`"),
            (json!({"messages": "hi"}), "`messages`"),
            (json!({"messages": ["hi"]}), "`messages[0]`"),
            (
                json!({"messages": [{"content": "x"}]}),
                "`messages[0].role`",
            ),
            (json!({"messages": [], "stream": "yes"}), "`stream`"),
            (json!({"messages": [], "max_tokens": "10"}), "`max_tokens`"),
            (
                json!({"messages": [], "temperature": "hot"}),
                "`temperature`",
            ),
        ] {
            let e = check_chat_request(body.as_object().unwrap()).unwrap_err();
            assert!(e.message().contains(field), "{body}: {}", e.message());
        }
        let fine = json!({"messages": [{"role": "user", "content": "hi"}], "stream": null,
                          "max_tokens": 5, "temperature": 0.2});
        assert!(check_chat_request(fine.as_object().unwrap()).is_ok());
    }

    #[test]
    fn passthrough_relays_bytes_unchanged_and_notes_usage() {
        let mut relay = Translate::Passthrough {
            parser: sse::Parser::new(),
            usage: None,
            done: false,
        };
        let input = "data: {\"choices\":[]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\ndata: [DONE]\n\n";
        let (a, b) = input.as_bytes().split_at(30);
        let mut out = relay.feed(a);
        out.extend(relay.feed(b));
        assert_eq!(out, input.as_bytes());
        assert!(relay.is_done());
        assert_eq!(
            relay.usage(),
            Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 4
            })
        );
    }
}
