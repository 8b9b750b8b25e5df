//! `/metrics`, `LOG_FORMAT=json` and `/openapi.json`, seen from outside: a strict parser of
//! the Prometheus text format reads what the server exposes after known traffic.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{Answer, FakeUpstream, TestApp, ADMIN_KEY, AGENT_KEY};

/// One sample: metric name and sorted labels.
type Series = (String, BTreeMap<String, String>);

/// A scrape, parsed strictly: every line is a `# HELP`, a `# TYPE` or a sample of a family
/// whose type came first; label values are quoted with the format's escapes; no series is
/// there twice; every histogram's buckets grow and end in `+Inf` equal to its `_count`.
#[derive(Debug)]
struct Scrape {
    samples: HashMap<Series, f64>,
    types: HashMap<String, String>,
}

impl Scrape {
    fn parse(text: &str) -> Result<Scrape, String> {
        let mut samples = HashMap::new();
        let mut types: HashMap<String, String> = HashMap::new();
        let mut helped = BTreeSet::new();
        if !text.ends_with('\n') {
            return Err("the exposition must end with a newline".into());
        }
        for (n, line) in text.lines().enumerate() {
            let at = |e: &str| format!("line {}: {e}: {line:?}", n + 1);
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap_or("");
                check_name(name).map_err(|e| at(&e))?;
                if !helped.insert(name.to_string()) {
                    return Err(at("a second HELP"));
                }
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split(' ');
                let (name, kind) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                check_name(name).map_err(|e| at(&e))?;
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                    return Err(at("unknown type"));
                }
                if parts.next().is_some() || types.insert(name.into(), kind.into()).is_some() {
                    return Err(at("a malformed or second TYPE"));
                }
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                return Err(at("a stray comment or blank line"));
            }
            let (series, value) = parse_sample(line).map_err(|e| at(&e))?;
            let family = family_of(&series.0, &types).ok_or_else(|| at("no TYPE before it"))?;
            if types[&family] == "histogram" && series.0 == format!("{family}_bucket") {
                series
                    .1
                    .get("le")
                    .ok_or_else(|| at("a bucket without le"))?;
            }
            if samples.insert(series, value).is_some() {
                return Err(at("the same series twice"));
            }
        }
        let scrape = Scrape { samples, types };
        scrape.check_histograms()?;
        Ok(scrape)
    }

    fn check_histograms(&self) -> Result<(), String> {
        let mut buckets: BTreeMap<Series, Vec<(f64, f64)>> = BTreeMap::new();
        for ((name, labels), value) in &self.samples {
            if let Some(family) = name.strip_suffix("_bucket") {
                if self.types.get(family).map(String::as_str) == Some("histogram") {
                    let mut rest = labels.clone();
                    let le = rest.remove("le").unwrap();
                    let le: f64 = if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().map_err(|_| format!("le {le:?}"))?
                    };
                    buckets
                        .entry((family.to_string(), rest))
                        .or_default()
                        .push((le, *value));
                }
            }
        }
        for ((family, labels), mut bs) in buckets {
            bs.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
            if bs.windows(2).any(|w| w[1].1 < w[0].1) {
                return Err(format!("{family}{labels:?}: buckets are not cumulative"));
            }
            let last = bs.last().unwrap();
            let count = self
                .samples
                .get(&(format!("{family}_count"), labels.clone()));
            if last.0 != f64::INFINITY || count != Some(&last.1) {
                return Err(format!("{family}{labels:?}: +Inf is not the count"));
            }
            if !self
                .samples
                .contains_key(&(format!("{family}_sum"), labels.clone()))
            {
                return Err(format!("{family}{labels:?}: no _sum"));
            }
        }
        Ok(())
    }

    /// The value of a series; 0 when absent (a counter not yet incremented).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .get(&(name.to_string(), labels))
            .copied()
            .unwrap_or(0.0)
    }

    fn series(&self) -> BTreeSet<Series> {
        self.samples.keys().cloned().collect()
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
        Ok(())
    } else {
        Err(format!("bad metric name {name:?}"))
    }
}

fn family_of(name: &str, types: &HashMap<String, String>) -> Option<String> {
    if types.contains_key(name) {
        return Some(name.to_string());
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let family = name.strip_suffix(suffix)?;
        (types.get(family).map(String::as_str) == Some("histogram")).then(|| family.to_string())
    })
}

fn parse_sample(line: &str) -> Result<(Series, f64), String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    check_name(name)?;
    let mut labels = BTreeMap::new();
    let bytes = line.as_bytes();
    let mut i = name_end;
    if bytes[i] == b'{' {
        i += 1;
        while bytes.get(i) != Some(&b'}') {
            let eq = line[i..].find("=\"").ok_or("a label without =\"")? + i;
            let key = &line[i..eq];
            check_name(key)?;
            let mut value = String::new();
            i = eq + 2;
            loop {
                match bytes.get(i) {
                    None => return Err("unterminated label value".into()),
                    Some(b'"') => break,
                    Some(b'\\') => {
                        value.push(match bytes.get(i + 1) {
                            Some(b'\\') => '\\',
                            Some(b'"') => '"',
                            Some(b'n') => '\n',
                            _ => return Err("a bad escape".into()),
                        });
                        i += 2;
                    }
                    Some(_) => {
                        let c = line[i..].chars().next().unwrap();
                        value.push(c);
                        i += c.len_utf8();
                    }
                }
            }
            if labels.insert(key.to_string(), value).is_some() {
                return Err("a label twice".into());
            }
            i += 1;
            match bytes.get(i) {
                Some(b',') => i += 1,
                Some(b'}') => {}
                _ => return Err("labels must be separated by commas".into()),
            }
        }
        i += 1;
    }
    let value = line[i..]
        .strip_prefix(' ')
        .ok_or("one space before the value")?;
    if value.contains(' ') {
        return Err("a timestamp or trailing text".into());
    }
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().map_err(|_| format!("bad value {v:?}"))?,
    };
    Ok(((name.to_string(), labels), value))
}

fn completion() -> Value {
    json!({
        "id": "chatcmpl-obs", "object": "chat.completion", "created": 1_700_000_000,
        "model": "m", "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
        "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    })
}

fn hello() -> Value {
    json!({"model": "x", "messages": [{"role": "user", "content": "hello"}]})
}

/// An app whose agent `obs` goes to model `m` of profile `p` (openai_compatible), whose
/// upstream answers a chat completion, or a stream when asked for one.
fn app_with_upstream(env: &[(&str, &str)]) -> (TestApp, FakeUpstream) {
    let upstream = FakeUpstream::start(|got| {
        if got.json()["stream"] == json!(true) {
            Answer::Events(
                vec![
                    "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n".into(),
                    "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":4}}\n\n".into(),
                    "data: [DONE]\n\n".into(),
                ],
                Duration::ZERO,
            )
        } else {
            Answer::Json(200, completion())
        }
    });
    let app = TestApp::spawn_with(env);
    app.create_profile("p", "openai_compatible", &upstream.url, "sk-upstream-obs");
    app.add_model("p", "m", json!({}));
    app.switch("obs", "p", "m");
    (app, upstream)
}

fn scrape(app: &TestApp) -> Scrape {
    let r = app.admin("GET", "/metrics").send();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "{:?}",
        r.header("content-type")
    );
    let text = r.text();
    Scrape::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn chat(app: &TestApp, agent: &str, body: &Value) -> u16 {
    app.agent("POST", "/v1/chat/completions")
        .header("x-agent-id", agent)
        .json(body)
        .status
}

#[test]
fn after_known_traffic_the_counters_equal_what_was_sent() {
    let (app, _upstream) = app_with_upstream(&[]);
    for _ in 0..3 {
        assert_eq!(chat(&app, "obs", &hello()), 200);
    }
    let mut streamed = hello();
    streamed["stream"] = json!(true);
    let r = app
        .agent("POST", "/v1/chat/completions")
        .header("x-agent-id", "obs")
        .json(&streamed);
    assert_eq!(r.status, 200);
    assert!(r.text().contains("[DONE]"));
    let unkeyed = app.request("POST", "/v1/chat/completions").json(&hello());
    assert_eq!(unkeyed.status, 401);
    assert_eq!(
        app.request("GET", "/api/agents")
            .key("wrong-key")
            .send()
            .status,
        401
    );
    assert_eq!(chat(&app, "nobody", &hello()), 400);
    for _ in 0..2 {
        assert_eq!(app.request("GET", "/healthz").send().status, 200);
    }
    assert_eq!(app.request("GET", "/no/such/route").send().status, 404);
    assert_eq!(
        app.admin("PATCH", "/admin/profiles/999999")
            .json(&json!({"base_url": "http://127.0.0.1:9/v1"}))
            .status,
        404
    );

    let m = scrape(&app);
    let http = |route: &str, status: &str| {
        m.get(
            "switcher_http_requests_total",
            &[("route", route), ("status", status)],
        )
    };
    assert_eq!(http("/v1/chat/completions", "200"), 4.0);
    assert_eq!(http("/v1/chat/completions", "401"), 1.0);
    assert_eq!(http("/v1/chat/completions", "400"), 1.0);
    assert_eq!(http("/api/agents", "401"), 1.0);
    assert_eq!(http("/healthz", "200"), 2.0);
    assert_eq!(http("other", "404"), 1.0);
    assert_eq!(http("/admin/profiles/{id}", "404"), 1.0);
    // The scrape itself is counted once it is answered.
    assert_eq!(http("/metrics", "200"), 0.0);
    assert_eq!(m.get("switcher_unauthorized_total", &[]), 2.0);
    assert_eq!(
        m.get(
            "switcher_http_request_duration_seconds_count",
            &[("route", "/v1/chat/completions")]
        ),
        6.0
    );
    let target = [
        ("profile", "p"),
        ("model", "m"),
        ("provider_type", "openai_compatible"),
        ("status", "200"),
    ];
    assert_eq!(m.get("switcher_upstream_requests_total", &target), 4.0);
    let tokens = |kind| {
        m.get(
            "switcher_tokens_total",
            &[("profile", "p"), ("model", "m"), ("kind", kind)],
        )
    };
    assert_eq!(tokens("prompt"), 3.0 * 3.0 + 2.0);
    assert_eq!(tokens("completion"), 3.0 * 5.0 + 4.0);
    assert_eq!(
        m.get(
            "switcher_upstream_duration_seconds_count",
            &[("provider_type", "openai_compatible")]
        ),
        4.0
    );
    assert_eq!(m.get("switcher_overhead_seconds_count", &[]), 4.0);
    assert_eq!(m.get("switcher_db_up", &[]), 1.0);
    assert!(m.get("switcher_state_reloads_total", &[]) >= 1.0);
    assert!(m.get("switcher_connections_open", &[]) >= 1.0);
    assert_eq!(m.get("switcher_connections_refused_total", &[]), 0.0);
    assert_eq!(
        m.get("switcher_info", &[("version", env!("CARGO_PKG_VERSION"))]),
        1.0
    );
    for name in [
        "switcher_audit_backlog_rows",
        "switcher_audit_rows_written_total",
    ] {
        assert!(m.types.contains_key(name), "{name} missing");
    }
    // Five audited requests (four answered, one without an active model) reach the table.
    assert!(crate::support::eventually(Duration::from_secs(30), || {
        scrape(&app).get("switcher_audit_rows_written_total", &[]) == 5.0
    }));
    let scraped = scrape(&app).get(
        "switcher_http_requests_total",
        &[("route", "/metrics"), ("status", "200")],
    );
    assert!(scraped >= 1.0, "{scraped}");
}

#[test]
fn metrics_need_the_admin_key_unless_they_are_public() {
    let app = TestApp::spawn();
    let r = app.request("GET", "/metrics").send();
    assert_eq!(r.status, 401);
    assert_eq!(r.header("x-switcher-error"), Some("invalid_api_key"));
    assert_eq!(r.json()["error"]["code"], "invalid_api_key");
    assert_eq!(
        app.request("GET", "/metrics").key(AGENT_KEY).send().status,
        403
    );
    assert_eq!(
        app.request("GET", "/metrics").key(ADMIN_KEY).send().status,
        200
    );
    drop(app);

    let public = TestApp::spawn_with(&[("METRICS_PUBLIC", "true")]);
    let r = public.request("GET", "/metrics").send();
    assert_eq!(r.status, 200);
    Scrape::parse(&r.text()).unwrap();
}

#[test]
fn a_flood_of_random_agents_models_and_paths_adds_no_series() {
    let (app, _upstream) = app_with_upstream(&[]);
    let flood = |round: u32| {
        for i in 0..25 {
            let tag = format!("{round}-{i}-{:x}", i * 7919 + round * 104_729);
            // An agent without a state: 400, and a model name nobody has.
            let mut body = hello();
            body["model"] = json!(format!("model-{tag}"));
            assert_eq!(chat(&app, &format!("agent-{tag}"), &body), 400);
            // The routed agent asking for any model name reaches its own model.
            assert_eq!(chat(&app, "obs", &body), 200);
            let path = format!("/random-{tag}");
            assert_eq!(app.request("GET", &path).send().status, 404);
            let path = format!("/admin/profiles/{tag}");
            assert_eq!(app.admin("DELETE", &path).send().status, 404);
            let r = app
                .request("POST", "/v1/chat/completions")
                .key(&format!("sk-{tag}"))
                .json(&body);
            assert_eq!(r.status, 401);
        }
    };
    flood(0);
    let before = scrape(&app).series();
    flood(1);
    let after = scrape(&app);
    let added: Vec<_> = after.series().difference(&before).cloned().collect();
    // The first scrape is counted after it was answered: its series is the one that may be new.
    let expected: Vec<Series> = added
        .iter()
        .filter(|(_, labels)| labels.get("route").map(String::as_str) != Some("/metrics"))
        .cloned()
        .collect();
    assert!(expected.is_empty(), "new series: {expected:?}");
    let text = app.admin("GET", "/metrics").send().text();
    assert!(
        !text.contains("agent-1-") && !text.contains("model-1-"),
        "{text}"
    );
}

#[test]
fn json_logs_are_one_object_a_line_with_the_request_fields_and_no_secrets() {
    let (app, _upstream) = app_with_upstream(&[("LOG_FORMAT", "json")]);
    assert_eq!(chat(&app, "obs", &hello()), 200);
    let wanted = |l: &Value| l["path"] == "/v1/chat/completions" && l["status"] == 200;
    assert!(crate::support::eventually(Duration::from_secs(10), || {
        app.logs()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|l| wanted(&l))
    }));
    let logs = app.logs();
    for line in logs.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        for field in ["ts", "level", "msg"] {
            assert!(v[field].is_string(), "{field} in {line}");
        }
    }
    let line = logs
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|l| wanted(l))
        .unwrap();
    assert_eq!(line["method"], "POST");
    assert_eq!(line["agent"], "obs");
    assert_eq!(line["profile"], "p");
    assert_eq!(line["model"], "m");
    assert!(line["duration_ms"].is_number(), "{line}");
    for secret in [ADMIN_KEY, AGENT_KEY, "sk-upstream-obs", "hello"] {
        assert!(!logs.contains(secret), "{secret} in the logs");
    }
}

#[test]
fn the_openapi_document_is_served_as_it_is_in_the_repository() {
    let app = TestApp::spawn();
    let r = app.request("GET", "/openapi.json").send();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let on_disk = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json")).unwrap();
    assert_eq!(r.text().as_bytes(), on_disk.as_slice());
}
