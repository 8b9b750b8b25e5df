//! SQL for profiles, models and agent state. Functions take any client, so they work alone
//! or inside a transaction.

use postgres::error::SqlState;
use postgres::{GenericClient, Row};
use serde::Serialize;
use serde_json::Value;

use crate::error::ApiError;
use crate::iso;

/// The row lock a read takes, inside a transaction, until that transaction ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    /// A plain read.
    None,
    /// Others may read and share-lock the row, but not change or delete it.
    Share,
    /// The row is ours to change or delete.
    Update,
}

impl Lock {
    /// The locking clause; `of` names the table whose rows are locked in a join.
    fn clause(self, of: &str) -> String {
        match self {
            Lock::None => String::new(),
            Lock::Share => format!(" FOR SHARE OF {of}"),
            Lock::Update => format!(" FOR UPDATE OF {of}"),
        }
    }
}

/// A foreign-key violation means something different to each operation (a record that is
/// gone, or one still referenced), so each maps it to its own error with `on_foreign_key`.
fn on_foreign_key(e: postgres::Error, mapped: impl FnOnce() -> ApiError) -> ApiError {
    let code = e.code();
    if code == Some(&SqlState::FOREIGN_KEY_VIOLATION) || code == Some(&SqlState::RESTRICT_VIOLATION)
    {
        return mapped();
    }
    ApiError::from(e)
}

#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    pub id: i64,
    pub profile_name: String,
    pub provider_type: String,
    pub base_url: String,
    pub created_at: String,
    pub updated_at: String,
}

impl Profile {
    const COLUMNS: &'static str = concat!(
        "p.id, p.profile_name, p.provider_type, p.base_url, ",
        iso!("p.created_at"),
        ", ",
        iso!("p.updated_at")
    );

    fn from_row(row: &Row) -> Profile {
        Profile {
            id: row.get(0),
            profile_name: row.get(1),
            provider_type: row.get(2),
            base_url: row.get(3),
            created_at: row.get(4),
            updated_at: row.get(5),
        }
    }

    /// The public shape: never the credentials, not even encrypted.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("a plain struct serializes")
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Model {
    pub id: i64,
    pub profile_name: String,
    pub model_name: String,
    pub enabled: bool,
    pub tags: Vec<String>,
    pub max_tokens: Option<i32>,
    pub drop_params: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl Model {
    const COLUMNS: &'static str = concat!(
        "m.id, p.profile_name, m.model_name, m.enabled, m.tags, m.max_tokens, m.drop_params, ",
        iso!("m.created_at"),
        ", ",
        iso!("m.updated_at")
    );

    fn from_row(row: &Row) -> Model {
        Model {
            id: row.get(0),
            profile_name: row.get(1),
            model_name: row.get(2),
            enabled: row.get(3),
            tags: row.get(4),
            max_tokens: row.get(5),
            drop_params: row.get(6),
            created_at: row.get(7),
            updated_at: row.get(8),
        }
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("a plain struct serializes")
    }
}

/// The id the next profile will get, so its credentials can be bound to it before the insert.
pub fn next_profile_id(c: &mut impl GenericClient) -> Result<i64, ApiError> {
    let row = c.query_one(
        "SELECT nextval(pg_get_serial_sequence('profiles', 'id'))",
        &[],
    )?;
    Ok(row.get(0))
}

pub fn insert_profile(
    c: &mut impl GenericClient,
    id: i64,
    name: &str,
    provider_type: &str,
    base_url: &str,
    credentials_enc: &[u8],
) -> Result<Profile, ApiError> {
    let sql = format!(
        "INSERT INTO profiles AS p (id, profile_name, provider_type, base_url, credentials_enc)
         VALUES ($1, $2, $3, $4, $5) RETURNING {}",
        Profile::COLUMNS
    );
    let row = c
        .query_one(
            &sql,
            &[&id, &name, &provider_type, &base_url, &credentials_enc],
        )
        .map_err(|e| match ApiError::from(e) {
            ApiError::Conflict(_) => {
                ApiError::Conflict(format!("profile_name '{name}' already exists"))
            }
            other => other,
        })?;
    Ok(Profile::from_row(&row))
}

pub fn list_profiles(c: &mut impl GenericClient) -> Result<Vec<Profile>, ApiError> {
    let sql = format!("SELECT {} FROM profiles p ORDER BY p.id", Profile::COLUMNS);
    Ok(c.query(&sql, &[])?.iter().map(Profile::from_row).collect())
}

/// A profile by id, with the row lock `lock`.
pub fn find_profile(
    c: &mut impl GenericClient,
    id: i64,
    lock: Lock,
) -> Result<Option<Profile>, ApiError> {
    let sql = format!(
        "SELECT {} FROM profiles p WHERE p.id = $1{}",
        Profile::COLUMNS,
        lock.clause("p")
    );
    Ok(c.query_opt(&sql, &[&id])?.as_ref().map(Profile::from_row))
}

/// A profile by name, with the row lock `lock`.
pub fn find_profile_by_name(
    c: &mut impl GenericClient,
    name: &str,
    lock: Lock,
) -> Result<Option<Profile>, ApiError> {
    // Postgres text cannot hold U+0000, so no stored name has it, and sending it would fail.
    if name.contains('\0') {
        return Ok(None);
    }
    let sql = format!(
        "SELECT {} FROM profiles p WHERE p.profile_name = $1{}",
        Profile::COLUMNS,
        lock.clause("p")
    );
    Ok(c.query_opt(&sql, &[&name])?.as_ref().map(Profile::from_row))
}

/// A profile by id and its sealed credentials, read together so that they agree.
pub fn find_profile_with_credentials(
    c: &mut impl GenericClient,
    id: i64,
) -> Result<Option<(Profile, Vec<u8>)>, ApiError> {
    let sql = format!(
        "SELECT {}, p.credentials_enc FROM profiles p WHERE p.id = $1",
        Profile::COLUMNS
    );
    Ok(c.query_opt(&sql, &[&id])?
        .map(|row| (Profile::from_row(&row), row.get(6))))
}

pub fn update_profile(
    c: &mut impl GenericClient,
    id: i64,
    base_url: Option<&str>,
    credentials_enc: Option<&[u8]>,
) -> Result<Profile, ApiError> {
    let sql = format!(
        "UPDATE profiles AS p SET
             base_url = COALESCE($2, p.base_url),
             credentials_enc = COALESCE($3, p.credentials_enc),
             updated_at = now()
         WHERE p.id = $1 RETURNING {}",
        Profile::COLUMNS
    );
    let row = c.query_one(&sql, &[&id, &base_url, &credentials_enc])?;
    Ok(Profile::from_row(&row))
}

/// Deletes a profile and its models. The caller holds the profile's row `FOR UPDATE` and
/// has checked that no agent points at it, so no switch to it can start meanwhile.
pub fn delete_profile(c: &mut impl GenericClient, id: i64) -> Result<(), ApiError> {
    c.execute("DELETE FROM profiles WHERE id = $1", &[&id])
        .map_err(|e| {
            // Only if a caller skipped the lock: an agent switched to it after the check.
            on_foreign_key(e, || {
                ApiError::Conflict(
                    "profile is the active profile of an agent; switch it elsewhere first".into(),
                )
            })
        })?;
    Ok(())
}

/// What `POST /admin/models` may set; `None` keeps the stored value (or the default).
#[derive(Debug, Default)]
pub struct ModelChanges {
    pub enabled: Option<bool>,
    pub tags: Option<Vec<String>>,
    /// `Some(None)` clears the cap.
    pub max_tokens: Option<Option<i32>>,
    pub drop_params: Option<Vec<String>>,
}

/// Inserts or updates (profile, model_name); returns the model and whether it was created.
pub fn upsert_model(
    c: &mut impl GenericClient,
    profile_id: i64,
    model_name: &str,
    changes: &ModelChanges,
) -> Result<(Model, bool), ApiError> {
    // `xmax = 0` is true only for a row this statement inserted.
    let sql = format!(
        "WITH m AS (
             INSERT INTO models (profile_id, model_name, enabled, tags, max_tokens, drop_params)
             VALUES ($1, $2, COALESCE($3, true), COALESCE($4, '{{}}'::text[]), $5,
                     COALESCE($6, '{{}}'::text[]))
             ON CONFLICT (profile_id, model_name) DO UPDATE SET
                 enabled = COALESCE($3, models.enabled),
                 tags = COALESCE($4, models.tags),
                 max_tokens = CASE WHEN $7 THEN $5 ELSE models.max_tokens END,
                 drop_params = COALESCE($6, models.drop_params),
                 updated_at = now()
             RETURNING *, (xmax = 0) AS inserted
         )
         SELECT {}, m.inserted FROM m JOIN profiles p ON p.id = m.profile_id",
        Model::COLUMNS
    );
    let max_tokens = changes.max_tokens.flatten();
    let set_max_tokens = changes.max_tokens.is_some();
    let row = c
        .query_one(
            &sql,
            &[
                &profile_id,
                &model_name,
                &changes.enabled,
                &changes.tags,
                &max_tokens,
                &changes.drop_params,
                &set_max_tokens,
            ],
        )
        .map_err(|e| on_foreign_key(e, || profile_gone(profile_id)))?;
    Ok((Model::from_row(&row), row.get(9)))
}

/// Models of one profile, or of all when `profile_id` is `None`.
pub fn list_models(
    c: &mut impl GenericClient,
    profile_id: Option<i64>,
    enabled_only: bool,
) -> Result<Vec<Model>, ApiError> {
    let sql = format!(
        "SELECT {} FROM models m JOIN profiles p ON p.id = m.profile_id
         WHERE ($1::bigint IS NULL OR m.profile_id = $1) AND (m.enabled OR NOT $2)
         ORDER BY p.profile_name, m.model_name",
        Model::COLUMNS
    );
    Ok(c.query(&sql, &[&profile_id, &enabled_only])?
        .iter()
        .map(Model::from_row)
        .collect())
}

/// A model of a profile, with the row lock `lock` on the model's row.
pub fn find_model(
    c: &mut impl GenericClient,
    profile_id: i64,
    model_name: &str,
    lock: Lock,
) -> Result<Option<Model>, ApiError> {
    let sql = format!(
        "SELECT {} FROM models m JOIN profiles p ON p.id = m.profile_id
         WHERE m.profile_id = $1 AND m.model_name = $2{}",
        Model::COLUMNS,
        lock.clause("m")
    );
    Ok(c.query_opt(&sql, &[&profile_id, &model_name])?
        .as_ref()
        .map(Model::from_row))
}

/// What an agent is switched to.
#[derive(Debug, Clone, Serialize)]
pub struct ActiveState {
    pub agent_id: String,
    pub profile_name: String,
    pub provider_type: String,
    pub model_name: String,
    pub updated_at: String,
}

impl ActiveState {
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("a plain struct serializes")
    }
}

pub fn active_state(
    c: &mut impl GenericClient,
    agent_id: &str,
) -> Result<Option<ActiveState>, ApiError> {
    Ok(list_agents(c, Some(agent_id))?.pop())
}

/// Points the agent at the model; returns the switch time.
pub fn set_agent_state(
    c: &mut impl GenericClient,
    agent_id: &str,
    profile_id: i64,
    model_id: i64,
) -> Result<String, ApiError> {
    let sql = concat!(
        "INSERT INTO agent_state AS s (agent_id, profile_id, model_id) VALUES ($1, $2, $3) ",
        "ON CONFLICT (agent_id) DO UPDATE SET profile_id = $2, model_id = $3, updated_at = now() ",
        "RETURNING ",
        iso!("s.updated_at")
    );
    let row = c
        .query_one(sql, &[&agent_id, &profile_id, &model_id])
        .map_err(|e| {
            // Only if a caller skipped the locks: the profile or model went meanwhile.
            on_foreign_key(e, || {
                ApiError::not_found("the profile or model was deleted while switching to it")
            })
        })?;
    Ok(row.get(0))
}

/// What an agent's state points at.
#[derive(Debug, Clone, Copy)]
pub enum Uses {
    Profile,
    Model,
}

/// Up to `limit` agents (by id) whose state points at the profile or model `id`, and how
/// many there are.
pub fn agents_using(
    c: &mut impl GenericClient,
    uses: Uses,
    id: i64,
    limit: i64,
) -> Result<(Vec<String>, i64), ApiError> {
    let sql = match uses {
        Uses::Profile => {
            "SELECT agent_id, count(*) OVER () FROM agent_state WHERE profile_id = $1
             ORDER BY agent_id LIMIT $2"
        }
        Uses::Model => {
            "SELECT agent_id, count(*) OVER () FROM agent_state WHERE model_id = $1
             ORDER BY agent_id LIMIT $2"
        }
    };
    let rows = c.query(sql, &[&id, &limit])?;
    let total = rows.first().map_or(0, |r| r.get(1));
    Ok((rows.iter().map(|r| r.get(0)).collect(), total))
}

/// Takes the per-agent lock that serializes switches of one agent until the transaction ends.
pub fn lock_agent(c: &mut impl GenericClient, agent_id: &str) -> Result<(), ApiError> {
    c.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('agent_state:' || $1, 0))",
        &[&agent_id],
    )?;
    Ok(())
}

/// Upserts discovered models as enabled; returns how many were new.
pub fn upsert_discovered_models(
    c: &mut impl GenericClient,
    profile_id: i64,
    model_names: &[String],
) -> Result<u64, ApiError> {
    let row = c
        .query_one(
            "WITH up AS (
                 INSERT INTO models (profile_id, model_name, enabled)
                 SELECT $1, name, true FROM unnest($2::text[]) AS name
                 ON CONFLICT (profile_id, model_name)
                     DO UPDATE SET enabled = true, updated_at = now()
                 RETURNING (xmax = 0) AS inserted
             )
             SELECT count(*) FILTER (WHERE inserted) FROM up",
            &[&profile_id, &model_names],
        )
        .map_err(|e| on_foreign_key(e, || profile_gone(profile_id)))?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// A write that referenced a profile found deleted: the profile is gone, not in conflict.
fn profile_gone(profile_id: i64) -> ApiError {
    ApiError::not_found(format!("profile {profile_id} was deleted meanwhile"))
}

/// Every agent with a state (or only `only`), ordered by `agent_id`.
pub fn list_agents(
    c: &mut impl GenericClient,
    only: Option<&str>,
) -> Result<Vec<ActiveState>, ApiError> {
    let sql = concat!(
        "SELECT s.agent_id, p.profile_name, p.provider_type, m.model_name, ",
        iso!("s.updated_at"),
        " FROM agent_state s JOIN profiles p ON p.id = s.profile_id ",
        "JOIN models m ON m.id = s.model_id WHERE ($1::text IS NULL OR s.agent_id = $1) ",
        "ORDER BY s.agent_id"
    );
    Ok(c.query(sql, &[&only])?
        .iter()
        .map(|row| ActiveState {
            agent_id: row.get(0),
            profile_name: row.get(1),
            provider_type: row.get(2),
            model_name: row.get(3),
            updated_at: row.get(4),
        })
        .collect())
}

/// A key of one agent, as listed (never the key, not even its digest).
#[derive(Debug, Clone, Serialize)]
pub struct AgentKeyRow {
    pub id: i64,
    pub agent_id: String,
    pub name: Option<String>,
    pub created_at: String,
    pub last_used_at: Option<String>,
}

impl AgentKeyRow {
    const COLUMNS: &'static str = concat!(
        "k.id, k.agent_id, k.name, ",
        iso!("k.created_at"),
        ", ",
        iso!("k.last_used_at")
    );

    fn from_row(row: &Row) -> AgentKeyRow {
        AgentKeyRow {
            id: row.get(0),
            agent_id: row.get(1),
            name: row.get(2),
            created_at: row.get(3),
            last_used_at: row.get(4),
        }
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("a plain struct serializes")
    }
}

pub fn insert_agent_key(
    c: &mut impl GenericClient,
    agent_id: &str,
    name: Option<&str>,
    key_sha256: &[u8],
) -> Result<AgentKeyRow, ApiError> {
    let sql = format!(
        "INSERT INTO agent_keys AS k (agent_id, name, key_sha256) VALUES ($1, $2, $3)
         RETURNING {}",
        AgentKeyRow::COLUMNS
    );
    let row = c.query_one(&sql, &[&agent_id, &name, &key_sha256])?;
    Ok(AgentKeyRow::from_row(&row))
}

pub fn list_agent_keys(
    c: &mut impl GenericClient,
    agent_id: Option<&str>,
) -> Result<Vec<AgentKeyRow>, ApiError> {
    let sql = format!(
        "SELECT {} FROM agent_keys k WHERE ($1::text IS NULL OR k.agent_id = $1) ORDER BY k.id",
        AgentKeyRow::COLUMNS
    );
    Ok(c.query(&sql, &[&agent_id])?
        .iter()
        .map(AgentKeyRow::from_row)
        .collect())
}

/// Deletes a key; whether it existed.
pub fn delete_agent_key(c: &mut impl GenericClient, id: i64) -> Result<bool, ApiError> {
    Ok(c.execute("DELETE FROM agent_keys WHERE id = $1", &[&id])? == 1)
}
