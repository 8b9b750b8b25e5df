//! `/v1/responses`: the OpenAI Responses API, for Codex CLI, relayed to the agent's active
//! model (RESPONSES.md).
//!
//! Data plane, like the chat and messages routes, whose steps it shares (`proxy::serve`): to
//! an `openai` profile the body passes through with only its top level edited; to the others
//! it becomes a chat completion (`responses`), which for `anthropic` goes on through
//! `anthropic` as any chat completion does, and the answer comes back the same way.

use serde_json::Value;

use crate::anthropic;
use crate::anthropic_passthrough::{self, Body};
use crate::anthropic_stream;
use crate::app::App;
use crate::audit::{self, Endpoint, RequestRecord};
use crate::auth;
use crate::error::ApiError;
use crate::http::{Reply, Req};
use crate::provider::ProviderType;
use crate::responses::{self, Echo};
use crate::responses_stream;
use crate::routes::proxy::{self, Relay, Sent, Translate};
use crate::state::Route;
use crate::usage::Usage;

/// Fields a model's `drop_params` can never remove here.
const PROTECTED_FIELDS: [&str; 4] = ["model", "input", "stream", "instructions"];

/// The header naming the built-in tools left out for a provider that cannot run them.
pub const DROPPED_TOOLS_HEADER: &str = "x-switcher-dropped-tools";

/// `POST /v1/responses`: the key in `Authorization: Bearer`, errors in OpenAI's shape.
pub fn responses(app: &App, req: &Req) -> Result<Reply, ApiError> {
    let key = auth::bearer(req.header("authorization"));
    proxy::serve(app, req, Endpoint::Responses, key, relay, Reply::error)
}

fn relay(app: &App, req: &Req, record: &mut RequestRecord) -> Result<Relay, ApiError> {
    let body = Body::parse(&req.body).map_err(ApiError::BadRequest)?;
    record.prompt_sha256 = Some(audit::messages_prompt_sha256(
        body.value("instructions").filter(|v| !v.is_null()).as_ref(),
        body.value("input").as_ref(),
    ));
    let stream = check_request(&body)?;
    record.stream = stream;
    let (route, api_key) = proxy::resolve(app, record)?;
    match route.profile.provider_type {
        ProviderType::OpenAi => pass_through(app, req, record, &route, body, api_key, stream),
        ProviderType::OpenAiCompatible | ProviderType::Anthropic => {
            translated(app, req, record, &route, api_key, stream)
        }
    }
}

/// What the proxy itself depends on; returns whether a stream is asked for.
fn check_request(body: &Body) -> Result<bool, ApiError> {
    match body.value("input") {
        Some(Value::Array(_) | Value::String(_)) => {}
        None | Some(Value::Null) => return Err(ApiError::bad_request("field `input` is required")),
        Some(_) => {
            return Err(ApiError::bad_request(
                "field `input` must be a string or a list of items",
            ))
        }
    }
    if body
        .value("previous_response_id")
        .is_some_and(|v| !v.is_null())
    {
        let e = responses::check_stateless(&serde_json::Map::from_iter([(
            "previous_response_id".to_string(),
            Value::Bool(true),
        )]))
        .unwrap_err();
        return Err(ApiError::BadRequest(e.0));
    }
    match body.value("max_output_tokens") {
        None | Some(Value::Null) => {}
        Some(v) if v.as_u64().is_some() => {}
        Some(_) => {
            return Err(ApiError::bad_request(
                "field `max_output_tokens` must be a whole number",
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

fn pass_through(
    app: &App,
    req: &Req,
    record: &mut RequestRecord,
    route: &Route,
    mut body: Body,
    api_key: String,
    stream: bool,
) -> Result<Relay, ApiError> {
    body.set("model", &Value::String(route.model.name.clone()));
    if let Some(cap) = route.model.max_tokens {
        anthropic_passthrough::cap_field(&mut body, "max_output_tokens", cap);
    }
    for field in &route.model.drop_params {
        if !PROTECTED_FIELDS.contains(&field.as_str()) {
            body.remove(field);
        }
    }
    let call = proxy::Call {
        url: format!("{}/responses", route.profile.base_url),
        headers: vec![
            ("Authorization", format!("Bearer {api_key}")),
            ("Content-Type", "application/json".into()),
        ],
        body: body.to_vec(),
    };
    match proxy::send(app, &call, stream)? {
        Sent::Whole(answer) => {
            let parsed: Value = serde_json::from_slice(&answer.body).map_err(|_| {
                ApiError::BadGateway(format!(
                    "upstream answered status {} with a body that is not JSON",
                    answer.status
                ))
            })?;
            if (200..300).contains(&answer.status) {
                record.usage = parsed.get("usage").and_then(|u| {
                    Some(Usage {
                        prompt_tokens: u.get("input_tokens")?.as_i64()?,
                        completion_tokens: u.get("output_tokens")?.as_i64()?,
                    })
                });
            }
            let body = proxy::redact(answer.body, &api_key);
            Ok(Relay::Answered(Reply::raw_json(answer.status, body)))
        }
        Sent::Stream(streaming) => {
            let relay = Translate::ResponsesPassthrough(responses_stream::Watcher::new());
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

fn translated(
    app: &App,
    req: &Req,
    record: &mut RequestRecord,
    route: &Route,
    api_key: String,
    stream: bool,
) -> Result<Relay, ApiError> {
    let body = proxy_body(req, route)?;
    let is_anthropic = route.profile.provider_type == ProviderType::Anthropic;
    let t = responses::translate_request(&body, is_anthropic, &app.cipher)
        .map_err(|e| ApiError::BadRequest(e.0))?;
    let echo = Echo::of(&body, t.namespaces);
    let dropped = t.dropped_tools.join(",");
    if !dropped.is_empty() {
        record.error = Some(format!(
            "built-in tools dropped (the provider cannot run them): {dropped}"
        ));
    }
    let call = if is_anthropic {
        proxy::anthropic_call(route, t.chat, &api_key)?
    } else {
        proxy::openai_call(route, t.chat, &api_key)
    };
    let reply = match proxy::send(app, &call, stream)? {
        Sent::Whole(answer) => {
            Relay::Answered(whole_answer(app, record, route, &echo, answer, &api_key)?)
        }
        Sent::Stream(streaming) => {
            let now = proxy::unix_now();
            let responses = Box::new(responses_stream::Translator::new(
                &route.model.name,
                echo,
                now,
                app.cipher.clone(),
            ));
            let anthropic = is_anthropic.then(|| {
                Box::new(anthropic_stream::Translator::new(
                    now,
                    &route.model.name,
                    true,
                ))
            });
            let relay = Translate::Responses {
                anthropic,
                responses,
            };
            Relay::Streamed(proxy::stream_reply(
                app,
                streaming,
                relay,
                record,
                req.started,
                api_key,
            ))
        }
    };
    if dropped.is_empty() {
        return Ok(reply);
    }
    Ok(match reply {
        Relay::Answered(r) => Relay::Answered(r.with_header(DROPPED_TOOLS_HEADER, &dropped)),
        Relay::Streamed(r) => Relay::Streamed(r.with_header(DROPPED_TOOLS_HEADER, &dropped)),
    })
}

/// The request as an object, `drop_params` removed.
fn proxy_body(req: &Req, route: &Route) -> Result<serde_json::Map<String, Value>, ApiError> {
    let mut body = req.json_object()?;
    for field in &route.model.drop_params {
        if !PROTECTED_FIELDS.contains(&field.as_str()) {
            body.remove(field);
        }
    }
    Ok(body)
}

/// A whole chat answer (from Anthropic, first made one) as a `response`; errors in OpenAI's
/// shape with the upstream's status.
fn whole_answer(
    app: &App,
    record: &mut RequestRecord,
    route: &Route,
    echo: &Echo,
    answer: crate::upstream::Answer,
    api_key: &str,
) -> Result<Reply, ApiError> {
    let parsed: Value = serde_json::from_slice(&answer.body).map_err(|_| {
        ApiError::BadGateway(format!(
            "upstream answered status {} with a body that is not JSON",
            answer.status
        ))
    })?;
    let is_anthropic = route.profile.provider_type == ProviderType::Anthropic;
    if !(200..300).contains(&answer.status) {
        let body = if is_anthropic {
            serde_json::to_vec(&anthropic::translate_error(&parsed)).unwrap_or_default()
        } else {
            answer.body
        };
        return Ok(Reply::raw_json(answer.status, proxy::redact(body, api_key)));
    }
    let chat = if is_anthropic {
        if !parsed.get("content").is_some_and(Value::is_array) {
            return Err(ApiError::BadGateway(format!(
                "upstream answered status {} with a body that is not an Anthropic message",
                answer.status
            )));
        }
        anthropic::translate_response(&parsed, proxy::unix_now())
    } else {
        parsed
    };
    record.usage = chat.get("usage").and_then(Usage::from_openai);
    let response = responses::translate_response(
        &chat,
        &route.model.name,
        echo,
        proxy::unix_now(),
        &app.cipher,
    )
    .ok_or_else(|| {
        ApiError::BadGateway(format!(
            "upstream answered status {} with a body that is not a chat completion",
            answer.status
        ))
    })?;
    Ok(Reply::json(answer.status, &response))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_bodies_name_the_field() {
        for (body, field) in [
            (r#"{}"#, "`input`"),
            (r#"{"input":5}"#, "`input`"),
            (
                r#"{"input":"x","previous_response_id":"resp_1"}"#,
                "`previous_response_id`",
            ),
            (
                r#"{"input":"x","max_output_tokens":"1"}"#,
                "`max_output_tokens`",
            ),
            (r#"{"input":"x","stream":1}"#, "`stream`"),
        ] {
            let e = check_request(&Body::parse(body.as_bytes()).unwrap()).unwrap_err();
            assert!(e.message().contains(field), "{body}: {}", e.message());
        }
        let ok = Body::parse(br#"{"input":[],"stream":true,"previous_response_id":null}"#).unwrap();
        assert!(check_request(&ok).unwrap());
    }
}
