//! The last steps: the profile, its models, the agent's switch, and the summary.

use super::*;

/// Creates or updates the profile, optionally syncs its models, and switches the agent.
pub(super) fn set_up(api: &Api, a: &Answers) -> Result<(), String> {
    let id = upsert_profile(api, a)?;

    if a.sync_models {
        let path = format!("/admin/profiles/{id}/sync-models");
        let r = api.call("POST", &path, Key::Admin, None)?;
        // The active model is set either way, so a failed sync is reported, not fatal.
        match r.status {
            200 => say!(
                "Synced the model list: {} discovered, {} new.",
                r.body["discovered"],
                r.body["created"]
            ),
            _ => say!(
                "Warning: syncing the model list failed ({}: {}); going on.",
                r.status,
                r.body["error"]
                    .as_str()
                    .or_else(|| r.body["error"]["message"].as_str())
                    .unwrap_or("no error message")
            ),
        }
    }

    // Anthropic models must exist before a switch; the switch also refuses a disabled model,
    // and the operator has just named this one as the model to use.
    let model = json!({"profile_name": a.profile_name, "model_name": a.model, "enabled": true});
    let r = api.call("POST", "/admin/models", Key::Admin, Some(&model))?;
    match r.status {
        201 => say!("Model {}: added to {}.", a.model, a.profile_name),
        200 => say!("Model {}: already in {}, enabled.", a.model, a.profile_name),
        _ => return Err(api.refusal("adding the model", &r, Key::Admin)),
    }

    let switch =
        json!({"agent_id": a.agent_id, "profile_name": a.profile_name, "model_name": a.model});
    let r = api.call("POST", "/api/switch", Key::Agent, Some(&switch))?;
    if r.status != 200 {
        return Err(api.refusal("switching the agent", &r, Key::Agent));
    }
    let previous = &r.body["previous"];
    match (
        previous["profile_name"].as_str(),
        previous["model_name"].as_str(),
    ) {
        (Some(p), Some(m)) => say!(
            "Agent {}: now {} / {} (was {p} / {m}).",
            a.agent_id,
            a.profile_name,
            a.model
        ),
        _ => say!(
            "Agent {}: now {} / {}.",
            a.agent_id,
            a.profile_name,
            a.model
        ),
    }
    Ok(())
}

/// Creates the profile; when the name is taken, rotates its key and base URL instead.
pub(super) fn upsert_profile(api: &Api, a: &Answers) -> Result<i64, String> {
    let body = json!({
        "profile_name": a.profile_name,
        "provider_type": a.provider_type,
        "base_url": a.base_url,
        "credentials": {"api_key": a.api_key},
    });
    let r = api.call("POST", "/admin/profiles", Key::Admin, Some(&body))?;
    match r.status {
        201 => {
            say!("Profile {} ({}): created.", a.profile_name, a.provider_type);
            return profile_id(&r.body);
        }
        409 => {}
        _ => return Err(api.refusal("creating the profile", &r, Key::Admin)),
    }

    let r = api.call("GET", "/admin/profiles", Key::Admin, None)?;
    if r.status != 200 {
        return Err(api.refusal("listing the profiles", &r, Key::Admin));
    }
    let existing = r.body["data"]
        .as_array()
        .and_then(|list| {
            list.iter()
                .find(|p| p["profile_name"].as_str() == Some(a.profile_name.as_str()))
        })
        .ok_or_else(|| {
            format!(
                "profile {} exists (409) but is not in GET /admin/profiles",
                a.profile_name
            )
        })?;
    // PATCH cannot change a provider type; updating the key of another kind of account
    // would leave a profile that can never work.
    let their_type = existing["provider_type"].as_str().unwrap_or("");
    if their_type != a.provider_type {
        return Err(format!(
            "profile {} already exists with provider type {their_type}, not {}; choose another --profile-name",
            a.profile_name, a.provider_type
        ));
    }
    let id = profile_id(existing)?;
    let patch = json!({"base_url": a.base_url, "credentials": {"api_key": a.api_key}});
    let r = api.call(
        "PATCH",
        &format!("/admin/profiles/{id}"),
        Key::Admin,
        Some(&patch),
    )?;
    if r.status != 200 {
        return Err(api.refusal("updating the profile", &r, Key::Admin));
    }
    say!(
        "Profile {} ({}): already there; API key and base URL updated.",
        a.profile_name,
        a.provider_type
    );
    Ok(id)
}

pub(super) fn profile_id(profile: &Value) -> Result<i64, String> {
    profile["id"]
        .as_i64()
        .ok_or_else(|| "the server's profile has no numeric id".to_string())
}

/// A Python string literal: JSON's escapes are all valid in Python.
pub(super) fn py(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

pub(super) fn print_summary(url: &str, agent_key: &str, admin_key_at: &str, a: &Answers) {
    let base = format!("{url}/v1");
    say!(
        "
Ready. Agent {agent} uses {profile} / {model}.

  Server:          {url}
  OpenAI base URL: {base}
  Agent key:       {agent_key}
  Agent id:        {agent}   (sent as the x-agent-id header)

The admin key is ROUTER_ADMIN_KEY in {admin_key_at}; keep it private. Switch models with
POST {url}/api/switch.

OpenAI SDK (Python):

from openai import OpenAI

client = OpenAI(
    base_url={py_base},
    api_key={py_key},
    default_headers={{\"x-agent-id\": {py_agent}}},
)
reply = client.chat.completions.create(
    model=\"ignored\",  # the switcher sends the agent's active model
    messages=[{{\"role\": \"user\", \"content\": \"Hello\"}}],
)
print(reply.choices[0].message.content)
",
        agent = a.agent_id,
        profile = a.profile_name,
        model = a.model,
        py_base = py(&base),
        py_key = py(agent_key),
        py_agent = py(&a.agent_id),
    );
}
