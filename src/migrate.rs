//! Schema migrations: the SQL files of `sql/`, embedded, applied in order, recorded with checksums.

use std::fmt;

use postgres::Client;

use crate::crypto::sha256_hex;

/// One migration file, as embedded at build time.
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every file of `sql/`, in order. A test checks that this list and the folder agree.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_init.sql",
        sql: include_str!("../sql/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "0002_data_plane.sql",
        sql: include_str!("../sql/0002_data_plane.sql"),
    },
    Migration {
        version: 3,
        name: "0003_operator.sql",
        sql: include_str!("../sql/0003_operator.sql"),
    },
    Migration {
        version: 4,
        name: "0004_audit_insert_cost.sql",
        sql: include_str!("../sql/0004_audit_insert_cost.sql"),
    },
];

/// How long migrations wait for a lock.
const MIGRATION_LOCK_TIMEOUT: &str = "60s";

/// Serializes migrations across instances that start at the same time.
const ADVISORY_LOCK_KEY: i64 = 0x5357_4954_4348_4552; // "SWITCHER"

#[derive(Debug)]
pub enum MigrateError {
    /// An applied file was edited afterwards.
    Changed { name: String },
    /// The database was migrated by a newer binary.
    Unknown { version: i32, name: String },
    /// A statement failed, or the database could not be reached.
    Database {
        name: Option<String>,
        source: postgres::Error,
    },
}

impl fmt::Display for MigrateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MigrateError::Changed { name } => write!(
                f,
                "migration {name} was changed after it was applied (checksum mismatch); restore the original file and add a new migration instead"
            ),
            MigrateError::Unknown { version, name } => write!(
                f,
                "the database has migration {version} ({name}) that this binary does not know; run a newer switcher-api"
            ),
            MigrateError::Database {
                name: Some(name),
                source,
            } => write!(f, "migration {name} failed: {source}"),
            MigrateError::Database { name: None, source } => {
                write!(f, "migrations could not run: {source}")
            }
        }
    }
}

impl std::error::Error for MigrateError {}

impl From<postgres::Error> for MigrateError {
    fn from(source: postgres::Error) -> MigrateError {
        MigrateError::Database { name: None, source }
    }
}

/// Applies every migration not yet applied; returns the names of those it applied.
pub fn run(client: &mut Client) -> Result<Vec<&'static str>, MigrateError> {
    run_list(client, MIGRATIONS)
}

fn run_list(
    client: &mut Client,
    migrations: &'static [Migration],
) -> Result<Vec<&'static str>, MigrateError> {
    // An instance stuck behind another's lock (or a migration behind a long transaction)
    // fails with a clear error instead of hanging its startup.
    client.batch_execute(&format!("SET lock_timeout = '{MIGRATION_LOCK_TIMEOUT}'"))?;
    client.execute("SELECT pg_advisory_lock($1)", &[&ADVISORY_LOCK_KEY])?;
    let result = apply_locked(client, migrations);
    // Unlock even on failure; a dropped connection releases the lock anyway.
    let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&ADVISORY_LOCK_KEY]);
    let _ = client.batch_execute("RESET lock_timeout");
    result
}

fn apply_locked(
    client: &mut Client,
    migrations: &'static [Migration],
) -> Result<Vec<&'static str>, MigrateError> {
    client.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    INTEGER PRIMARY KEY,
             name       TEXT NOT NULL,
             checksum   TEXT NOT NULL,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )?;
    let applied: Vec<(i32, String, String)> = client
        .query(
            "SELECT version, name, checksum FROM schema_migrations ORDER BY version",
            &[],
        )?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();

    for (version, name, checksum) in &applied {
        match migrations.iter().find(|m| m.version == *version) {
            None => {
                return Err(MigrateError::Unknown {
                    version: *version,
                    name: name.clone(),
                })
            }
            Some(m) if sha256_hex(m.sql.as_bytes()) != *checksum => {
                return Err(MigrateError::Changed {
                    name: m.name.to_string(),
                })
            }
            Some(_) => {}
        }
    }

    let mut done = Vec::new();
    for m in migrations {
        if applied.iter().any(|(v, _, _)| *v == m.version) {
            continue;
        }
        let wrap = |source| MigrateError::Database {
            name: Some(m.name.to_string()),
            source,
        };
        let mut tx = client.transaction().map_err(wrap)?;
        tx.batch_execute(m.sql).map_err(wrap)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&m.version, &m.name, &sha256_hex(m.sql.as_bytes())],
        )
        .map_err(wrap)?;
        tx.commit().map_err(wrap)?;
        done.push(m.name);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_list_matches_the_sql_folder() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/sql");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let embedded: Vec<&str> = MIGRATIONS.iter().map(|m| m.name).collect();
        assert_eq!(files, embedded);
        for m in MIGRATIONS {
            let on_disk = std::fs::read_to_string(format!("{dir}/{}", m.name)).unwrap();
            assert_eq!(on_disk, m.sql, "{} differs from its embedded copy", m.name);
        }
    }

    #[test]
    fn versions_follow_the_file_names_in_order() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1);
            assert!(
                m.name.starts_with(&format!("{:04}_", m.version)),
                "{}",
                m.name
            );
        }
    }
}
