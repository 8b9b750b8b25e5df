//! `GET /healthz`: is the service up, and can it reach its database.

use serde_json::json;

use crate::app::App;
use crate::error::ApiError;
use crate::http::Reply;

pub fn healthz(app: &App) -> Result<Reply, ApiError> {
    let db_ok = app
        .conn()
        .and_then(|mut c| Ok(c.simple_query("SELECT 1")?))
        .is_ok();
    Ok(if db_ok {
        Reply::ok(&json!({"status": "ok", "db": "ok"}))
    } else {
        Reply::json(503, &json!({"status": "degraded", "db": "unavailable"}))
    })
}
