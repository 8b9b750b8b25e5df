//! `POST /api/switch` and `GET /api/active`: which profile and model an agent uses.

use serde_json::json;

use crate::app::App;
use crate::audit::{self, Target};
use crate::error::ApiError;
use crate::http::{Reply, Req};
use crate::input::{check_agent_id, check_model_name, Fields};
use crate::routes::models::profile_not_found;
use crate::state::no_active_model;
use crate::store::{self, Lock, ModelChanges};

pub fn switch(app: &App, req: &Req) -> Result<Reply, ApiError> {
    let body = req.json_object()?;
    let f = Fields(&body);
    let agent_id = f.str("agent_id")?;
    check_agent_id(agent_id)
        .map_err(|e| ApiError::bad_request(format!("field {}", e.message())))?;
    let profile_name = f.str("profile_name")?;
    let model_name = f.str("model_name")?;
    check_model_name(model_name)?;

    let mut conn = app.conn()?;
    let mut tx = conn.transaction()?;
    // Serializes switches of this agent, so `previous` and the audit trail agree.
    store::lock_agent(&mut tx, agent_id)?;
    // Share locks until commit: a profile delete or a model disable that commits first is
    // seen here (404, 409), and one that comes later waits and then sees this switch.
    let profile = store::find_profile_by_name(&mut tx, profile_name, Lock::Share)?
        .ok_or_else(|| profile_not_found(profile_name))?;
    let model = match store::find_model(&mut tx, profile.id, model_name, Lock::Share)? {
        Some(m) => m,
        None if profile.provider_type == "anthropic" => {
            return Err(ApiError::not_found(format!(
                "model '{model_name}' not found in profile '{profile_name}'; anthropic models \
                 must be added first (POST /admin/models or sync-models)"
            )))
        }
        None => store::upsert_model(&mut tx, profile.id, model_name, &ModelChanges::default())?.0,
    };
    if !model.enabled {
        return Err(ApiError::Conflict(format!(
            "model '{model_name}' of profile '{profile_name}' is disabled"
        )));
    }
    let previous = store::active_state(&mut tx, agent_id)?;
    let switched_at = store::set_agent_state(&mut tx, agent_id, profile.id, model.id)?;
    let from = previous.as_ref().map(|p| Target {
        profile_name: p.profile_name.clone(),
        provider_type: p.provider_type.clone(),
        model_name: p.model_name.clone(),
    });
    let to = Target {
        profile_name: profile.profile_name.clone(),
        provider_type: profile.provider_type.clone(),
        model_name: model.model_name.clone(),
    };
    audit::record_switch(&mut tx, agent_id, from.as_ref(), &to)?;
    tx.commit()?;
    app.apply_changes(&mut conn);

    let previous = from.map(|p| {
        json!({
            "profile_name": p.profile_name,
            "provider_type": p.provider_type,
            "model_name": p.model_name,
        })
    });
    Ok(Reply::ok(&json!({
        "agent_id": agent_id,
        "profile_name": to.profile_name,
        "provider_type": to.provider_type,
        "model_name": to.model_name,
        "previous": previous,
        "switched_at": switched_at,
    })))
}

pub fn active(app: &App, req: &Req) -> Result<Reply, ApiError> {
    let agent_id = req
        .query("agent_id")
        .ok_or_else(|| ApiError::bad_request("query parameter `agent_id` is required"))?;
    check_agent_id(agent_id)?;
    let state = store::active_state(&mut *app.conn()?, agent_id)?
        .ok_or_else(|| ApiError::not_found(no_active_model(agent_id)))?;
    Ok(Reply::ok(&state.to_json()))
}
