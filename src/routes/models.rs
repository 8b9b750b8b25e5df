//! `POST /admin/models` and `GET /api/models`: the models a profile offers.

use serde_json::{json, Value};

use crate::app::App;
use crate::error::ApiError;
use crate::http::{Reply, Req};
use crate::input::{check_model_name, Fields};
use crate::store::{self, Lock, ModelChanges};

pub fn profile_not_found(name: &str) -> ApiError {
    ApiError::not_found(format!("profile '{name}' not found"))
}

/// Upsert on (profile, model_name): fields that are left out keep their stored values
/// (or take the defaults on creation).
pub fn upsert(app: &App, req: &Req) -> Result<Reply, ApiError> {
    let body = req.json_object()?;
    let f = Fields(&body);
    let profile_name = f.str("profile_name")?;
    let model_name = f.str("model_name")?;
    check_model_name(model_name)?;
    let changes = ModelChanges {
        enabled: f.opt_bool("enabled")?,
        tags: f.opt_str_list("tags")?,
        max_tokens: if f.has("max_tokens") {
            Some(f.opt_positive_int("max_tokens")?)
        } else {
            None
        },
        drop_params: f.opt_str_list("drop_params")?,
    };

    let mut conn = app.conn()?;
    let mut tx = conn.transaction()?;
    // Held until commit, so a concurrent delete of the profile either goes first (404 here)
    // or waits for this model.
    let profile = store::find_profile_by_name(&mut tx, profile_name, Lock::Share)?
        .ok_or_else(|| profile_not_found(profile_name))?;
    if changes.enabled == Some(false) {
        // The row lock waits for switches to this model in progress (they hold it shared)
        // and makes those that start later wait and then see it disabled.
        if let Some(model) = store::find_model(&mut tx, profile.id, model_name, Lock::Update)? {
            let (agents, total) = store::agents_on_model(&mut tx, model.id, 10)?;
            if total > 0 {
                let more = match total - agents.len() as i64 {
                    0 => String::new(),
                    n => format!(" and {n} more"),
                };
                return Err(ApiError::Conflict(format!(
                    "model '{model_name}' of profile '{profile_name}' is the active model \
                     of agent(s) {}{more}; switch them to a different model first",
                    agents.join(", ")
                )));
            }
        }
    }
    let (model, created) = store::upsert_model(&mut tx, profile.id, model_name, &changes)?;
    tx.commit()?;
    app.apply_changes(&mut conn);
    Ok(Reply::json(
        if created { 201 } else { 200 },
        &model.to_json(),
    ))
}

pub fn list(app: &App, req: &Req) -> Result<Reply, ApiError> {
    let mut conn = app.conn()?;
    let profile_id = match req.query("profile") {
        None => None,
        Some(name) => Some(
            store::find_profile_by_name(&mut *conn, name, Lock::None)?
                .ok_or_else(|| profile_not_found(name))?
                .id,
        ),
    };
    let models = store::list_models(&mut *conn, profile_id, false)?;
    let data: Vec<Value> = models.iter().map(store::Model::to_json).collect();
    Ok(Reply::ok(&json!({ "data": data })))
}
