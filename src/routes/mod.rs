//! The route table: which handler serves a method and path, and who may call it.

pub mod agent_keys;
pub mod agents;
pub mod console;
pub mod health;
pub mod messages;
pub mod metrics;
pub mod models;
pub mod profiles;
pub mod proxy;
pub mod requests;
pub mod responses;
pub mod sync;

use crate::app::App;
use crate::auth::{Access, Principal};
use crate::error::ApiError;
use crate::http::{decode_segment, Reply, Req};

/// Every endpoint of the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Healthz,
    Metrics,
    OpenApi,
    ListProfiles,
    CreateProfile,
    UpdateProfile(String),
    DeleteProfile(String),
    SyncModels(String),
    UpsertModel,
    ListModels,
    Switch,
    Rollback,
    Active,
    ListAgents,
    History,
    CreateAgentKey,
    ListAgentKeys,
    DeleteAgentKey(String),
    ListRequests,
    Console(console::Asset),
    V1Models,
    ChatCompletions,
    Messages,
    CountTokens,
    Responses,
}

impl Endpoint {
    /// The proxy's routes, served from memory: their work is what takes turns on the cores
    /// (`gate`); every other route may wait on the database and runs aside.
    pub fn is_data_plane(&self) -> bool {
        matches!(
            self,
            Endpoint::V1Models
                | Endpoint::ChatCompletions
                | Endpoint::Messages
                | Endpoint::CountTokens
                | Endpoint::Responses
        )
    }

    pub fn access(&self) -> Access {
        match self {
            // The proxy authorizes inside its handler, so that refusals are audited too.
            Endpoint::Healthz
            | Endpoint::OpenApi
            | Endpoint::V1Models
            | Endpoint::ChatCompletions
            | Endpoint::Messages
            | Endpoint::CountTokens
            | Endpoint::Responses
            | Endpoint::Console(_) => Access::Public,
            // Unless METRICS_PUBLIC=true (the server decides).
            Endpoint::Metrics
            | Endpoint::ListProfiles
            | Endpoint::CreateProfile
            | Endpoint::UpdateProfile(_)
            | Endpoint::DeleteProfile(_)
            | Endpoint::SyncModels(_)
            | Endpoint::UpsertModel
            | Endpoint::CreateAgentKey
            | Endpoint::ListAgentKeys
            | Endpoint::DeleteAgentKey(_)
            | Endpoint::ListRequests => Access::Admin,
            Endpoint::ListModels
            | Endpoint::Switch
            | Endpoint::Rollback
            | Endpoint::Active
            | Endpoint::ListAgents
            | Endpoint::History => Access::Agent,
        }
    }
}

/// Resolves a method and a raw (still percent-encoded) path: 404 for an unknown path, 405 for
/// a known one with the wrong method. The path is split into segments first and each is
/// decoded after, so `/admin/profiles/1%2Fsync-models` is one id segment, not the sync route.
pub fn resolve(method: &str, path: &str) -> Result<Endpoint, ApiError> {
    let trimmed = if path.len() > 1 {
        path.strip_suffix('/').unwrap_or(path)
    } else {
        path
    };
    let decoded: Vec<std::borrow::Cow<'_, str>> =
        trimmed.split('/').skip(1).map(decode_segment).collect();
    let segments: Vec<&str> = decoded.iter().map(|s| s.as_ref()).collect();
    let not_allowed = |allow| Err(ApiError::MethodNotAllowed { allow });
    match (segments.as_slice(), method) {
        (["healthz"], "GET") => Ok(Endpoint::Healthz),
        (["healthz"], _) => not_allowed("GET"),
        (["metrics"], "GET") => Ok(Endpoint::Metrics),
        (["metrics"], _) => not_allowed("GET"),
        (["openapi.json"], "GET") => Ok(Endpoint::OpenApi),
        (["openapi.json"], _) => not_allowed("GET"),

        (["admin", "profiles"], "GET") => Ok(Endpoint::ListProfiles),
        (["admin", "profiles"], "POST") => Ok(Endpoint::CreateProfile),
        (["admin", "profiles"], _) => not_allowed("GET, POST"),
        (["admin", "profiles", id], "PATCH") => Ok(Endpoint::UpdateProfile(id.to_string())),
        (["admin", "profiles", id], "DELETE") => Ok(Endpoint::DeleteProfile(id.to_string())),
        (["admin", "profiles", _], _) => not_allowed("PATCH, DELETE"),
        (["admin", "profiles", id, "sync-models"], "POST") => {
            Ok(Endpoint::SyncModels(id.to_string()))
        }
        (["admin", "profiles", _, "sync-models"], _) => not_allowed("POST"),
        (["admin", "models"], "POST") => Ok(Endpoint::UpsertModel),
        (["admin", "models"], _) => not_allowed("POST"),
        (["admin", "agent-keys"], "GET") => Ok(Endpoint::ListAgentKeys),
        (["admin", "agent-keys"], "POST") => Ok(Endpoint::CreateAgentKey),
        (["admin", "agent-keys"], _) => not_allowed("GET, POST"),
        (["admin", "agent-keys", id], "DELETE") => Ok(Endpoint::DeleteAgentKey(id.to_string())),
        (["admin", "agent-keys", _], _) => not_allowed("DELETE"),
        (["admin", "requests"], "GET") => Ok(Endpoint::ListRequests),
        (["admin", "requests"], _) => not_allowed("GET"),

        (["api", "models"], "GET") => Ok(Endpoint::ListModels),
        (["api", "models"], _) => not_allowed("GET"),
        (["api", "switch"], "POST") => Ok(Endpoint::Switch),
        (["api", "switch"], _) => not_allowed("POST"),
        (["api", "active"], "GET") => Ok(Endpoint::Active),
        (["api", "active"], _) => not_allowed("GET"),
        (["api", "rollback"], "POST") => Ok(Endpoint::Rollback),
        (["api", "rollback"], _) => not_allowed("POST"),
        (["api", "agents"], "GET") => Ok(Endpoint::ListAgents),
        (["api", "agents"], _) => not_allowed("GET"),
        (["api", "history"], "GET") => Ok(Endpoint::History),
        (["api", "history"], _) => not_allowed("GET"),

        (["console"], "GET") => Ok(Endpoint::Console(console::Asset::Page)),
        (["console", "console.js"], "GET") => Ok(Endpoint::Console(console::Asset::Script)),
        (["console", "console.css"], "GET") => Ok(Endpoint::Console(console::Asset::Style)),
        (["console"] | ["console", "console.js"] | ["console", "console.css"], _) => {
            not_allowed("GET")
        }

        (["v1", "models"], "GET") => Ok(Endpoint::V1Models),
        (["v1", "models"], _) => not_allowed("GET"),
        (["v1", "chat", "completions"], "POST") => Ok(Endpoint::ChatCompletions),
        (["v1", "chat", "completions"], _) => not_allowed("POST"),
        (["v1", "messages"], "POST") => Ok(Endpoint::Messages),
        (["v1", "messages"], _) => not_allowed("POST"),
        (["v1", "messages", "count_tokens"], "POST") => Ok(Endpoint::CountTokens),
        (["v1", "messages", "count_tokens"], _) => not_allowed("POST"),
        (["v1", "responses"], "POST") => Ok(Endpoint::Responses),
        (["v1", "responses"], _) => not_allowed("POST"),

        _ => Err(ApiError::not_found(format!("no route for {path}"))),
    }
}

pub fn dispatch(
    app: &App,
    endpoint: &Endpoint,
    who: &Principal,
    req: &Req,
) -> Result<Reply, ApiError> {
    match endpoint {
        Endpoint::Healthz => health::healthz(app),
        Endpoint::Metrics => Ok(metrics::metrics(app)),
        Endpoint::OpenApi => Ok(metrics::openapi()),
        Endpoint::ListProfiles => profiles::list(app),
        Endpoint::CreateProfile => profiles::create(app, req),
        Endpoint::UpdateProfile(id) => profiles::update(app, id, req),
        Endpoint::DeleteProfile(id) => profiles::delete(app, id),
        Endpoint::UpsertModel => models::upsert(app, req),
        Endpoint::ListModels => models::list(app, req),
        Endpoint::Switch => agents::switch(app, who, req),
        Endpoint::Rollback => agents::rollback(app, who, req),
        Endpoint::Active => agents::active(app, who, req),
        Endpoint::ListAgents => agents::list(app, who),
        Endpoint::History => agents::history(app, who, req),
        Endpoint::CreateAgentKey => agent_keys::create(app, req),
        Endpoint::ListAgentKeys => agent_keys::list(app, req),
        Endpoint::DeleteAgentKey(id) => agent_keys::delete(app, id),
        Endpoint::ListRequests => requests::list(app, req),
        Endpoint::Console(asset) => Ok(console::serve(*asset)),
        Endpoint::SyncModels(id) => sync::sync_models(app, id),
        Endpoint::V1Models => proxy::list_models(app),
        Endpoint::ChatCompletions => proxy::chat_completions(app, req),
        Endpoint::Messages => messages::messages(app, req),
        Endpoint::CountTokens => messages::count_tokens(app, req),
        Endpoint::Responses => responses::responses(app, req),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_to_endpoints() {
        assert_eq!(resolve("GET", "/healthz").unwrap(), Endpoint::Healthz);
        assert_eq!(
            resolve("PATCH", "/admin/profiles/7").unwrap(),
            Endpoint::UpdateProfile("7".into())
        );
        assert_eq!(
            resolve("GET", "/admin/profiles/").unwrap(),
            Endpoint::ListProfiles
        );
        assert_eq!(resolve("GET", "/heal%74hz").unwrap(), Endpoint::Healthz);
    }

    #[test]
    fn an_encoded_slash_stays_inside_its_segment() {
        assert_eq!(
            resolve("POST", "/admin/profiles/1%2Fsync-models")
                .unwrap_err()
                .status(),
            405
        );
        assert_eq!(
            resolve("PATCH", "/admin/profiles/1%2Fsync-models").unwrap(),
            Endpoint::UpdateProfile("1/sync-models".into())
        );
        assert_eq!(
            resolve("DELETE", "/admin/profiles/a+b").unwrap(),
            Endpoint::DeleteProfile("a+b".into())
        );
    }

    #[test]
    fn unknown_paths_are_404_and_wrong_methods_405() {
        assert_eq!(resolve("GET", "/nope").unwrap_err().status(), 404);
        assert_eq!(resolve("GET", "/").unwrap_err().status(), 404);
        assert_eq!(resolve("DELETE", "/api/switch").unwrap_err().status(), 405);
        assert_eq!(resolve("PUT", "/admin/profiles").unwrap_err().status(), 405);
    }
}
