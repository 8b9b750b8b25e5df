//! Line logging to stderr: a timestamp, a level and a message, as plain text or (with
//! `LOG_FORMAT=json`) one JSON object per line; a request's line also has its fields.
//!
//! Callers are responsible for never passing a secret, a header value or a body here.

use std::fmt::{self, Write as _};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
}

impl Level {
    pub fn parse(raw: &str) -> Option<Level> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "error" => Some(Level::Error),
            "warn" | "warning" => Some(Level::Warn),
            "info" => Some(Level::Info),
            "debug" | "trace" => Some(Level::Debug),
            _ => None,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
        }
    }
}

/// How lines are written (`LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

impl Format {
    pub fn parse(raw: &str) -> Option<Format> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "text" => Some(Format::Text),
            "json" => Some(Format::Json),
            _ => None,
        }
    }
}

static MAX_LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);
static JSON: AtomicBool = AtomicBool::new(false);

pub fn set_format(format: Format) {
    JSON.store(format == Format::Json, Ordering::Relaxed);
}

pub fn set_level(level: Level) {
    MAX_LEVEL.store(level as u8, Ordering::Relaxed);
}

pub fn enabled(level: Level) -> bool {
    level as u8 <= MAX_LEVEL.load(Ordering::Relaxed)
}

pub fn write(level: Level, args: fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    let line = if JSON.load(Ordering::Relaxed) {
        json_line(level, &args.to_string(), None)
    } else {
        format!("{} {:5} {}\n", rfc3339_now(), level.label(), args)
    };
    emit(&line);
}

/// One write call per line keeps lines from different workers whole.
fn emit(line: &str) {
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// What the log line of one answered request says. `agent`, `profile` and `model` are known
/// for proxied requests only.
#[derive(Debug, Default)]
pub struct RequestLine<'a> {
    pub method: &'a str,
    /// Without its query string.
    pub path: &'a str,
    pub status: u16,
    pub duration_ms: f64,
    pub agent: Option<&'a str>,
    pub profile: Option<&'a str>,
    pub model: Option<&'a str>,
}

/// Logs one answered request at info level.
pub fn request(r: &RequestLine<'_>) {
    if !enabled(Level::Info) {
        return;
    }
    if JSON.load(Ordering::Relaxed) {
        let msg = format!("{} {} {}", r.method, r.path, r.status);
        emit(&json_line(Level::Info, &msg, Some(r)));
        return;
    }
    // One buffer for the whole line: this runs once per request.
    let mut line = String::with_capacity(160);
    // Escaped: a decoded `%0a` in a path or a newline in an agent id must not forge a line.
    let _ = write!(
        line,
        "{} {:5} {} ",
        rfc3339_now(),
        Level::Info.label(),
        r.method
    );
    push_escaped(&mut line, r.path);
    let _ = write!(line, " {} {:.1}ms", r.status, r.duration_ms);
    for (name, value) in [
        ("agent", r.agent),
        ("profile", r.profile),
        ("model", r.model),
    ] {
        if let Some(v) = value {
            let _ = write!(line, " {name}=");
            push_escaped(&mut line, v);
        }
    }
    line.push('\n');
    emit(&line);
}

/// Appends `s` as `str::escape_debug` shows it. Paths and names rarely need escaping, and
/// copying them is a fraction of the cost of escaping them character by character.
fn push_escaped(line: &mut String, s: &str) {
    let plain = |b: &u8| (b' '..=b'~').contains(b) && !matches!(b, b'\\' | b'"' | b'\'');
    if s.as_bytes().iter().all(plain) {
        line.push_str(s);
    } else {
        let _ = write!(line, "{}", s.escape_debug());
    }
}

fn json_line(level: Level, msg: &str, request: Option<&RequestLine<'_>>) -> String {
    let mut object = serde_json::Map::new();
    object.insert("ts".into(), rfc3339_now().to_string().into());
    object.insert("level".into(), level.label().to_ascii_lowercase().into());
    object.insert("msg".into(), msg.into());
    if let Some(r) = request {
        object.insert("method".into(), r.method.into());
        object.insert("path".into(), r.path.into());
        object.insert("status".into(), r.status.into());
        // Tenths of a millisecond are plenty, and keep the line short.
        let ms = (r.duration_ms * 10.0).round() / 10.0;
        object.insert("duration_ms".into(), ms.into());
        for (name, value) in [
            ("agent", r.agent),
            ("profile", r.profile),
            ("model", r.model),
        ] {
            object.insert(
                name.into(),
                value.map_or(serde_json::Value::Null, Into::into),
            );
        }
    }
    let mut line = serde_json::Value::Object(object).to_string();
    line.push('\n');
    line
}

#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Error, format_args!($($arg)*)) };
}
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Warn, format_args!($($arg)*)) };
}
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Info, format_args!($($arg)*)) };
}
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Debug, format_args!($($arg)*)) };
}

/// The current UTC time, displayed as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn rfc3339_now() -> Rfc3339 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(now.as_secs() as i64, now.subsec_millis())
}

fn rfc3339(unix_secs: i64, millis: u32) -> Rfc3339 {
    Rfc3339 { unix_secs, millis }
}

/// A point in time written as RFC 3339 (UTC, milliseconds) where it is displayed, without
/// a string of its own.
pub struct Rfc3339 {
    unix_secs: i64,
    millis: u32,
}

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = self.unix_secs.div_euclid(86_400);
        let secs = self.unix_secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
            secs / 3600,
            secs / 60 % 60,
            secs % 60,
            self.millis
        )
    }
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian calendar).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0, 0).to_string(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(951_782_400, 5).to_string(),
            "2000-02-29T00:00:00.005Z"
        );
        assert_eq!(
            rfc3339(1_795_674_585, 123).to_string(),
            "2026-11-26T06:29:45.123Z"
        );
    }

    #[test]
    fn json_lines_are_one_object_with_the_request_fields() {
        let r = RequestLine {
            method: "POST",
            path: "/v1/chat/completions\n{\"forged\":1}",
            status: 200,
            duration_ms: 12.345,
            agent: Some("bot-1"),
            profile: Some("prof"),
            model: None,
        };
        let line = json_line(Level::Info, "POST /v1/chat/completions 200", Some(&r));
        assert!(
            line.ends_with('\n') && line.matches('\n').count() == 1,
            "{line}"
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "info");
        assert_eq!(v["status"], 200);
        assert_eq!(v["duration_ms"], 12.3);
        assert_eq!(v["agent"], "bot-1");
        assert_eq!(v["model"], serde_json::Value::Null);
        assert!(v["ts"].as_str().unwrap().ends_with('Z'));
        let plain: serde_json::Value =
            serde_json::from_str(&json_line(Level::Warn, "a \"quoted\" thing", None)).unwrap();
        assert_eq!(plain["msg"], "a \"quoted\" thing");
        assert!(plain.get("status").is_none());
    }

    /// The shortcut for plain text writes exactly what `escape_debug` would.
    #[test]
    fn escaping_matches_escape_debug() {
        let mut all_bytes = String::new();
        for c in (0u8..=127)
            .map(char::from)
            .chain(['é', '\u{200b}', '\u{301}', '😀'])
        {
            all_bytes.push(c);
            let mut line = String::new();
            push_escaped(&mut line, &c.to_string());
            assert_eq!(line, c.to_string().escape_debug().to_string(), "{c:?}");
        }
        for s in [
            "/v1/chat/completions",
            "a b",
            "x\ny",
            "agent\"1",
            "\u{301}tail",
            &all_bytes,
        ] {
            let mut line = String::new();
            push_escaped(&mut line, s);
            assert_eq!(line, s.escape_debug().to_string(), "{s:?}");
        }
    }

    #[test]
    fn levels_parse_case_insensitively() {
        assert_eq!(Level::parse("DEBUG"), Some(Level::Debug));
        assert_eq!(Level::parse("warning"), Some(Level::Warn));
        assert_eq!(Level::parse("loud"), None);
    }
}
