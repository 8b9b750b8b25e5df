//! `GET /admin/requests`: the audited proxied requests, newest first, a page at a time.

use serde_json::json;

use crate::app::App;
use crate::audit;
use crate::error::ApiError;
use crate::http::{Reply, Req};
use crate::input::{check_agent_id, query_id, query_limit};

pub fn list(app: &App, req: &Req) -> Result<Reply, ApiError> {
    let agent_id = req.query("agent_id");
    if let Some(agent_id) = agent_id {
        check_agent_id(agent_id)?;
    }
    let limit = query_limit(req.query("limit"), 50, 1000)?;
    let before_id = query_id("before_id", req.query("before_id"))?;
    let data = audit::requests_page(&mut *app.conn()?, agent_id, before_id, limit)?;
    Ok(Reply::ok(&json!({ "data": data })))
}
