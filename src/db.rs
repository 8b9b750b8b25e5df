//! The Postgres connection pool.

use std::str::FromStr;
use std::time::Duration;

use postgres::NoTls;
use r2d2_postgres::PostgresConnectionManager;

pub type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;
pub type Conn = r2d2::PooledConnection<PostgresConnectionManager<NoTls>>;

/// Parses `DATABASE_URL`; the error never repeats the URL, which may hold a password.
pub fn parse_url(url: &str) -> Result<postgres::Config, String> {
    let mut config = postgres::Config::from_str(url)
        .map_err(|e| format!("DATABASE_URL is not a valid Postgres URL: {e}"))?;
    config.application_name("switcher-api");
    config.connect_timeout(Duration::from_secs(5));
    // A dead peer without a FIN (a partition) is noticed by the listening connection.
    config.keepalives(true);
    config.keepalives_idle(Duration::from_secs(10));
    // No control-plane statement may hold a connection (and its worker) for long.
    let options = match config.get_options() {
        Some(o) if !o.is_empty() => format!("{o} -c statement_timeout={STATEMENT_TIMEOUT_MS}"),
        _ => format!("-c statement_timeout={STATEMENT_TIMEOUT_MS}"),
    };
    config.options(&options);
    Ok(config)
}

/// The bound on every statement of the service's own connections.
const STATEMENT_TIMEOUT_MS: u64 = 30_000;

/// One connection of its own (the state listener's, the journal writer's, migrations').
pub fn connect(config: &postgres::Config) -> Result<postgres::Client, postgres::Error> {
    config.connect(NoTls)
}

/// A pool that connects lazily: the service starts (and answers `/healthz` with 503) even
/// while the database is away, and recovers by itself when it returns.
pub fn pool(config: postgres::Config, size: u32) -> Pool {
    let manager = PostgresConnectionManager::new(config, NoTls);
    r2d2::Pool::builder()
        .max_size(size)
        .min_idle(Some(0))
        // No round trip to test a connection before each use: a broken one fails its query,
        // is discarded by r2d2 (`has_broken`) and the request gets a 503.
        .test_on_check_out(false)
        // A request waits this long for a connection before it gets a 503.
        .connection_timeout(Duration::from_secs(3))
        .error_handler(Box::new(QuietErrors))
        .build_unchecked(manager)
}

/// r2d2 logs connection failures through the `log` crate, which we do not install; they are
/// reported where a request fails instead.
#[derive(Debug)]
struct QuietErrors;

impl r2d2::HandleError<postgres::Error> for QuietErrors {
    fn handle_error(&self, error: postgres::Error) {
        crate::debug!("database connection failed: {error}");
    }
}

/// Formats a timestamp column as RFC 3339 UTC with microseconds, in SQL.
#[macro_export]
macro_rules! iso {
    ($col:literal) => {
        concat!(
            "to_char(",
            $col,
            " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
        )
    };
}
