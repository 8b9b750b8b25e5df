//! `/admin/profiles`: provider accounts and their encrypted credentials.

use serde_json::{json, Value};

use crate::app::App;
use crate::error::ApiError;
use crate::http::{Reply, Req};
use crate::input::{valid_profile_name, Fields};
use crate::provider::{default_base_url, normalize_base_url, PROVIDER_TYPES};
use crate::routes::models::agents_using;
use crate::store::{self, Lock, Uses};

/// The `credentials` object: `api_key` is required; every other field is kept as it is,
/// encrypted with it.
fn credentials(f: &Fields) -> Result<Value, ApiError> {
    let creds = f
        .opt_object("credentials")?
        .ok_or_else(|| ApiError::bad_request("field `credentials` is required"))?;
    let api_key = match creds.0.get("api_key") {
        None | Some(Value::Null) => "",
        Some(Value::String(k)) => k.as_str(),
        Some(_) => {
            return Err(ApiError::bad_request(
                "field `credentials.api_key` must be a string",
            ))
        }
    };
    if api_key.trim().is_empty() {
        return Err(ApiError::bad_request(
            "field `credentials.api_key` is required and must not be empty",
        ));
    }
    // It goes into an HTTP header as it is: a pasted trailing newline would make every
    // upstream call fail later, with an error that points away from the key.
    if !crate::app::usable_api_key(api_key) {
        return Err(ApiError::bad_request(
            "field `credentials.api_key` must not contain whitespace or control characters",
        ));
    }
    Ok(Value::Object(creds.0.clone()))
}

/// Path ids that are not numbers name no profile: 404, like any unknown id.
pub fn parse_profile_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>().map_err(|_| {
        ApiError::not_found(format!(
            "profile '{raw}' not found: profile ids are numbers (GET /admin/profiles lists \
             them with their ids)"
        ))
    })
}

pub fn create(app: &App, req: &Req) -> Result<Reply, ApiError> {
    let body = req.json_object()?;
    let f = Fields(&body);
    f.only(&["profile_name", "provider_type", "base_url", "credentials"])?;
    let name = f.str("profile_name")?;
    if !valid_profile_name(name) {
        return Err(ApiError::bad_request(
            "field `profile_name` must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' or '-'",
        ));
    }
    let provider_type = f.str("provider_type")?;
    if !PROVIDER_TYPES.contains(&provider_type) {
        return Err(ApiError::bad_request(
            "field `provider_type` must be one of openai, anthropic, openai_compatible",
        ));
    }
    let base_url = match (f.opt_str("base_url")?, default_base_url(provider_type)) {
        (Some(url), _) => normalize_base_url(url)?,
        (None, Some(default)) => default.to_string(),
        (None, None) => {
            return Err(ApiError::bad_request(
                "field `base_url` is required for provider_type openai_compatible",
            ))
        }
    };
    let credentials = credentials(&f)?;

    let mut conn = app.conn()?;
    let mut tx = conn.transaction()?;
    let id = store::next_profile_id(&mut tx)?;
    let sealed = app.seal_credentials(id, &credentials);
    let profile = store::insert_profile(&mut tx, id, name, provider_type, &base_url, &sealed)?;
    tx.commit()?;
    app.apply_changes(&mut conn);
    Ok(Reply::created(&profile.to_json()))
}

pub fn list(app: &App) -> Result<Reply, ApiError> {
    let profiles = store::list_profiles(&mut *app.conn()?)?;
    let data: Vec<Value> = profiles.iter().map(store::Profile::to_json).collect();
    Ok(Reply::ok(&json!({ "data": data })))
}

pub fn update(app: &App, raw_id: &str, req: &Req) -> Result<Reply, ApiError> {
    let id = parse_profile_id(raw_id)?;
    let body = req.json_object()?;
    let f = Fields(&body);
    f.only(&["base_url", "credentials"])?;
    let new_base_url = f.opt_str("base_url")?.map(normalize_base_url).transpose()?;
    let new_credentials = if f.has("credentials") {
        Some(credentials(&f)?)
    } else {
        None
    };

    let mut conn = app.conn()?;
    let mut tx = conn.transaction()?;
    let current = store::find_profile(&mut tx, id, Lock::Update)?
        .ok_or_else(|| ApiError::not_found(format!("profile {id} not found")))?;
    // `"base_url": null` returns to the provider's default, where it has one.
    let base_url = match (new_base_url, f.has("base_url")) {
        (Some(url), _) => Some(url),
        (None, true) => Some(
            default_base_url(&current.provider_type)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "field `base_url` cannot be removed from an openai_compatible profile",
                    )
                })?
                .to_string(),
        ),
        (None, false) => None,
    };
    let sealed = new_credentials.map(|c| app.seal_credentials(id, &c));
    let profile = store::update_profile(&mut tx, id, base_url.as_deref(), sealed.as_deref())?;
    tx.commit()?;
    app.apply_changes(&mut conn);
    Ok(Reply::ok(&profile.to_json()))
}

pub fn delete(app: &App, raw_id: &str) -> Result<Reply, ApiError> {
    let id = parse_profile_id(raw_id)?;
    let mut conn = app.conn()?;
    let mut tx = conn.transaction()?;
    let Some(profile) = store::find_profile(&mut tx, id, Lock::Update)? else {
        return Err(ApiError::not_found(format!("profile {id} not found")));
    };
    if let Some(agents) = agents_using(&mut tx, Uses::Profile, id)? {
        return Err(ApiError::Conflict(format!(
            "profile '{}' is the active profile of agent(s) {agents}; switch them elsewhere \
             first (POST /api/switch)",
            profile.profile_name
        )));
    }
    store::delete_profile(&mut tx, id)?;
    tx.commit()?;
    app.apply_changes(&mut conn);
    Ok(Reply::ok(&json!({"deleted": true, "id": id})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_checked_and_lose_their_trailing_slash() {
        assert_eq!(
            normalize_base_url("http://localhost:8000/v1/").unwrap(),
            "http://localhost:8000/v1"
        );
        for bad in [
            "ftp://x",
            "localhost:8000",
            "http://",
            "https://a b",
            "http://x/?q=1",
        ] {
            assert_eq!(normalize_base_url(bad).unwrap_err().status(), 400, "{bad}");
        }
        for with_credentials in ["https://user:pass@api.example.com/v1", "http://tok@x"] {
            let message = normalize_base_url(with_credentials).unwrap_err().message();
            assert!(message.contains("`base_url`"), "{message}");
            assert!(
                !message.contains("example") && !message.contains("tok@"),
                "{message}"
            );
        }
        assert!(normalize_base_url("https://x.example/v1/@me").is_ok());
    }
}
