//! Configuration: the environment (and `.env`) turned into a validated `Config`.

use std::fmt;
use std::time::Duration;

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::log::{Format, Level};

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres:postgres@localhost:5432/switcher";

/// Everything the service needs to run, checked once at startup.
#[derive(Clone)]
pub struct Config {
    pub database_url: String,
    /// `DATABASE_URL` parsed, with its TLS settings: what `db::connect` and `db::pool` take.
    pub database: crate::db::Database,
    pub host: String,
    pub port: u16,
    pub admin_key: String,
    pub agent_key: String,
    /// The AES-256-GCM key for credentials at rest.
    pub kms_key: [u8; 32],
    /// True when the key came from `ROUTER_KMS_KEY`, false when derived from the admin key.
    pub kms_key_explicit: bool,
    pub require_agent_key_for_proxy: bool,
    pub upstream_timeout: Duration,
    /// `UPSTREAM_CA_FILE`'s certificates (DER), trusted for upstream TLS besides the web roots.
    pub upstream_ca: Vec<Vec<u8>>,
    /// How long a client may take to send a request's headers and body, from its first byte.
    pub request_read_timeout: Duration,
    /// How long a connection may wait for its next request before it is closed.
    pub idle_timeout: Duration,
    /// Most client connections open at once.
    pub max_connections: usize,
    pub workers: usize,
    pub db_pool_size: u32,
    pub max_body_bytes: usize,
    pub log_level: Level,
    /// `LOG_FORMAT`: plain lines, or one JSON object per line.
    pub log_format: Format,
    /// `METRICS_PUBLIC`: `/metrics` without a key.
    pub metrics_public: bool,
    /// How long a stopping server waits for requests in flight.
    pub shutdown_grace: Duration,
    /// Where audit rows wait for the database; one instance per directory.
    pub audit_journal_dir: std::path::PathBuf,
    /// Journal size (of rows not yet in the database) at which proxied requests get 503.
    pub audit_journal_max_bytes: u64,
    /// How often the routing state is reloaded whatever the notifications said.
    pub state_resync: Duration,
}

// Keys must never reach a log line, even through a stray `{:?}`.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("admin_key", &"<redacted>")
            .field("agent_key", &"<redacted>")
            .field("kms_key", &"<redacted>")
            .field(
                "require_agent_key_for_proxy",
                &self.require_agent_key_for_proxy,
            )
            .field("upstream_timeout", &self.upstream_timeout)
            .field("upstream_ca", &self.upstream_ca.len())
            .field("request_read_timeout", &self.request_read_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_connections", &self.max_connections)
            .field("workers", &self.workers)
            .field("db_pool_size", &self.db_pool_size)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("log_level", &self.log_level)
            .field("log_format", &self.log_format)
            .field("metrics_public", &self.metrics_public)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("audit_journal_dir", &self.audit_journal_dir)
            .field("audit_journal_max_bytes", &self.audit_journal_max_bytes)
            .field("state_resync", &self.state_resync)
            .finish()
    }
}

/// A configuration problem, always naming the variable at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub variable: &'static str,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.variable, self.problem)
    }
}

impl std::error::Error for ConfigError {}

fn err(variable: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        variable,
        problem: problem.into(),
    }
}

/// The values `.env.example` ships with: running with one would mean a key that every reader
/// of the repository knows.
const PLACEHOLDERS: &[&str] = &[
    "change-me-admin-key",
    "change-me-agent-key",
    "change-me",
    "changeme",
];

impl Config {
    /// Reads the process environment. `.env` must already have been loaded into it.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    /// Builds a config from any variable lookup; empty values count as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());

        let admin_key = required_key(&get, "ROUTER_ADMIN_KEY")?;
        let agent_key = required_key(&get, "ROUTER_AGENT_KEY")?;
        if admin_key == agent_key {
            return Err(err(
                "ROUTER_AGENT_KEY",
                "must differ from ROUTER_ADMIN_KEY (an agent would otherwise hold the admin key)",
            ));
        }

        let (kms_key, kms_key_explicit) = match get("ROUTER_KMS_KEY") {
            Some(encoded) => (parse_kms_key(encoded.trim())?, true),
            None => (Sha256::digest(admin_key.as_bytes()).into(), false),
        };

        let host = get("HOST").unwrap_or_else(|| "0.0.0.0".to_string());
        let port = parse_num(&get, "PORT", 8080u16, 0..=u16::MAX)?;
        let workers = parse_num(&get, "WORKERS", 64usize, 1..=4096)?;
        let db_pool_size = parse_num(&get, "DB_POOL_SIZE", 16u32, 1..=1024)?;
        let max_body_bytes = parse_num(&get, "MAX_BODY_BYTES", 8 * 1024 * 1024usize, 1..=1 << 30)?;
        let upstream_timeout_ms = parse_num(&get, "UPSTREAM_TIMEOUT_MS", 30_000u64, 1..=3_600_000)?;
        let read_timeout_ms = parse_num(&get, "REQUEST_READ_TIMEOUT_MS", 5_000u64, 1..=600_000)?;
        let idle_timeout_ms = parse_num(&get, "IDLE_TIMEOUT_MS", 60_000u64, 1..=3_600_000)?;
        let max_connections = parse_num(&get, "MAX_CONNECTIONS", 1024usize, 1..=1_000_000)?;
        let grace_ms = parse_num(&get, "SHUTDOWN_GRACE_MS", 30_000u64, 0..=3_600_000)?;
        let audit_journal_max_bytes =
            parse_num(&get, "AUDIT_JOURNAL_MAX_BYTES", 1u64 << 30, 1..=u64::MAX)?;
        let resync_ms = parse_num(&get, "STATE_RESYNC_MS", 30_000u64, 100..=86_400_000)?;

        let require_agent_key_for_proxy = match get("REQUIRE_AGENT_KEY_FOR_PROXY") {
            None => true,
            Some(v) => parse_bool(&v)
                .ok_or_else(|| err("REQUIRE_AGENT_KEY_FOR_PROXY", "must be true or false"))?,
        };

        let log_level = match get("LOG_LEVEL") {
            None => Level::Info,
            Some(v) => Level::parse(&v)
                .ok_or_else(|| err("LOG_LEVEL", "must be one of error, warn, info, debug"))?,
        };

        let log_format = match get("LOG_FORMAT") {
            None => Format::Text,
            Some(v) => {
                Format::parse(&v).ok_or_else(|| err("LOG_FORMAT", "must be text or json"))?
            }
        };
        let metrics_public = match get("METRICS_PUBLIC") {
            None => false,
            Some(v) => {
                parse_bool(&v).ok_or_else(|| err("METRICS_PUBLIC", "must be true or false"))?
            }
        };
        let upstream_ca = match get("UPSTREAM_CA_FILE") {
            None => Vec::new(),
            Some(path) => crate::upstream::read_ca_file(std::path::Path::new(path.trim()))
                .map_err(|problem| err("UPSTREAM_CA_FILE", problem))?,
        };

        let database_url = get("DATABASE_URL").unwrap_or_else(|| DEFAULT_DATABASE_URL.to_string());
        let database = crate::db::parse_url(&database_url).map_err(|problem| {
            let problem = problem.strip_prefix("DATABASE_URL ").unwrap_or(&problem);
            err("DATABASE_URL", problem)
        })?;

        Ok(Config {
            database_url,
            database,
            host,
            port,
            admin_key,
            agent_key,
            kms_key,
            kms_key_explicit,
            require_agent_key_for_proxy,
            upstream_timeout: Duration::from_millis(upstream_timeout_ms),
            upstream_ca,
            request_read_timeout: Duration::from_millis(read_timeout_ms),
            idle_timeout: Duration::from_millis(idle_timeout_ms),
            max_connections,
            workers,
            db_pool_size,
            max_body_bytes,
            log_level,
            log_format,
            metrics_public,
            shutdown_grace: Duration::from_millis(grace_ms),
            audit_journal_dir: get("AUDIT_JOURNAL_DIR")
                .unwrap_or_else(|| "./audit-journal".to_string())
                .into(),
            audit_journal_max_bytes,
            state_resync: Duration::from_millis(resync_ms),
        })
    }

    pub fn listen_addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

fn required_key(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
) -> Result<String, ConfigError> {
    let value = get(name).ok_or_else(|| err(name, "is required and must not be empty"))?;
    if value.trim() != value {
        return Err(err(name, "must not start or end with white space"));
    }
    if PLACEHOLDERS.iter().any(|p| value.eq_ignore_ascii_case(p)) {
        return Err(err(
            name,
            "still holds the placeholder from .env.example; generate a real key (e.g. `openssl rand -hex 32`)",
        ));
    }
    Ok(value)
}

/// Decodes `ROUTER_KMS_KEY`: standard base64 (padded or not) of exactly 32 bytes.
pub fn parse_kms_key(encoded: &str) -> Result<[u8; 32], ConfigError> {
    let engines = [
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::STANDARD_NO_PAD,
    ];
    let bytes = engines
        .iter()
        .find_map(|e| e.decode(encoded).ok())
        .ok_or_else(|| err("ROUTER_KMS_KEY", "is not valid base64"))?;
    bytes.as_slice().try_into().map_err(|_| {
        err(
            "ROUTER_KMS_KEY",
            format!(
                "must be base64 of exactly 32 bytes (it decodes to {} bytes)",
                bytes.len()
            ),
        )
    })
}

fn parse_num<T>(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + fmt::Display + Copy,
{
    let Some(raw) = get(name) else {
        return Ok(default);
    };
    match raw.trim().parse::<T>() {
        Ok(v) if range.contains(&v) => Ok(v),
        _ => Err(err(
            name,
            format!(
                "must be a whole number from {} to {}",
                range.start(),
                range.end()
            ),
        )),
    }
}

fn parse_bool(raw: &str) -> Option<bool> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    const KEYS: [(&str, &str); 2] = [
        ("ROUTER_ADMIN_KEY", "admin-secret-1"),
        ("ROUTER_AGENT_KEY", "agent-secret-1"),
    ];

    #[test]
    fn defaults_apply_when_only_the_keys_are_set() {
        let c = config(&KEYS).unwrap();
        assert_eq!(c.database_url, DEFAULT_DATABASE_URL);
        assert_eq!(c.host, "0.0.0.0");
        assert_eq!(c.port, 8080);
        assert!(c.require_agent_key_for_proxy);
        assert_eq!(c.upstream_timeout, Duration::from_millis(30_000));
        assert!(!c.kms_key_explicit);
        assert_eq!(c.listen_addr(), "0.0.0.0:8080");
    }

    #[test]
    fn a_missing_admin_key_names_the_variable() {
        let e = config(&[("ROUTER_AGENT_KEY", "a")]).unwrap_err();
        assert_eq!(e.variable, "ROUTER_ADMIN_KEY");
    }

    #[test]
    fn an_empty_agent_key_counts_as_missing() {
        let e = config(&[("ROUTER_ADMIN_KEY", "a"), ("ROUTER_AGENT_KEY", "  ")]).unwrap_err();
        assert_eq!(e.variable, "ROUTER_AGENT_KEY");
        assert!(e.to_string().starts_with("ROUTER_AGENT_KEY "));
    }

    #[test]
    fn equal_admin_and_agent_keys_are_refused() {
        let e = config(&[("ROUTER_ADMIN_KEY", "same"), ("ROUTER_AGENT_KEY", "same")]).unwrap_err();
        assert_eq!(e.variable, "ROUTER_AGENT_KEY");
    }

    #[test]
    fn placeholder_keys_are_refused() {
        let e = config(&[
            ("ROUTER_ADMIN_KEY", "change-me-admin-key"),
            ("ROUTER_AGENT_KEY", "x"),
        ])
        .unwrap_err();
        assert_eq!(e.variable, "ROUTER_ADMIN_KEY");
    }

    #[test]
    fn kms_key_defaults_to_sha256_of_the_admin_key() {
        let c = config(&KEYS).unwrap();
        let expected: [u8; 32] = Sha256::digest(b"admin-secret-1").into();
        assert_eq!(c.kms_key, expected);
    }

    #[test]
    fn kms_key_must_be_base64_of_32_bytes() {
        let good = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let mut vars = KEYS.to_vec();
        vars.push(("ROUTER_KMS_KEY", &good));
        let c = config(&vars).unwrap();
        assert_eq!(c.kms_key, [7u8; 32]);
        assert!(c.kms_key_explicit);

        let short = base64::engine::general_purpose::STANDARD.encode([7u8; 16]);
        for bad in ["not base64!!", short.as_str()] {
            let mut vars = KEYS.to_vec();
            vars.push(("ROUTER_KMS_KEY", bad));
            let e = config(&vars).unwrap_err();
            assert_eq!(e.variable, "ROUTER_KMS_KEY", "{bad}");
        }
    }

    #[test]
    fn numbers_out_of_range_name_their_variable() {
        for (name, value) in [
            ("PORT", "70000"),
            ("WORKERS", "0"),
            ("UPSTREAM_TIMEOUT_MS", "soon"),
            ("MAX_BODY_BYTES", "-1"),
            ("MAX_CONNECTIONS", "0"),
            ("IDLE_TIMEOUT_MS", "never"),
        ] {
            let mut vars = KEYS.to_vec();
            vars.push((name, value));
            assert_eq!(config(&vars).unwrap_err().variable, name);
        }
    }

    #[test]
    fn a_malformed_database_url_names_the_variable_and_not_the_password() {
        let mut vars = KEYS.to_vec();
        vars.push(("DATABASE_URL", "postgres://u:pw-secret-9@h/d?sslmode=maybe"));
        let e = config(&vars).unwrap_err();
        assert_eq!(e.variable, "DATABASE_URL");
        assert!(!e.to_string().contains("pw-secret-9"), "{e}");
        assert!(e.to_string().starts_with("DATABASE_URL has sslmode"), "{e}");
    }

    #[test]
    fn log_format_and_metrics_public_are_read_and_checked() {
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut vars = KEYS.to_vec();
            vars.extend_from_slice(extra);
            config(&vars)
        };
        let c = with(&[]).unwrap();
        assert_eq!((c.log_format, c.metrics_public), (Format::Text, false));
        let c = with(&[("LOG_FORMAT", "JSON"), ("METRICS_PUBLIC", "true")]).unwrap();
        assert_eq!((c.log_format, c.metrics_public), (Format::Json, true));
        assert_eq!(
            with(&[("LOG_FORMAT", "xml")]).unwrap_err().variable,
            "LOG_FORMAT"
        );
        assert_eq!(
            with(&[("METRICS_PUBLIC", "maybe")]).unwrap_err().variable,
            "METRICS_PUBLIC"
        );
    }

    #[test]
    fn require_agent_key_for_proxy_reads_booleans() {
        let mut vars = KEYS.to_vec();
        vars.push(("REQUIRE_AGENT_KEY_FOR_PROXY", "false"));
        assert!(!config(&vars).unwrap().require_agent_key_for_proxy);
        vars.pop();
        vars.push(("REQUIRE_AGENT_KEY_FOR_PROXY", "maybe"));
        assert_eq!(
            config(&vars).unwrap_err().variable,
            "REQUIRE_AGENT_KEY_FOR_PROXY"
        );
    }

    #[test]
    fn debug_output_never_shows_keys() {
        let c = config(&KEYS).unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("admin-secret-1"));
        assert!(!shown.contains("agent-secret-1"));
    }
}
