//! Putting the pieces together: journal, database, migrations, routing state, workers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::app::App;
use crate::config::Config;
use crate::db;
use crate::journal::Journal;
use crate::migrate;
use crate::server::{self, Running};
use crate::state;

/// How long startup waits for the database to accept connections.
const DB_WAIT: Duration = Duration::from_secs(30);

/// How a first attempt to reach the database failed.
enum Contact {
    /// The database answered "no" (a wrong password, no such database, a migration that
    /// cannot apply): it will not say yes later, so this is a configuration error.
    Refused(String),
    /// Nothing answered; it may come up later.
    Unreachable(String),
}

/// Connects once and applies pending migrations.
fn connect_and_migrate(
    pg: &db::Database,
) -> Result<(postgres::Client, Vec<&'static str>), Contact> {
    let mut client = db::connect(pg).map_err(|e| {
        // A certificate refused (or no TLS where it is required) will not mend by itself.
        if let Some(reason) = db::tls_refusal(&e) {
            return Contact::Refused(format!(
                "cannot connect to the database over TLS (DATABASE_URL, sslmode={}): {reason}",
                pg.tls_mode.as_str()
            ));
        }
        match e.as_db_error() {
            Some(_) => Contact::Refused(format!(
                "cannot connect to the database (DATABASE_URL): {}",
                describe(&e)
            )),
            None => Contact::Unreachable(describe(&e)),
        }
    })?;
    match migrate::run(&mut client) {
        Ok(applied) => Ok((client, applied)),
        Err(migrate::MigrateError::Database { source, .. }) if source.as_db_error().is_none() => {
            Err(Contact::Unreachable(describe(&source)))
        }
        Err(e) => Err(Contact::Refused(e.to_string())),
    }
}

/// `switcher-api migrate`: connects (waiting for the database to come up) and applies
/// pending migrations.
pub fn migrate(config: &Config) -> Result<Vec<&'static str>, String> {
    let pg = db::parse_url(&config.database_url)?;
    let deadline = Instant::now() + DB_WAIT;
    loop {
        match connect_and_migrate(&pg) {
            Ok((_, applied)) => return Ok(applied),
            Err(Contact::Unreachable(e)) if Instant::now() < deadline => {
                crate::warn!("database not reachable yet ({e}); retrying");
                thread::sleep(Duration::from_secs(1));
            }
            Err(Contact::Unreachable(e)) => {
                return Err(format!(
                    "cannot connect to the database (DATABASE_URL): {e}"
                ))
            }
            Err(Contact::Refused(e)) => return Err(e),
        }
    }
}

/// The useful part of a connection error: the server's message (`database "x" does not
/// exist`) or the I/O cause, rather than postgres' bare "db error".
fn describe(e: &postgres::Error) -> String {
    use std::error::Error as _;
    if let Some(db) = e.as_db_error() {
        return db.message().to_string();
    }
    match e.source() {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// Raises the soft limit on open files to the hard limit. Every connection costs a descriptor
/// (two, in tiny_http), and tiny_http's accept loop ends for good on its first error, such as
/// running out of them; a high limit keeps that far away.
fn raise_open_file_limit() {
    // SAFETY: plain syscalls on a stack struct they fill or read.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            let wanted = libc::rlimit {
                rlim_cur: limit.rlim_max,
                ..limit
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
                crate::debug!("open file limit raised to {}", limit.rlim_max);
            }
        }
    }
}

/// Opens the journal, reaches the database if it can (migrations, the first load of the
/// routing state), starts the state listener and the journal writer, binds and starts the
/// workers. A database that cannot be reached yet is waited for in the background: the
/// instance answers `/healthz` with 503 until its state is loaded, then serves.
pub fn start(config: Config) -> Result<Running, String> {
    raise_open_file_limit();
    let pg = db::parse_url(&config.database_url)?;
    let journal = Arc::new(Journal::open(
        &config.audit_journal_dir,
        config.audit_journal_max_bytes,
    )?);
    if journal.backlog() > 0 {
        crate::info!(
            "{} audit row(s) from an earlier run wait in the journal",
            journal.backlog()
        );
    }
    let first = match connect_and_migrate(&pg) {
        Ok((client, applied)) => {
            for name in applied {
                crate::info!("applied migration {name}");
            }
            Some(client)
        }
        Err(Contact::Refused(e)) => return Err(e),
        Err(Contact::Unreachable(e)) => {
            crate::warn!(
                "the database is not reachable ({e}); serving once the routing state is loaded"
            );
            None
        }
    };
    let pool = db::pool(pg.clone(), config.db_pool_size);
    let listen = config.listen_addr();
    let workers = config.workers;
    let resync = config.state_resync;
    let app = Arc::new(App::new(config, pool, journal.clone()));
    if let Some(mut client) = first {
        // Loaded before the listener line, so a started instance serves at once.
        if app.state.reload(&mut client).is_ok() {
            app.health.set(true);
        }
    }
    state::Listener {
        pg: pg.clone(),
        state: app.state.clone(),
        health: app.health.clone(),
        resync,
        on_connect: Box::new(migrate_on_connect()),
    }
    .spawn()
    .map_err(|e| format!("cannot start the state listener: {e}"))?;
    journal
        .spawn_writer(pg, app.health.clone())
        .map_err(|e| format!("cannot start the audit writer: {e}"))?;
    crate::auth::spawn_usage_writer(app.clone())
        .map_err(|e| format!("cannot start the agent key use writer: {e}"))?;

    let listener =
        server::bind(&listen).map_err(|e| format!("cannot listen on {listen} (HOST/PORT): {e}"))?;
    let running = server::start(app, listener).map_err(|e| format!("cannot start: {e}"))?;
    crate::info!(
        "switcher-api {} listening on http://{} with {workers} workers",
        env!("CARGO_PKG_VERSION"),
        running.addr()
    );
    Ok(running)
}

/// Migrations for the listener's connections, until they have once applied. An instance
/// that started while the database was away migrates when it first reaches it; a migration
/// the database refuses then is as fatal as it is at startup.
fn migrate_on_connect() -> impl Fn(&mut postgres::Client) -> Result<(), String> + Send {
    let done = AtomicBool::new(false);
    move |client| {
        if done.load(Ordering::Relaxed) {
            return Ok(());
        }
        match migrate::run(client) {
            Ok(applied) => {
                for name in applied {
                    crate::info!("applied migration {name}");
                }
                done.store(true, Ordering::Relaxed);
                Ok(())
            }
            Err(migrate::MigrateError::Database { source, .. })
                if source.as_db_error().is_none() =>
            {
                Err(describe(&source))
            }
            Err(e) => {
                crate::error!("{e}");
                std::process::exit(2);
            }
        }
    }
}
