//! `POST /admin/models` and `GET /api/models`: the models a profile offers.

use serde_json::{json, Value};

use crate::app::App;
use crate::error::ApiError;
use crate::http::{Reply, Req};
use crate::input::{check_model_name, Fields};
use crate::store::{self, Lock, ModelChanges, Uses};

pub fn profile_not_found(name: &str) -> ApiError {
    ApiError::not_found(format!("profile '{name}' not found"))
}

/// Upsert on (profile, model_name): fields that are left out keep their stored values
/// (or take the defaults on creation).
pub fn upsert(app: &App, req: &Req) -> Result<Reply, ApiError> {
    let body = req.json_object()?;
    let f = Fields(&body);
    f.only(&[
        "profile_name",
        "model_name",
        "enabled",
        "tags",
        "max_tokens",
        "drop_params",
    ])?;
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
            if let Some(agents) = agents_using(&mut tx, Uses::Model, model.id)? {
                return Err(ApiError::Conflict(format!(
                    "model '{model_name}' of profile '{profile_name}' is the active model \
                     of agent(s) {agents}; switch them to a different model first"
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

/// The agents whose state points at a profile or model, named for a 409 (the first ten,
/// then how many more), or `None` when there are none.
pub fn agents_using(
    c: &mut impl postgres::GenericClient,
    uses: Uses,
    id: i64,
) -> Result<Option<String>, ApiError> {
    const NAMED: i64 = 10;
    let (agents, total) = store::agents_using(c, uses, id, NAMED)?;
    if total == 0 {
        return Ok(None);
    }
    let more = match total - agents.len() as i64 {
        0 => String::new(),
        n => format!(" and {n} more"),
    };
    Ok(Some(format!("{}{more}", agents.join(", "))))
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
