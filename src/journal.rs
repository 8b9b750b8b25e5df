//! The audit journal: `audit_requests` rows appended to segment files in
//! `AUDIT_JOURNAL_DIR` before a proxied answer's last byte goes out, and shipped to Postgres
//! in batches by one writer thread, off every request's path.
//!
//! A row is acknowledged once its line is written (a `write(2)` into the page cache survives
//! `kill -9`; the writer `fsync`s at least every second). Each row carries this run's
//! `instance_id` and a `seq`, unique together in the table, so a replay after a crash writes
//! it once. Segments are deleted once everything in them is in the table. The directory is
//! held with `flock`, so two instances never share it.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::audit::RequestRecord;
use crate::error::ApiError;
use crate::state::DbHealth;

/// A segment is closed and a new one started past this size.
const SEGMENT_BYTES: u64 = 4 << 20;
/// Rows per insert.
const BATCH_ROWS: usize = 500;
/// How often the writer looks for new rows, and the longest an appended row waits for
/// `fsync`.
const TICK: Duration = Duration::from_millis(100);
const SYNC_EVERY: Duration = Duration::from_secs(1);
const LOCK_FILE: &str = "LOCK";

/// One line of a segment: one `audit_requests` row.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Row {
    pub instance_id: String,
    pub seq: i64,
    /// When the request arrived, in microseconds since the Unix epoch.
    pub created_at_us: i64,
    pub endpoint: String,
    pub agent_id: String,
    pub profile_name: Option<String>,
    pub provider_type: Option<String>,
    pub model_name: Option<String>,
    pub stream: bool,
    pub status: i32,
    pub latency_ms: i32,
    pub prompt_tokens: Option<i32>,
    pub completion_tokens: Option<i32>,
    pub total_tokens: Option<i32>,
    pub prompt_sha256: Option<String>,
    pub error: Option<String>,
}

impl Row {
    fn of(r: &RequestRecord, instance_id: &str, seq: i64) -> Row {
        let t = r.target.as_ref();
        // The columns are `integer`; an upstream's count can be anything an i64 holds.
        let tokens = |f: fn(&crate::usage::Usage) -> i64| {
            r.usage
                .as_ref()
                .map(|u| f(u).clamp(0, i32::MAX as i64) as i32)
        };
        let created_at_us = r
            .received_at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        Row {
            instance_id: instance_id.to_string(),
            seq,
            created_at_us,
            endpoint: r.endpoint.as_str().to_string(),
            agent_id: r.agent_id.clone(),
            profile_name: t.map(|t| t.profile_name.clone()),
            provider_type: t.map(|t| t.provider_type.clone()),
            model_name: t.map(|t| t.model_name.clone()),
            stream: r.stream,
            status: i32::from(r.status),
            latency_ms: r.latency_ms,
            prompt_tokens: tokens(|u| u.prompt_tokens),
            completion_tokens: tokens(|u| u.completion_tokens),
            total_tokens: tokens(crate::usage::Usage::total_tokens),
            prompt_sha256: r.prompt_sha256.clone(),
            error: r.error.as_deref().map(crate::audit::short_error),
        }
    }
}

/// The segment being appended to.
struct Active {
    file: Arc<File>,
    id: u64,
    len: u64,
}

/// Figures shared by the workers (appending) and the writer (shipping).
#[derive(Default)]
struct Counters {
    /// Rows appended (or found at startup) and not yet confirmed by the database.
    backlog_rows: AtomicU64,
    /// Bytes of those rows: what `AUDIT_JOURNAL_MAX_BYTES` bounds.
    backlog_bytes: AtomicU64,
    /// Rows the database took, since startup.
    written_rows: AtomicU64,
    /// Length of the active segment up to its last whole line, for the writer to read.
    active_len: AtomicU64,
    active_id: AtomicU64,
}

pub struct Journal {
    dir: PathBuf,
    instance_id: String,
    next_seq: AtomicU64,
    max_bytes: u64,
    active: Mutex<Active>,
    counters: Counters,
    /// Set once an append failed to reach the disk; cleared by the next one that works.
    broken: AtomicBool,
    /// Wakes the writer early (shutdown).
    wake: (Mutex<bool>, Condvar),
    /// Held for the life of the process: the directory's `flock`.
    _lock: File,
}

impl Journal {
    /// Opens (creating it if needed) and locks the directory, and starts a new segment.
    /// Segments left by an earlier run stay, to be shipped first.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Journal, String> {
        let named = |e: io::Error| format!("AUDIT_JOURNAL_DIR {}: {e}", dir.display());
        fs::create_dir_all(dir).map_err(named)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))
            .map_err(named)?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(format!(
                "AUDIT_JOURNAL_DIR {} is in use by another running instance; give each \
                 instance a directory of its own",
                dir.display()
            ));
        }
        let counters = Counters::default();
        let mut last_id = 0;
        for (id, path) in segments(dir).map_err(named)? {
            last_id = last_id.max(id);
            let data = fs::read(&path).map_err(named)?;
            // A torn last line (a crash mid-write) is not a row and is never shipped.
            let whole = data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            let rows = data[..whole].iter().filter(|b| **b == b'\n').count() as u64;
            if rows == 0 {
                // An earlier run's segment that never got a whole row.
                let _ = fs::remove_file(&path);
                continue;
            }
            counters.backlog_rows.fetch_add(rows, Ordering::Relaxed);
            counters
                .backlog_bytes
                .fetch_add(whole as u64, Ordering::Relaxed);
        }
        let id = last_id + 1;
        let file = create_segment(dir, id).map_err(named)?;
        counters.active_id.store(id, Ordering::Relaxed);
        Ok(Journal {
            dir: dir.to_path_buf(),
            instance_id: new_instance_id(),
            next_seq: AtomicU64::new(1),
            max_bytes,
            active: Mutex::new(Active {
                file: Arc::new(file),
                id,
                len: 0,
            }),
            counters,
            broken: AtomicBool::new(false),
            wake: (Mutex::new(false), Condvar::new()),
            _lock: lock,
        })
    }

    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// Rows not yet in the database.
    pub fn backlog(&self) -> u64 {
        self.counters.backlog_rows.load(Ordering::Relaxed)
    }

    /// Rows this instance wrote to the database since it started.
    pub fn written(&self) -> u64 {
        self.counters.written_rows.load(Ordering::Relaxed)
    }

    /// Whether proxied requests must be refused: the journal holds `AUDIT_JOURNAL_MAX_BYTES`
    /// of rows that have not reached the database.
    pub fn is_full(&self) -> bool {
        self.counters.backlog_bytes.load(Ordering::Relaxed) >= self.max_bytes
    }

    /// A 503 `audit_journal_full` while the journal is full: nothing is proxied without a
    /// row.
    pub fn check_room(&self) -> Result<(), ApiError> {
        if self.is_full() {
            return Err(ApiError::Unavailable {
                code: "audit_journal_full",
                message: "the audit journal is full while the database is unavailable; \
                          requests are refused until it drains"
                    .into(),
            });
        }
        if self.broken.load(Ordering::Relaxed) {
            return Err(journal_unwritable());
        }
        Ok(())
    }

    /// Appends one row. Called on the request's path before the answer's last byte is sent;
    /// it touches only the disk, never the database.
    pub fn append(&self, record: &RequestRecord) -> Result<(), ApiError> {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed) as i64;
        let mut line = serde_json::to_vec(&Row::of(record, &self.instance_id, seq))
            .map_err(|e| ApiError::Internal(format!("audit row not serializable: {e}")))?;
        line.push(b'\n');
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        // One write per line: a crash leaves whole lines and at most one torn last line.
        if let Err(e) = (&*active.file).write_all(&line) {
            drop(active);
            if !self.broken.swap(true, Ordering::Relaxed) {
                crate::error!("the audit journal cannot be written: {e}");
            }
            return Err(journal_unwritable());
        }
        active.len += line.len() as u64;
        self.counters
            .active_len
            .store(active.len, Ordering::Release);
        self.counters.backlog_rows.fetch_add(1, Ordering::Relaxed);
        self.counters
            .backlog_bytes
            .fetch_add(line.len() as u64, Ordering::Relaxed);
        if active.len >= SEGMENT_BYTES {
            self.rotate(&mut active);
        }
        self.broken.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// Starts the next segment; the full one is synced and left for the writer.
    fn rotate(&self, active: &mut Active) {
        let id = active.id + 1;
        match create_segment(&self.dir, id) {
            Ok(file) => {
                let _ = active.file.sync_data();
                *active = Active {
                    file: Arc::new(file),
                    id,
                    len: 0,
                };
                // The writer reads a segment up to `active_len` only while it is the active
                // one; the id goes first so it never reads an old length for the new file.
                self.counters.active_id.store(id, Ordering::Release);
                self.counters.active_len.store(0, Ordering::Release);
            }
            // The current segment simply grows; the next append tries again.
            Err(e) => crate::warn!("the audit journal could not start a new segment: {e}"),
        }
    }

    /// Starts the thread that ships rows to the database through a connection of its own.
    pub fn spawn_writer(
        self: &Arc<Self>,
        pg: crate::db::Database,
        health: Arc<DbHealth>,
    ) -> io::Result<thread::JoinHandle<()>> {
        let journal = self.clone();
        thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || Writer::new(journal, pg, health).run())
    }

    /// Waits until every row is in the database, or `deadline`; returns whether they all
    /// are. What is left stays in the journal for the next start.
    pub fn drain(&self, deadline: Instant) -> bool {
        self.nudge();
        while self.backlog() > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.sync();
        self.backlog() == 0
    }

    fn nudge(&self) {
        let (flag, cv) = &self.wake;
        *flag.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_one();
    }

    /// Makes every appended row durable.
    fn sync(&self) -> io::Result<()> {
        // Synced outside the lock, so appends do not wait for the disk.
        let file = self
            .active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .file
            .clone();
        file.sync_data()
    }
}

fn journal_unwritable() -> ApiError {
    ApiError::Unavailable {
        code: "audit_journal_unavailable",
        message: "the audit journal cannot be written; requests are refused until it can".into(),
    }
}

/// `<dir>/<id>.jsonl`, ids in order.
fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016}.jsonl"))
}

fn create_segment(dir: &Path, id: u64) -> io::Result<File> {
    OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(segment_path(dir, id))
}

/// The segment files of `dir`, oldest first.
fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let id = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".jsonl"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(id) = id {
            found.push((id, path));
        }
    }
    found.sort();
    Ok(found)
}

/// This run's name in `audit_requests.instance_id`: the host, and random bits so that two
/// runs (or a restart) never share a name, whatever their `seq`.
fn new_instance_id() -> String {
    let mut bytes = [0u8; 6];
    if File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_err()
    {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        bytes.copy_from_slice(&(nanos as u64 ^ u64::from(std::process::id())).to_le_bytes()[..6]);
    }
    let host = fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
        .take(48)
        .collect();
    let suffix = crate::crypto::hex(&bytes);
    if host.is_empty() {
        suffix
    } else {
        format!("{host}-{suffix}")
    }
}

/// The writer thread: reads segments in order from where it last confirmed and inserts
/// their rows, idempotently.
struct Writer {
    journal: Arc<Journal>,
    pg: crate::db::Database,
    health: Arc<DbHealth>,
    client: Option<postgres::Client>,
    /// How far each segment has been confirmed, in bytes.
    shipped: HashMap<u64, u64>,
    last_sync: Instant,
    retry_at: Instant,
    backoff: Duration,
}

impl Writer {
    fn new(journal: Arc<Journal>, pg: crate::db::Database, health: Arc<DbHealth>) -> Writer {
        Writer {
            journal,
            pg,
            health,
            client: None,
            shipped: HashMap::new(),
            last_sync: Instant::now(),
            retry_at: Instant::now(),
            backoff: Duration::from_millis(50),
        }
    }

    fn run(mut self) {
        loop {
            self.wait();
            if self.last_sync.elapsed() >= SYNC_EVERY {
                if let Err(e) = self.journal.sync() {
                    crate::warn!("the audit journal could not be synced to disk: {e}");
                }
                self.last_sync = Instant::now();
            }
            if Instant::now() < self.retry_at {
                continue;
            }
            match self.ship_all() {
                Ok(()) => self.backoff = Duration::from_millis(50),
                Err(e) => {
                    crate::debug!("audit rows wait in the journal: {e}");
                    self.client = None;
                    self.retry_at = Instant::now() + self.backoff;
                    self.backoff = (self.backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Sleeps one tick, or less when woken.
    fn wait(&self) {
        let (flag, cv) = &self.journal.wake;
        let guard = flag.lock().unwrap_or_else(|p| p.into_inner());
        let (mut woken, _) = cv
            .wait_timeout_while(guard, TICK, |w| !*w)
            .unwrap_or_else(|p| p.into_inner());
        *woken = false;
    }

    fn ship_all(&mut self) -> Result<(), String> {
        if self.journal.backlog() == 0 {
            return Ok(());
        }
        let dir = self.journal.dir.clone();
        for (id, path) in segments(&dir).map_err(|e| e.to_string())? {
            // The active segment is read only up to its last whole line.
            let active_id = self.journal.counters.active_id.load(Ordering::Acquire);
            let limit = if id == active_id {
                Some(self.journal.counters.active_len.load(Ordering::Acquire))
            } else {
                None
            };
            let from = self.shipped.get(&id).copied().unwrap_or(0);
            let end = self.ship_segment(&path, from, limit)?;
            if id < active_id {
                let _ = fs::remove_file(&path);
                self.shipped.remove(&id);
            } else {
                self.shipped.insert(id, end);
            }
        }
        Ok(())
    }

    /// Ships the whole lines of `path` from byte `from` (up to `limit`); returns where it
    /// stopped.
    fn ship_segment(&mut self, path: &Path, from: u64, limit: Option<u64>) -> Result<u64, String> {
        let mut file = File::open(path).map_err(|e| e.to_string())?;
        let len = file.metadata().map_err(|e| e.to_string())?.len();
        let end = limit.map_or(len, |l| l.min(len));
        if end <= from {
            return Ok(from);
        }
        file.seek(SeekFrom::Start(from))
            .map_err(|e| e.to_string())?;
        let mut data = Vec::with_capacity((end - from) as usize);
        file.take(end - from)
            .read_to_end(&mut data)
            .map_err(|e| e.to_string())?;
        // A torn last line (a crash mid-write) has no newline and is never shipped.
        let whole = data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let mut offset = from;
        let mut batch = Vec::new();
        let mut batch_bytes = 0u64;
        let mut lines = 0u64;
        for line in data[..whole].split_inclusive(|b| *b == b'\n') {
            lines += 1;
            batch_bytes += line.len() as u64;
            match serde_json::from_slice::<Row>(line) {
                Ok(row) => batch.push(row),
                Err(e) => crate::warn!("skipping an unreadable audit journal line: {e}"),
            }
            if lines as usize >= BATCH_ROWS {
                self.insert(&batch)?;
                self.confirm(lines, batch_bytes);
                offset += batch_bytes;
                (batch, batch_bytes, lines) = (Vec::new(), 0, 0);
            }
        }
        if lines > 0 {
            self.insert(&batch)?;
            self.confirm(lines, batch_bytes);
            offset += batch_bytes;
        }
        Ok(offset)
    }

    fn confirm(&self, lines: u64, bytes: u64) {
        let c = &self.journal.counters;
        c.backlog_rows.fetch_sub(lines, Ordering::Relaxed);
        c.backlog_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    fn insert(&mut self, rows: &[Row]) -> Result<(), String> {
        if rows.is_empty() {
            return Ok(());
        }
        if self.client.is_none() {
            let client = crate::db::connect(&self.pg).map_err(|e| e.to_string())?;
            self.client = Some(client);
        }
        let client = self.client.as_mut().expect("connected above");
        let written = write_batch(client, rows).map_err(|e| self.lost(e))?;
        self.journal
            .counters
            .written_rows
            .fetch_add(written, Ordering::Relaxed);
        self.health.set(true);
        Ok(())
    }

    /// The connection failed: the database counts as down until a connection works again.
    fn lost(&mut self, e: postgres::Error) -> String {
        self.health.set(false);
        self.client = None;
        describe(&e)
    }
}

/// Writes a batch of rows, each exactly once; returns how many were new. An error means the
/// rows could not be written now (the connection, the server): they stay in the journal.
fn write_batch(client: &mut postgres::Client, rows: &[Row]) -> Result<u64, postgres::Error> {
    // A plain insert first: ON CONFLICT's speculative insertion costs the database about a
    // fifth more per row, and rows already in the table are rare (a replay after a crash, or
    // a batch whose commit reply was lost). Only then is the batch sent again, skipping them.
    let result = match insert_rows(client, rows, Existing::Fail) {
        Err(e) if is_replay(&e) => insert_rows(client, rows, Existing::Skip),
        other => other,
    };
    match result {
        // A batch the database refuses as data (never expected: every row is made by this
        // binary) must not block the journal for good: the rows go one by one and the ones
        // refused are logged and dropped.
        Err(e) if refuses_the_data(&e) => {
            crate::error!(
                "an audit batch was refused ({}); retrying its rows one by one",
                describe(&e)
            );
            let mut written = 0;
            for row in rows {
                match insert_rows(client, std::slice::from_ref(row), Existing::Skip) {
                    Ok(n) => written += n,
                    Err(e) if refuses_the_data(&e) => crate::error!(
                        "audit row {}/{} dropped, the database refused it: {}",
                        row.instance_id,
                        row.seq,
                        describe(&e)
                    ),
                    Err(e) => return Err(e),
                }
            }
            Ok(written)
        }
        other => other,
    }
}

/// The server's own words for an error (`postgres::Error` shows only "db error"): its
/// SQLSTATE and message, never the row it was about.
fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// Whether the database refused the rows themselves (a data exception or a violated
/// constraint, SQLSTATE classes 22 and 23), as opposed to failing around them: a server
/// shutting down (57P01, sent as an error on the way out), a lost connection, a missing table,
/// no disk. Only the former may cost rows; after the others the rows wait in the journal.
fn refuses_the_data(e: &postgres::Error) -> bool {
    e.as_db_error()
        .is_some_and(|db| matches!(&db.code().code()[..2], "22" | "23"))
}

/// What an insert does with a row already in the table (the same `instance_id` and `seq`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Existing {
    /// The statement fails with a unique violation ([`is_replay`]), and writes nothing.
    Fail,
    /// The row is skipped; the others are written.
    Skip,
}

/// Whether an insert failed because one of its rows is already in the table.
fn is_replay(e: &postgres::Error) -> bool {
    e.as_db_error().is_some_and(|db| {
        *db.code() == postgres::error::SqlState::UNIQUE_VIOLATION
            && db.constraint() == Some("audit_requests_instance_seq_key")
    })
}

/// One multi-row insert. Returns how many rows were new.
fn insert_rows(
    client: &mut postgres::Client,
    rows: &[Row],
    existing: Existing,
) -> Result<u64, postgres::Error> {
    fn col<T: Clone>(rows: &[Row], f: impl Fn(&Row) -> T) -> Vec<T> {
        rows.iter().map(f).collect()
    }
    use postgres::types::Type;
    const INSERT: &str = "INSERT INTO audit_requests (instance_id, seq, created_at, endpoint,
             agent_id, profile_name, provider_type, model_name, stream, status, latency_ms,
             prompt_tokens, completion_tokens, total_tokens, prompt_sha256, error)
         SELECT i, s, timestamptz 'epoch' + c * interval '1 microsecond', e, a, p, pt, m, st,
                sc, l, pr, co, t, h, er
         FROM unnest($1::text[], $2::int8[], $3::int8[], $4::text[], $5::text[], $6::text[],
                     $7::text[], $8::text[], $9::bool[], $10::int4[], $11::int4[], $12::int4[],
                     $13::int4[], $14::int4[], $15::text[], $16::text[])
              AS u(i, s, c, e, a, p, pt, m, st, sc, l, pr, co, t, h, er)";
    let sql = match existing {
        Existing::Fail => INSERT.to_string(),
        Existing::Skip => format!("{INSERT} ON CONFLICT (instance_id, seq) DO NOTHING"),
    };
    // Typed parameters: one round trip per batch, no statement to prepare first.
    client.execute_typed(
        &sql,
        &[
            (&col(rows, |r| r.instance_id.clone()), Type::TEXT_ARRAY),
            (&col(rows, |r| r.seq), Type::INT8_ARRAY),
            (&col(rows, |r| r.created_at_us), Type::INT8_ARRAY),
            (&col(rows, |r| r.endpoint.clone()), Type::TEXT_ARRAY),
            (&col(rows, |r| r.agent_id.clone()), Type::TEXT_ARRAY),
            (&col(rows, |r| r.profile_name.clone()), Type::TEXT_ARRAY),
            (&col(rows, |r| r.provider_type.clone()), Type::TEXT_ARRAY),
            (&col(rows, |r| r.model_name.clone()), Type::TEXT_ARRAY),
            (&col(rows, |r| r.stream), Type::BOOL_ARRAY),
            (&col(rows, |r| r.status), Type::INT4_ARRAY),
            (&col(rows, |r| r.latency_ms), Type::INT4_ARRAY),
            (&col(rows, |r| r.prompt_tokens), Type::INT4_ARRAY),
            (&col(rows, |r| r.completion_tokens), Type::INT4_ARRAY),
            (&col(rows, |r| r.total_tokens), Type::INT4_ARRAY),
            (&col(rows, |r| r.prompt_sha256.clone()), Type::TEXT_ARRAY),
            (&col(rows, |r| r.error.clone()), Type::TEXT_ARRAY),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Errors from the test server: only the ones about the rows themselves count as a
    /// refusal of the data (and may cost rows); a server shutting down or out of disk does not.
    #[test]
    fn only_data_errors_count_as_refused_rows() {
        let url = std::env::var("DATABASE_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_string());
        let mut client = postgres::Client::connect(&url, postgres::NoTls).expect("the test server");
        let mut error = |sql: &str| client.batch_execute(sql).expect_err(sql);
        // What Postgres sends with the code given, as the server itself would (a fast
        // shutdown sends 57P01 to every connection; 53100 is a full disk).
        let raised = |code: &str| {
            format!("DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '{code}'; END $$")
        };
        for (sql, refused) in [
            ("SELECT 1 / 0".to_string(), true),
            (
                "CREATE TEMP TABLE t (x int CHECK (x > 0)); INSERT INTO t VALUES (-1)".to_string(),
                true,
            ),
            ("SELECT * FROM no_such_table_here".to_string(), false),
            (raised("57P01"), false),
            (raised("53100"), false),
        ] {
            let e = error(&sql);
            assert!(e.as_db_error().is_some(), "{sql}: {e}");
            assert_eq!(refuses_the_data(&e), refused, "{sql}: {e}");
        }
    }

    /// A batch is written once however often it is shipped, and a batch partly in the table
    /// (a replay) writes the rest; a row the database refuses costs only itself.
    #[test]
    fn batches_write_each_row_exactly_once() {
        let url = std::env::var("DATABASE_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_string());
        let mut client = postgres::Client::connect(&url, postgres::NoTls).expect("the test server");
        // A temporary table of the same name shadows any real one for this connection only.
        client
            .batch_execute(
                "CREATE TEMP TABLE audit_requests (
                     instance_id text, seq int8, created_at timestamptz, endpoint text,
                     agent_id text, profile_name text, provider_type text, model_name text,
                     stream bool, status int4 CHECK (status > 0), latency_ms int4,
                     prompt_tokens int4, completion_tokens int4, total_tokens int4,
                     prompt_sha256 text, error text,
                     CONSTRAINT audit_requests_instance_seq_key UNIQUE (instance_id, seq))",
            )
            .unwrap();
        let row = |seq: i64, status: i32| Row {
            seq,
            status,
            ..Row::of(&record("a"), "unit", 0)
        };
        let batch: Vec<Row> = (1..=3).map(|seq| row(seq, 200)).collect();
        assert_eq!(write_batch(&mut client, &batch).unwrap(), 3);
        assert_eq!(
            write_batch(&mut client, &batch).unwrap(),
            0,
            "shipped again"
        );
        let overlapping: Vec<Row> = (2..=5).map(|seq| row(seq, 200)).collect();
        assert_eq!(
            write_batch(&mut client, &overlapping).unwrap(),
            2,
            "a replay"
        );
        let one_refused = vec![row(6, 200), row(7, -1), row(8, 200)];
        assert_eq!(write_batch(&mut client, &one_refused).unwrap(), 2);
        let seqs: Vec<i64> = client
            .query("SELECT seq FROM audit_requests ORDER BY seq", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5, 6, 8]);
    }

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "switcher-journal-unit-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn record(agent: &str) -> RequestRecord {
        RequestRecord {
            agent_id: agent.into(),
            status: 200,
            ..RequestRecord::default()
        }
    }

    #[test]
    fn a_second_journal_on_the_same_directory_is_refused_naming_it() {
        let d = dir();
        let _first = Journal::open(&d, 1 << 20).unwrap();
        let e = Journal::open(&d, 1 << 20).err().unwrap();
        assert!(
            e.contains(&d.display().to_string()) && e.contains("another"),
            "{e}"
        );
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn appended_rows_are_whole_lines_and_count_in_the_backlog() {
        let d = dir();
        let j = Journal::open(&d, 1 << 20).unwrap();
        j.append(&record("a")).unwrap();
        j.append(&record("b")).unwrap();
        assert_eq!(j.backlog(), 2);
        let (_, path) = segments(&d).unwrap().pop().unwrap();
        let text = fs::read_to_string(path).unwrap();
        let rows: Vec<Row> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].seq, rows[1].seq), (1, 2));
        assert_eq!(rows[1].agent_id, "b");
        assert_eq!(rows[0].instance_id, j.instance_id());
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn rows_left_by_an_earlier_run_count_after_a_restart() {
        let d = dir();
        {
            let j = Journal::open(&d, 1 << 20).unwrap();
            for _ in 0..3 {
                j.append(&record("a")).unwrap();
            }
        }
        let j = Journal::open(&d, 1 << 20).unwrap();
        assert_eq!(j.backlog(), 3);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_full_journal_refuses_with_503_audit_journal_full() {
        let d = dir();
        let j = Journal::open(&d, 10).unwrap();
        assert!(j.check_room().is_ok());
        j.append(&record("a")).unwrap();
        let e = j.check_room().unwrap_err();
        assert_eq!(e.status(), 503);
        assert_eq!(e.code(), "audit_journal_full");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn segments_without_a_whole_row_are_removed_at_the_next_start() {
        let d = dir();
        drop(Journal::open(&d, 1 << 20).unwrap());
        let _j = Journal::open(&d, 1 << 20).unwrap();
        assert_eq!(segments(&d).unwrap().len(), 1, "only the new, active one");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn instance_ids_differ_between_runs() {
        assert_ne!(new_instance_id(), new_instance_id());
    }
}
