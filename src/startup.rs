//! Putting the pieces together: database, migrations, listener, workers.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::app::App;
use crate::config::Config;
use crate::db;
use crate::migrate;
use crate::server::{self, Running};

/// How long startup waits for the database to accept connections.
const DB_WAIT: Duration = Duration::from_secs(30);

/// Connects (waiting for the database to come up) and applies pending migrations.
pub fn migrate(config: &Config) -> Result<Vec<&'static str>, String> {
    let pg = db::parse_url(&config.database_url)?;
    let deadline = Instant::now() + DB_WAIT;
    let mut client = loop {
        match pg.connect(postgres::NoTls) {
            Ok(client) => break client,
            // A database that answers "no" will not say yes later: fail at once.
            Err(e) if e.as_db_error().is_none() && Instant::now() < deadline => {
                crate::warn!("database not reachable yet ({}); retrying", describe(&e));
                thread::sleep(Duration::from_secs(1));
            }
            Err(e) => {
                return Err(format!(
                    "cannot connect to the database (DATABASE_URL): {}",
                    describe(&e)
                ))
            }
        }
    };
    migrate::run(&mut client).map_err(|e| e.to_string())
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

/// Migrates, binds and starts the workers.
pub fn start(config: Config) -> Result<Running, String> {
    raise_open_file_limit();
    for name in migrate(&config)? {
        crate::info!("applied migration {name}");
    }
    let pg = db::parse_url(&config.database_url)?;
    let pool = db::pool(pg, config.db_pool_size);
    let listen = config.listen_addr();
    let listener =
        server::bind(&listen).map_err(|e| format!("cannot listen on {listen} (HOST/PORT): {e}"))?;
    let workers = config.workers;
    let app = Arc::new(App::new(config, pool));
    let running = server::start(app, listener).map_err(|e| format!("cannot start: {e}"))?;
    crate::info!(
        "switcher-api {} listening on http://{} with {workers} workers",
        env!("CARGO_PKG_VERSION"),
        running.addr()
    );
    Ok(running)
}
