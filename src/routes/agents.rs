//! `/api/switch`, `/api/rollback`, `/api/active`, `/api/agents`, `/api/history`: which
//! profile and model each agent uses, how it got there, and going back.

use postgres::Transaction;
use serde_json::{json, Value};

use crate::app::App;
use crate::audit::{self, Switch, Target};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::http::{Reply, Req};
use crate::input::{check_agent_id, check_model_name, query_limit, Fields};
use crate::routes::models::profile_not_found;
use crate::state::no_active_model;
use crate::store::{self, Lock, Model, ModelChanges, Profile};

/// The `agent_id` field of a body, checked.
fn agent_field<'a>(f: &Fields<'a>) -> Result<&'a str, ApiError> {
    let agent_id = f.str("agent_id")?;
    check_agent_id(agent_id)
        .map_err(|e| ApiError::bad_request(format!("field {}", e.message())))?;
    Ok(agent_id)
}

/// The `agent_id` query parameter, checked.
fn agent_query(req: &Req) -> Result<&str, ApiError> {
    let agent_id = req
        .query("agent_id")
        .ok_or_else(|| ApiError::bad_request("query parameter `agent_id` is required"))?;
    check_agent_id(agent_id)?;
    Ok(agent_id)
}

pub fn switch(app: &App, who: &Principal, req: &Req) -> Result<Reply, ApiError> {
    let body = req.json_object()?;
    let f = Fields(&body);
    f.only(&["agent_id", "profile_name", "model_name"])?;
    let agent_id = agent_field(&f)?;
    let profile_name = f.str("profile_name")?;
    let model_name = f.str("model_name")?;
    check_model_name(model_name)?;
    who.may_act_for(agent_id)?;

    let mut conn = app.conn()?;
    let mut tx = conn.transaction()?;
    // Serializes switches (and rollbacks) of this agent, so `previous` and the audit trail
    // agree.
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
    let reply = commit_switch(tx, agent_id, &profile, &model, None)?;
    app.apply_changes(&mut conn);
    Ok(reply)
}

/// Points the agent at the (locked) profile and model, writes its audit row and commits;
/// the reply of `/api/switch` and `/api/rollback`. The caller holds the agent's lock.
fn commit_switch(
    mut tx: Transaction<'_>,
    agent_id: &str,
    profile: &Profile,
    model: &Model,
    rollback_of: Option<i64>,
) -> Result<Reply, ApiError> {
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
    audit::record_switch(&mut tx, agent_id, from.as_ref(), &to, rollback_of)?;
    tx.commit()?;
    Ok(Reply::ok(&json!({
        "agent_id": agent_id,
        "profile_name": to.profile_name,
        "provider_type": to.provider_type,
        "model_name": to.model_name,
        "previous": from.as_ref().map(Target::to_json),
        "switched_at": switched_at,
    })))
}

/// `POST /api/rollback`: back to what the agent used before its latest switch, or to what
/// a chosen switch of it produced. A switch itself, under the same lock and in one
/// transaction with its audit row.
pub fn rollback(app: &App, who: &Principal, req: &Req) -> Result<Reply, ApiError> {
    let body = req.json_object()?;
    let f = Fields(&body);
    f.only(&["agent_id", "to_switch_id"])?;
    let agent_id = agent_field(&f)?;
    let to_switch_id = f.opt_id("to_switch_id")?;
    who.may_act_for(agent_id)?;

    let mut conn = app.conn()?;
    let mut tx = conn.transaction()?;
    store::lock_agent(&mut tx, agent_id)?;
    if store::active_state(&mut tx, agent_id)?.is_none() {
        return Err(ApiError::not_found(no_active_model(agent_id)));
    }
    let (target, rollback_of) = match to_switch_id {
        Some(id) => {
            let chosen = audit::find_switch(&mut tx, id)?
                .filter(|s| s.agent_id == agent_id)
                .ok_or_else(|| {
                    ApiError::not_found(format!("switch {id} not found for agent_id '{agent_id}'"))
                })?;
            (chosen.to, chosen.id)
        }
        None => {
            let latest: Option<Switch> = audit::history(&mut tx, agent_id, 1)?.pop();
            match latest {
                Some(Switch {
                    id,
                    from: Some(from),
                    ..
                }) => (from, id),
                _ => {
                    return Err(ApiError::Conflict(format!(
                        "agent_id '{agent_id}' has no earlier state to go back to: it was \
                         switched only once"
                    )))
                }
            }
        }
    };
    let (profile, model) = rollback_target(&mut tx, &target)?;
    let reply = commit_switch(tx, agent_id, &profile, &model, Some(rollback_of))?;
    app.apply_changes(&mut conn);
    Ok(reply)
}

/// The profile and model a rollback goes to, share-locked like a switch's; a 409 naming
/// what is gone or disabled.
fn rollback_target(
    tx: &mut Transaction<'_>,
    target: &Target,
) -> Result<(Profile, Model), ApiError> {
    let (profile_name, model_name) = (&target.profile_name, &target.model_name);
    let profile = store::find_profile_by_name(tx, profile_name, Lock::Share)?.ok_or_else(|| {
        ApiError::Conflict(format!(
            "cannot roll back: profile '{profile_name}' no longer exists"
        ))
    })?;
    let model = store::find_model(tx, profile.id, model_name, Lock::Share)?.ok_or_else(|| {
        ApiError::Conflict(format!(
            "cannot roll back: model '{model_name}' of profile '{profile_name}' no longer exists"
        ))
    })?;
    if !model.enabled {
        return Err(ApiError::Conflict(format!(
            "cannot roll back: model '{model_name}' of profile '{profile_name}' is disabled"
        )));
    }
    Ok((profile, model))
}

pub fn active(app: &App, who: &Principal, req: &Req) -> Result<Reply, ApiError> {
    let agent_id = agent_query(req)?;
    who.may_act_for(agent_id)?;
    let state = store::active_state(&mut *app.conn()?, agent_id)?
        .ok_or_else(|| ApiError::not_found(no_active_model(agent_id)))?;
    Ok(Reply::ok(&state.to_json()))
}

/// `GET /api/agents`: every agent with a state; an agent's own key sees only its agent.
pub fn list(app: &App, who: &Principal) -> Result<Reply, ApiError> {
    let agents = store::list_agents(&mut *app.conn()?, who.bound_agent())?;
    let data: Vec<Value> = agents.iter().map(store::ActiveState::to_json).collect();
    Ok(Reply::ok(&json!({ "data": data })))
}

/// `GET /api/history`: an agent's switches, newest first.
pub fn history(app: &App, who: &Principal, req: &Req) -> Result<Reply, ApiError> {
    let agent_id = agent_query(req)?;
    let limit = query_limit(req.query("limit"), 50, 1000)?;
    who.may_act_for(agent_id)?;
    let switches = audit::history(&mut *app.conn()?, agent_id, limit)?;
    let data: Vec<Value> = switches.iter().map(Switch::to_json).collect();
    Ok(Reply::ok(&json!({ "data": data })))
}
