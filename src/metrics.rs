//! Lock-free counters and histograms, and their Prometheus text exposition (format 0.0.4).
//!
//! Every series is made before a request needs it: one per route of the OpenAPI document
//! (and `other`) when the app starts, one per (profile, model) when a routing state is
//! loaded. A request only finds its series and adds to atomics, so no lock is taken on the
//! hot path, and no label value ever comes from what a client sent.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::provider::ProviderType;

/// Bucket bounds in seconds: from a tenth of a millisecond (the service's own overhead) to
/// two minutes (a long generation upstream).
pub const BUCKETS: [f64; 19] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 120.0,
];

/// The same bounds in nanoseconds, compared on the hot path.
const BUCKET_NANOS: [u64; 19] = {
    let mut out = [0u64; 19];
    let mut i = 0;
    while i < BUCKETS.len() {
        out[i] = (BUCKETS[i] * 1e9) as u64;
        i += 1;
    }
    out
};

/// A histogram with the fixed `BUCKETS`.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per bucket, not cumulative; the last one is `+Inf`.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BUCKET_NANOS.partition_point(|&bound| bound < nanos);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Appends `name_bucket`, `name_sum` and `name_count` lines; `labels` is `k="v",` pairs
    /// (each followed by a comma) or empty.
    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let le = BUCKETS.get(i).map_or("+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{le}\"}} {cumulative}");
        }
        let bare = labels.trim_end_matches(',');
        let braces = if bare.is_empty() {
            String::new()
        } else {
            format!("{{{bare}}}")
        };
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// One counter per HTTP status code 100–599 (anything outside counts as 599).
#[derive(Debug)]
pub struct ByStatus(Box<[AtomicU64]>);

impl Default for ByStatus {
    fn default() -> ByStatus {
        ByStatus((100..600).map(|_| AtomicU64::new(0)).collect())
    }
}

impl ByStatus {
    pub fn add(&self, status: u16) {
        let i = usize::from(status.clamp(100, 599) - 100);
        self.0[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The statuses seen so far, with their counts.
    fn seen(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        self.0
            .iter()
            .enumerate()
            .map(|(i, c)| (i as u16 + 100, c.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
    }

    pub fn get(&self, status: u16) -> u64 {
        self.0[usize::from(status.clamp(100, 599) - 100)].load(Ordering::Relaxed)
    }
}

/// The series of one route template.
#[derive(Debug, Default)]
struct RouteSeries {
    requests: ByStatus,
    duration: Histogram,
}

/// The series of one (profile, model): what was asked of that upstream model.
#[derive(Debug)]
pub struct ModelSeries {
    pub profile: String,
    pub model: String,
    pub provider_type: ProviderType,
    requests: ByStatus,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
}

/// Model series by (profile, model, provider type), kept by the routing state: made or found
/// when a state is loaded (never on a request's path), and kept after a model goes, so
/// that its counters never go back.
#[derive(Debug, Default)]
pub struct ModelRegistry {
    series: Mutex<HashMap<(String, String, ProviderType), Arc<ModelSeries>>>,
}

impl ModelRegistry {
    pub fn series(
        &self,
        profile: &str,
        model: &str,
        provider_type: ProviderType,
    ) -> Arc<ModelSeries> {
        let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        series
            .entry((profile.to_string(), model.to_string(), provider_type))
            .or_insert_with(|| {
                Arc::new(ModelSeries {
                    profile: profile.to_string(),
                    model: model.to_string(),
                    provider_type,
                    requests: ByStatus::default(),
                    prompt_tokens: AtomicU64::new(0),
                    completion_tokens: AtomicU64::new(0),
                })
            })
            .clone()
    }

    fn all(&self) -> Vec<Arc<ModelSeries>> {
        let series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<_> = series.values().cloned().collect();
        all.sort_by(|a, b| (&a.profile, &a.model).cmp(&(&b.profile, &b.model)));
        all
    }
}

const PROVIDER_TYPES: [ProviderType; 3] = [
    ProviderType::OpenAi,
    ProviderType::Anthropic,
    ProviderType::OpenAiCompatible,
];

fn provider_index(t: ProviderType) -> usize {
    match t {
        ProviderType::OpenAi => 0,
        ProviderType::Anthropic => 1,
        ProviderType::OpenAiCompatible => 2,
    }
}

/// The counters of one app (one per process in production; one per test server in tests).
#[derive(Debug)]
pub struct Metrics {
    /// Route templates, in the order of `routes`; the last series is `other`.
    templates: Vec<&'static str>,
    routes: Vec<RouteSeries>,
    upstream_duration: [Histogram; 3],
    overhead: Histogram,
    unauthorized: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new(crate::openapi::templates())
    }
}

/// The figures `/metrics` shows besides the counters kept here, read when it is scraped.
pub struct Gauges<'a> {
    pub connections_open: u64,
    pub connections_refused: u64,
    pub audit_backlog_rows: u64,
    pub audit_rows_written: u64,
    pub db_up: bool,
    pub state_reloads: u64,
    pub models: &'a ModelRegistry,
}

impl Metrics {
    pub fn new(templates: Vec<&'static str>) -> Metrics {
        let routes = (0..=templates.len())
            .map(|_| RouteSeries::default())
            .collect();
        Metrics {
            templates,
            routes,
            upstream_duration: Default::default(),
            overhead: Histogram::default(),
            unauthorized: AtomicU64::new(0),
        }
    }

    /// The route template a raw request path falls under, as its index (`other` is last).
    pub fn route_index(&self, raw_path: &str) -> usize {
        crate::openapi::match_template(&self.templates, raw_path).unwrap_or(self.templates.len())
    }

    pub fn route_name(&self, index: usize) -> &'static str {
        self.templates.get(index).copied().unwrap_or("other")
    }

    /// One answered request: its route, status and how long it took.
    pub fn request(&self, route: usize, status: u16, took: Duration) {
        let series = &self.routes[route.min(self.routes.len() - 1)];
        series.requests.add(status);
        series.duration.observe(took);
    }

    /// Requests of a route template with that status so far (for tests and checks).
    pub fn requests(&self, template: &str, status: u16) -> u64 {
        let i = self
            .templates
            .iter()
            .position(|t| *t == template)
            .unwrap_or(self.templates.len());
        self.routes[i].requests.get(status)
    }

    pub fn unauthorized(&self) {
        self.unauthorized.fetch_add(1, Ordering::Relaxed);
    }

    /// A request that reached an upstream: what it answered, how long the upstream took,
    /// how long the service itself took, and the tokens used when known.
    pub fn exchange(&self, done: &Exchange, total: Duration) {
        let Some(series) = &done.series else {
            return;
        };
        if let Some(status) = done.upstream_status {
            series.requests.add(status);
            self.upstream_duration[provider_index(series.provider_type)].observe(done.upstream);
            self.overhead.observe(total.saturating_sub(done.upstream));
        }
        if let Some((prompt, completion)) = done.tokens {
            series.prompt_tokens.fetch_add(prompt, Ordering::Relaxed);
            series
                .completion_tokens
                .fetch_add(completion, Ordering::Relaxed);
        }
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self, gauges: &Gauges<'_>) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let help = |out: &mut String, name: &str, kind: &str, text: &str| {
            let _ = writeln!(out, "# HELP {name} {text}\n# TYPE {name} {kind}");
        };

        help(
            &mut out,
            "switcher_http_requests_total",
            "counter",
            "Requests answered, by route template and status code.",
        );
        for (i, series) in self.routes.iter().enumerate() {
            let route = self.route_name(i);
            for (status, n) in series.requests.seen() {
                let _ = writeln!(
                    out,
                    "switcher_http_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
                    escape(route)
                );
            }
        }
        help(
            &mut out,
            "switcher_http_request_duration_seconds",
            "histogram",
            "Time from a request's arrival to the last byte of its answer, by route template.",
        );
        for (i, series) in self.routes.iter().enumerate() {
            if series.duration.count() > 0 {
                let labels = format!("route=\"{}\",", escape(self.route_name(i)));
                series
                    .duration
                    .write(&mut out, "switcher_http_request_duration_seconds", &labels);
            }
        }

        let models = gauges.models.all();
        help(
            &mut out,
            "switcher_upstream_requests_total",
            "counter",
            "Upstream calls, by profile, model, provider type and the status they ended with \
             (502/504 when the upstream could not be reached or timed out).",
        );
        for m in &models {
            for (status, n) in m.requests.seen() {
                let _ = writeln!(
                    out,
                    "switcher_upstream_requests_total{{profile=\"{}\",model=\"{}\",provider_type=\"{}\",status=\"{status}\"}} {n}",
                    escape(&m.profile),
                    escape(&m.model),
                    m.provider_type.as_str()
                );
            }
        }
        help(
            &mut out,
            "switcher_upstream_duration_seconds",
            "histogram",
            "Time spent waiting on upstreams (a stream's whole reading included), by provider type.",
        );
        for t in PROVIDER_TYPES {
            let labels = format!("provider_type=\"{}\",", t.as_str());
            self.upstream_duration[provider_index(t)].write(
                &mut out,
                "switcher_upstream_duration_seconds",
                &labels,
            );
        }
        help(
            &mut out,
            "switcher_overhead_seconds",
            "histogram",
            "Time a proxied request spent in the service itself: its whole duration minus \
             the time spent waiting on the upstream.",
        );
        self.overhead
            .write(&mut out, "switcher_overhead_seconds", "");
        help(
            &mut out,
            "switcher_tokens_total",
            "counter",
            "Tokens the upstreams reported, by profile, model and kind (prompt or completion).",
        );
        for m in &models {
            for (kind, n) in [
                ("prompt", m.prompt_tokens.load(Ordering::Relaxed)),
                ("completion", m.completion_tokens.load(Ordering::Relaxed)),
            ] {
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "switcher_tokens_total{{profile=\"{}\",model=\"{}\",kind=\"{kind}\"}} {n}",
                        escape(&m.profile),
                        escape(&m.model)
                    );
                }
            }
        }

        let simple: [(&str, &str, &str, u64); 8] = [
            (
                "switcher_unauthorized_total",
                "counter",
                "Requests refused for a missing or unknown key (401).",
                self.unauthorized.load(Ordering::Relaxed),
            ),
            (
                "switcher_connections_open",
                "gauge",
                "Client connections open now.",
                gauges.connections_open,
            ),
            (
                "switcher_connections_refused_total",
                "counter",
                "Client connections closed at once because MAX_CONNECTIONS were open.",
                gauges.connections_refused,
            ),
            (
                "switcher_audit_backlog_rows",
                "gauge",
                "Audit rows in the journal, not yet in the database.",
                gauges.audit_backlog_rows,
            ),
            (
                "switcher_audit_rows_written_total",
                "counter",
                "Audit rows written to the database by this instance.",
                gauges.audit_rows_written,
            ),
            (
                "switcher_db_up",
                "gauge",
                "1 when this instance can reach its database, else 0.",
                u64::from(gauges.db_up),
            ),
            (
                "switcher_state_reloads_total",
                "counter",
                "Routing state loads applied since this instance started.",
                gauges.state_reloads,
            ),
            (
                "switcher_info",
                "gauge",
                "Always 1; the version is in its label.",
                1,
            ),
        ];
        for (name, kind, text, value) in simple {
            help(&mut out, name, kind, text);
            if name == "switcher_info" {
                let _ = writeln!(
                    out,
                    "{name}{{version=\"{}\"}} {value}",
                    env!("CARGO_PKG_VERSION")
                );
            } else {
                let _ = writeln!(out, "{name} {value}");
            }
        }
        out
    }
}

/// A label value as the text format wants it: backslash, quote and newline escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// What one request did beyond its route and status: the agent it spoke for, the model it
/// went to, the upstream's part. Noted by the proxy as it goes, on the worker's thread (a
/// worker serves one request at a time, a streamed answer included), and taken by the
/// server when the request is over, for its log line and its metrics.
#[derive(Debug, Default, Clone)]
pub struct Exchange {
    pub agent: Option<String>,
    pub series: Option<Arc<ModelSeries>>,
    /// The status the last upstream call ended with (ours when it could not be made).
    pub upstream_status: Option<u16>,
    /// Time spent waiting on the upstream: calls, and reads of a streamed answer.
    pub upstream: Duration,
    pub tokens: Option<(u64, u64)>,
}

thread_local! {
    static CURRENT: RefCell<Exchange> = RefCell::new(Exchange::default());
}

/// Starts a fresh exchange on this thread (the server calls it as a request arrives).
pub fn begin() {
    CURRENT.with(|c| *c.borrow_mut() = Exchange::default());
}

/// Ends this thread's exchange and returns it.
pub fn finish() -> Exchange {
    CURRENT.with(|c| std::mem::take(&mut *c.borrow_mut()))
}

pub fn note_agent(agent: &str) {
    CURRENT.with(|c| c.borrow_mut().agent = Some(agent.to_string()));
}

pub fn note_series(series: Arc<ModelSeries>) {
    CURRENT.with(|c| c.borrow_mut().series = Some(series));
}

/// An upstream call ended (`status`) after `took`.
pub fn note_upstream(status: u16, took: Duration) {
    CURRENT.with(|c| {
        let mut c = c.borrow_mut();
        c.upstream_status = Some(status);
        c.upstream += took;
    });
}

/// More time spent waiting on an upstream (reading a stream).
pub fn note_upstream_wait(took: Duration) {
    CURRENT.with(|c| c.borrow_mut().upstream += took);
}

pub fn note_tokens(prompt: u64, completion: u64) {
    CURRENT.with(|c| c.borrow_mut().tokens = Some((prompt, completion)));
}

/// A reader whose reads count as time waiting on the upstream.
pub struct TimedRead<R>(pub R);

impl<R: std::io::Read> std::io::Read for TimedRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let started = std::time::Instant::now();
        let result = self.0.read(buf);
        note_upstream_wait(started.elapsed());
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(500));
        let mut out = String::new();
        h.write(&mut out, "x", "");
        assert!(out.contains("x_bucket{le=\"0.0001\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.0025\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.005\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"120\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_count 4\n"), "{out}");
        assert!(out.contains("x_sum 500.00315\n"), "{out}");
    }

    #[test]
    fn statuses_outside_the_http_range_are_clamped() {
        let s = ByStatus::default();
        s.add(0);
        s.add(200);
        s.add(1000);
        assert_eq!(
            s.seen().collect::<Vec<_>>(),
            vec![(100, 1), (200, 1), (599, 1)]
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn unknown_paths_count_as_other() {
        let m = Metrics::new(vec!["/healthz", "/admin/profiles/{id}"]);
        assert_eq!(
            m.route_name(m.route_index("/admin/profiles/7")),
            "/admin/profiles/{id}"
        );
        assert_eq!(m.route_name(m.route_index("/healthz/")), "/healthz");
        assert_eq!(m.route_name(m.route_index("/random-1234")), "other");
        m.request(m.route_index("/nope"), 404, Duration::ZERO);
        assert_eq!(m.requests("other", 404), 1);
    }
}
