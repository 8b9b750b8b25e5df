//! `GET /healthz`: can this instance serve proxied requests, and can it reach its database.
//! Answered from memory: an orchestrator that restarts on a failing check must not restart
//! a proxy that still serves while the database is away.

use serde_json::json;

use crate::app::App;
use crate::error::ApiError;
use crate::http::Reply;

pub fn healthz(app: &App) -> Result<Reply, ApiError> {
    let db = if app.health.is_up() {
        "ok"
    } else {
        "unavailable"
    };
    let backlog = app.journal.backlog();
    let body = |status: &str| json!({"status": status, "db": db, "audit_backlog": backlog});
    Ok(if !app.state.is_loaded() || app.journal.is_full() {
        Reply::json(503, &body("unavailable"))
    } else if db == "ok" {
        Reply::ok(&body("ok"))
    } else {
        Reply::ok(&body("degraded"))
    })
}
