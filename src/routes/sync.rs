//! `POST /admin/profiles/{id}/sync-models`: discover a provider's models and upsert them.

use std::collections::HashSet;

use serde_json::{json, Value};

use crate::anthropic::ANTHROPIC_VERSION;
use crate::app::App;
use crate::error::ApiError;
use crate::http::Reply;
use crate::input::check_model_name;
use crate::routes::profiles::parse_profile_id;
use crate::store::{self, Lock};

/// Anthropic lists models in pages; a provider with more than this many is not plausible.
const MAX_PAGES: usize = 100;

pub fn sync_models(app: &App, raw_id: &str) -> Result<Reply, ApiError> {
    let id = parse_profile_id(raw_id)?;
    let (profile, sealed) = store::find_profile_with_credentials(&mut *app.conn()?, id)?
        .ok_or_else(|| ApiError::not_found(format!("profile {id} not found")))?;
    let api_key = app.open_api_key(profile.id, &profile.profile_name, &sealed)?;

    let discovered = match discover(app, &profile.provider_type, &profile.base_url, &api_key) {
        Ok(names) => names,
        Err(message) => {
            crate::warn!(
                "sync-models for profile '{}' failed: {message}",
                profile.profile_name
            );
            return Ok(Reply::json(502, &json!({"ok": false, "error": message})));
        }
    };
    let mut conn = app.conn()?;
    let mut tx = conn.transaction()?;
    // No transaction spans the upstream calls, so the profile may have gone meanwhile; the
    // share lock keeps it until the models are in.
    if store::find_profile(&mut tx, profile.id, Lock::Share)?.is_none() {
        return Err(ApiError::not_found(format!(
            "profile {id} was deleted while its models were being listed"
        )));
    }
    let created = store::upsert_discovered_models(&mut tx, profile.id, &discovered)?;
    tx.commit()?;
    app.apply_changes(&mut conn);
    Ok(Reply::ok(&json!({
        "ok": true,
        "discovered": discovered.len(),
        "created": created,
    })))
}

/// The model ids the provider lists, deduplicated, in the order first seen.
fn discover(
    app: &App,
    provider_type: &str,
    base_url: &str,
    api_key: &str,
) -> Result<Vec<String>, String> {
    let mut names: Vec<String> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut add = |page: &Value| -> Result<(), String> {
        let data = page
            .get("data")
            .and_then(Value::as_array)
            .ok_or("the upstream's model list has no `data` array")?;
        for item in data {
            let name = item
                .get("id")
                .and_then(Value::as_str)
                .ok_or("an entry of the upstream's model list has no string `id`")?;
            if check_model_name(name).is_ok() && seen.insert(name.to_string()) {
                names.push(name.to_string());
            }
        }
        Ok(())
    };

    if provider_type != "anthropic" {
        let bearer = format!("Bearer {api_key}");
        let page = fetch(
            app,
            &format!("{base_url}/models"),
            &[("Authorization", &bearer)],
        )?;
        add(&page)?;
        return Ok(names);
    }

    let mut after: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let url = match &after {
            None => format!("{base_url}/v1/models?limit=1000"),
            Some(id) => format!(
                "{base_url}/v1/models?limit=1000&after_id={}",
                crate::http::percent_encode(id)
            ),
        };
        let page = fetch(
            app,
            &url,
            &[
                ("x-api-key", api_key),
                ("anthropic-version", ANTHROPIC_VERSION),
            ],
        )?;
        add(&page)?;
        let has_more = page.get("has_more").and_then(Value::as_bool) == Some(true);
        let last_id = page
            .get("last_id")
            .and_then(Value::as_str)
            .map(str::to_string);
        match (has_more, last_id) {
            (true, Some(last)) if after.as_deref() != Some(last.as_str()) => after = Some(last),
            (true, _) => return Err("the upstream's model list pages do not advance".into()),
            (false, _) => return Ok(names),
        }
    }
    Err(format!(
        "the upstream's model list has more than {MAX_PAGES} pages"
    ))
}

/// GETs a JSON document; every failure becomes a message without a URL or a key.
fn fetch(app: &App, url: &str, headers: &[(&str, &str)]) -> Result<Value, String> {
    let answer = app
        .upstream
        .call("GET", url, headers, None)
        .map_err(|e| e.message())?;
    if !(200..300).contains(&answer.status) {
        return Err(format!("the upstream answered status {}", answer.status));
    }
    serde_json::from_slice(&answer.body)
        .map_err(|_| "the upstream's model list is not valid JSON".to_string())
}
