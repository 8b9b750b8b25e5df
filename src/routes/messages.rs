//! `/v1/messages` and `/v1/messages/count_tokens`: the Anthropic Messages API, for Claude Code
//! and the Anthropic SDKs, relayed to the agent's active model.
//!
//! Data plane, like the chat route, whose steps it shares (`proxy::serve`): to an `anthropic`
//! profile the body passes through with only its top level edited; to an OpenAI-type profile
//! it is translated both ways (`anthropic_inbound`). Errors take Anthropic's shape.

use serde_json::{json, Map, Value};

use crate::anthropic_inbound as inbound;
use crate::anthropic_passthrough::{self, Body};
use crate::app::App;
use crate::audit::{self, Endpoint, RequestRecord};
use crate::auth::{self, Access};
use crate::error::ApiError;
use crate::http::{Reply, Req};
use crate::provider::ProviderType;
use crate::routes::proxy::{self, Call, Relay, Sent, Translate};
use crate::state::Route;

/// The Anthropic API version sent upstream when the client names none.
const DEFAULT_VERSION: &str = "2023-06-01";

/// Fields a model's `drop_params` can never remove here.
const PROTECTED_FIELDS: [&str; 4] = ["model", "messages", "stream", "system"];

/// Whether a path is one of this file's (errors there take Anthropic's shape).
pub fn is_messages_path(path: &str) -> bool {
    path == "/v1/messages" || path.starts_with("/v1/messages/")
}

/// An error in Anthropic's shape: `{"type":"error","error":{"type","message"}}`.
pub fn error_reply(e: &ApiError) -> Reply {
    let status = e.status();
    let message = match e {
        // The Anthropic SDKs and Claude Code send `x-api-key`; say that both forms work.
        ApiError::Unauthorized => "missing or unknown API key: send it as the header \
                                   `x-api-key: <key>` or `Authorization: Bearer <key>`"
            .to_string(),
        _ => e.message(),
    };
    Reply::json(
        status,
        &inbound::error_body(inbound::own_error_type(status), &message),
    )
    .with_error_headers(e)
}

/// The key: `x-api-key` (what the Anthropic SDKs send), else `Authorization: Bearer`
/// (Claude Code's `ANTHROPIC_AUTH_TOKEN`).
fn key_of(req: &Req) -> Option<&str> {
    req.header("x-api-key")
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .or_else(|| auth::bearer(req.header("authorization")))
}

/// `POST /v1/messages`.
pub fn messages(app: &App, req: &Req) -> Result<Reply, ApiError> {
    proxy::serve(
        app,
        req,
        Endpoint::Messages,
        key_of(req),
        relay,
        error_reply,
    )
}

fn relay(app: &App, req: &Req, record: &mut RequestRecord) -> Result<Relay, ApiError> {
    let body = Body::parse(&req.body).map_err(ApiError::BadRequest)?;
    let (system, conversation) = (body.value("system"), body.value("messages"));
    record.prompt_sha256 = Some(audit::messages_prompt_sha256(
        system.as_ref(),
        conversation.as_ref(),
    ));
    let stream = check_request(&body)?;
    record.stream = stream;
    let (route, api_key) = proxy::resolve(app, record)?;
    match route.profile.provider_type {
        ProviderType::Anthropic => pass_through(app, req, record, &route, body, api_key, stream),
        ProviderType::OpenAi | ProviderType::OpenAiCompatible => {
            translated(app, req, record, &route, api_key, stream)
        }
    }
}

/// The checks that the proxy itself depends on; the rest is the upstream's to judge.
/// Returns whether the request asks for a stream.
fn check_request(body: &Body) -> Result<bool, ApiError> {
    match body.value("messages") {
        Some(Value::Array(_)) => {}
        None | Some(Value::Null) => {
            return Err(ApiError::bad_request("field `messages` is required"))
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "field `messages` must be a list of messages",
            ))
        }
    }
    match body.value("max_tokens") {
        None | Some(Value::Null) => {}
        Some(v) if v.as_u64().is_some() => {}
        Some(_) => {
            return Err(ApiError::bad_request(
                "field `max_tokens` must be a whole number",
            ))
        }
    }
    match body.value("stream") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => Ok(false),
        Some(Value::Bool(true)) => Ok(true),
        Some(_) => Err(ApiError::bad_request(
            "field `stream` must be true or false",
        )),
    }
}

/// The call to an Anthropic upstream: `path` under its base URL with the client's query
/// string, the client's version and beta headers, the profile's key.
fn anthropic_call(route: &Route, req: &Req, path: &str, body: Vec<u8>, api_key: &str) -> Call {
    let mut url = format!("{}{path}", route.profile.base_url);
    if !req.raw_query.is_empty() {
        url.push('?');
        url.push_str(&req.raw_query);
    }
    let version = req
        .header("anthropic-version")
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .unwrap_or(DEFAULT_VERSION);
    let mut headers = vec![
        ("x-api-key", api_key.to_string()),
        ("anthropic-version", version.to_string()),
        ("Content-Type", "application/json".to_string()),
    ];
    if let Some(beta) = req
        .header("anthropic-beta")
        .filter(|b| !b.trim().is_empty())
    {
        headers.push(("anthropic-beta", beta.to_string()));
    }
    Call { url, headers, body }
}

/// `model` replaced, `max_tokens` capped, `drop_params` removed; nothing else touched.
fn edit_for_upstream(body: &mut Body, route: &Route) {
    body.set("model", &Value::String(route.model.name.clone()));
    if let Some(cap) = route.model.max_tokens {
        anthropic_passthrough::cap_max_tokens(body, cap);
    }
    for field in &route.model.drop_params {
        if !PROTECTED_FIELDS.contains(&field.as_str()) {
            body.remove(field);
        }
    }
}

fn pass_through(
    app: &App,
    req: &Req,
    record: &mut RequestRecord,
    route: &Route,
    mut body: Body,
    api_key: String,
    stream: bool,
) -> Result<Relay, ApiError> {
    edit_for_upstream(&mut body, route);
    let call = anthropic_call(route, req, "/v1/messages", body.to_vec(), &api_key);
    match proxy::send(app, &call, stream)? {
        Sent::Whole(answer) => {
            // Only `usage` is read; the rest is scanned, not built.
            let usage = crate::usage::usage_field(&answer.body).map_err(|_| {
                ApiError::BadGateway(format!(
                    "upstream answered status {} with a body that is not JSON",
                    answer.status
                ))
            })?;
            if (200..300).contains(&answer.status) {
                record.usage = usage
                    .as_ref()
                    .and_then(crate::anthropic::usage_from_anthropic);
            }
            // The upstream's bytes, as they came (its key masked).
            let body = proxy::redact(answer.body, &api_key);
            Ok(Relay::Answered(Reply::raw_json(answer.status, body)))
        }
        Sent::Stream(streaming) => {
            let relay = Translate::AnthropicPassthrough {
                watcher: anthropic_passthrough::Watcher::new(),
                failure: None,
            };
            Ok(Relay::Streamed(proxy::stream_reply(
                app,
                streaming,
                relay,
                record,
                req.started,
                api_key,
            )))
        }
    }
}

fn is_json(body: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok()
}

/// Where an OpenAI-type profile takes `max_tokens`.
fn max_tokens_field(provider_type: ProviderType) -> &'static str {
    match provider_type {
        ProviderType::OpenAi => "max_completion_tokens",
        _ => "max_tokens",
    }
}

/// The request as a chat completion (before `model` and the cap are applied).
fn chat_request(req: &Req, route: &Route) -> Result<Map<String, Value>, ApiError> {
    let body = req.json_object()?;
    let body = proxy::drop_params(body, &route.model.drop_params);
    inbound::translate_request(&body, max_tokens_field(route.profile.provider_type))
        .map_err(|e| ApiError::BadRequest(e.0))
}

fn translated(
    app: &App,
    req: &Req,
    record: &mut RequestRecord,
    route: &Route,
    api_key: String,
    stream: bool,
) -> Result<Relay, ApiError> {
    let stops = inbound::stop_sequences(&req.json_object()?);
    let chat = chat_request(req, route)?;
    let call = proxy::openai_call(route, chat, &api_key);
    match proxy::send(app, &call, stream)? {
        Sent::Whole(answer) => {
            let parsed: Value = serde_json::from_slice(&answer.body).map_err(|_| {
                ApiError::BadGateway(format!(
                    "upstream answered status {} with a body that is not JSON",
                    answer.status
                ))
            })?;
            if !(200..300).contains(&answer.status) {
                let body = serde_json::to_vec(&inbound::translate_error(answer.status, &parsed))
                    .unwrap_or_default();
                let body = proxy::redact(body, &api_key);
                return Ok(Relay::Answered(Reply::raw_json(answer.status, body)));
            }
            let message = inbound::translate_response(&parsed, &route.model.name, &stops)
                .ok_or_else(|| {
                    ApiError::BadGateway(format!(
                        "upstream answered status {} with a body that is not a chat completion",
                        answer.status
                    ))
                })?;
            record.usage = parsed
                .get("usage")
                .and_then(crate::usage::Usage::from_openai);
            Ok(Relay::Answered(Reply::json(answer.status, &message)))
        }
        Sent::Stream(streaming) => {
            let relay =
                Translate::Inbound(inbound::StreamTranslator::new(&route.model.name, stops));
            Ok(Relay::Streamed(proxy::stream_reply(
                app,
                streaming,
                relay,
                record,
                req.started,
                api_key,
            )))
        }
    }
}

/// `POST /v1/messages/count_tokens`: forwarded to an `anthropic` profile, estimated locally
/// for the others (`anthropic_inbound::estimate_tokens`). Not audited.
pub fn count_tokens(app: &App, req: &Req) -> Result<Reply, ApiError> {
    let claimed = proxy::claimed_agent(req)?;
    let who = auth::authorize_key(app, Access::Proxy, key_of(req))?;
    let mut record = RequestRecord {
        agent_id: proxy::agent_of(&who, claimed)?,
        ..RequestRecord::default()
    };
    let mut body = Body::parse(&req.body).map_err(ApiError::BadRequest)?;
    check_request(&body)?;
    let (route, api_key) = proxy::resolve(app, &mut record)?;
    let reply = match route.profile.provider_type {
        ProviderType::Anthropic => {
            body.set("model", &Value::String(route.model.name.clone()));
            for field in &route.model.drop_params {
                if !PROTECTED_FIELDS.contains(&field.as_str()) {
                    body.remove(field);
                }
            }
            let call = anthropic_call(
                &route,
                req,
                "/v1/messages/count_tokens",
                body.to_vec(),
                &api_key,
            );
            let answer = proxy::call(app, &call)?;
            if !is_json(&answer.body) {
                return Err(ApiError::BadGateway(format!(
                    "upstream answered status {} with a body that is not JSON",
                    answer.status
                )));
            }
            Reply::raw_json(answer.status, proxy::redact(answer.body, &api_key))
        }
        ProviderType::OpenAi | ProviderType::OpenAiCompatible => {
            let chat = chat_request(req, &route)?;
            Reply::ok(&json!({"input_tokens": inbound::estimate_tokens(&chat)}))
        }
    };
    Ok(proxy::with_target_headers(reply, record.target.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_errors_take_anthropics_shape() {
        let reply = error_reply(&ApiError::bad_request("No active model set for agent_id"));
        assert_eq!(reply.status, 400);
        let crate::http::Body::Bytes { data, .. } = reply.body else {
            panic!("a JSON body")
        };
        let body: Value = serde_json::from_slice(&data).unwrap();
        assert_eq!(
            body,
            json!({"type": "error", "error": {"type": "invalid_request_error",
                   "message": "No active model set for agent_id"}})
        );
        for (e, kind) in [
            (ApiError::Unauthorized, "authentication_error"),
            (ApiError::Forbidden, "permission_error"),
            (ApiError::not_found("x"), "not_found_error"),
            (ApiError::PayloadTooLarge { limit: 1 }, "request_too_large"),
            (ApiError::BadGateway("x".into()), "api_error"),
            (ApiError::GatewayTimeout("x".into()), "api_error"),
        ] {
            let crate::http::Body::Bytes { data, .. } = error_reply(&e).body else {
                panic!("a JSON body")
            };
            let body: Value = serde_json::from_slice(&data).unwrap();
            assert_eq!(body["error"]["type"], kind, "{e}");
        }
    }

    #[test]
    fn the_key_comes_from_x_api_key_or_a_bearer_header() {
        let req = |headers: &[(&str, &str)]| Req {
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            ..Req::default()
        };
        assert_eq!(key_of(&req(&[("x-api-key", "k1")])), Some("k1"));
        assert_eq!(key_of(&req(&[("authorization", "Bearer k2")])), Some("k2"));
        assert_eq!(
            key_of(&req(&[("x-api-key", " "), ("authorization", "Bearer k2")])),
            Some("k2")
        );
        assert_eq!(key_of(&req(&[])), None);
    }

    #[test]
    fn malformed_bodies_name_the_field() {
        for (body, field) in [
            (r#"{}"#, "`messages`"),
            (r#"{"messages":{}}"#, "`messages`"),
            (r#"{"messages":[],"max_tokens":"1"}"#, "`max_tokens`"),
            (r#"{"messages":[],"stream":1}"#, "`stream`"),
        ] {
            let e = check_request(&Body::parse(body.as_bytes()).unwrap()).unwrap_err();
            assert!(e.message().contains(field), "{body}: {}", e.message());
        }
        let ok = Body::parse(br#"{"messages":[],"stream":true,"max_tokens":5}"#).unwrap();
        assert!(check_request(&ok).unwrap());
    }

    #[test]
    fn messages_paths_are_recognised() {
        assert!(is_messages_path("/v1/messages"));
        assert!(is_messages_path("/v1/messages/count_tokens"));
        assert!(!is_messages_path("/v1/messagesx"));
        assert!(!is_messages_path("/v1/chat/completions"));
    }
}
