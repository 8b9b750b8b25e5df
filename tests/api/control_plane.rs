//! The control plane: profiles, models, switching, auth and bad input.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{mpsc, Barrier};
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Checks the status and the JSON error shape of SPEC.md; returns `error.message`.
fn assert_error(r: &Reply, status: u16) -> String {
    assert_eq!(r.status, status, "unexpected status; body: {}", r.text());
    let content_type = r.header("Content-Type").unwrap_or("");
    assert!(
        content_type.starts_with("application/json"),
        "an error is JSON, got Content-Type {content_type:?}"
    );
    let body = r.json();
    let top = body.as_object().expect("the error body is an object");
    assert_eq!(top.len(), 1, "only `error` at the top: {body}");
    let error = body["error"]
        .as_object()
        .unwrap_or_else(|| panic!("no `error` object: {body}"));
    for field in ["message", "type", "code"] {
        assert!(
            error
                .get(field)
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty()),
            "`error.{field}` is a non-empty string: {body}"
        );
    }
    assert_eq!(
        r.header("x-switcher-error"),
        error["code"].as_str(),
        "the service's own error names its code in x-switcher-error"
    );
    error["message"].as_str().unwrap().to_string()
}

/// A 400 whose message names `field`.
fn assert_bad_field(r: &Reply, field: &str) {
    let message = assert_error(r, 400);
    assert!(
        message.contains(field),
        "the message names `{field}`: {message}"
    );
}

fn keys(v: &Value) -> Vec<String> {
    let mut keys: Vec<String> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

fn assert_profile_shape(p: &Value) {
    assert_eq!(
        keys(p),
        [
            "base_url",
            "created_at",
            "id",
            "profile_name",
            "provider_type",
            "updated_at"
        ],
        "a profile has exactly the contract's fields: {p}"
    );
    assert!(p["id"].is_i64(), "{p}");
    assert!(
        p["created_at"].is_string() && p["updated_at"].is_string(),
        "{p}"
    );
}

fn assert_model_shape(m: &Value) {
    assert_eq!(
        keys(m),
        [
            "created_at",
            "drop_params",
            "enabled",
            "id",
            "max_tokens",
            "model_name",
            "profile_name",
            "tags",
            "updated_at"
        ],
        "a model has exactly the contract's fields: {m}"
    );
}

fn count(app: &TestApp, sql: &str) -> i64 {
    app.db.client().query_one(sql, &[]).unwrap().get(0)
}

fn profile_body(name: &str, provider_type: &str, api_key: &str) -> Value {
    json!({"profile_name": name, "provider_type": provider_type,
           "credentials": {"api_key": api_key}})
}

fn create(app: &TestApp, body: &Value) -> Reply {
    app.admin("POST", "/admin/profiles").json(body)
}

fn switch_body(agent: &str, profile: &str, model: &str) -> Value {
    json!({"agent_id": agent, "profile_name": profile, "model_name": model})
}

/// (from_profile, from_model, to_profile, to_model) of every audit row, in order.
type AuditRow = (Option<String>, Option<String>, String, String);

fn audit_rows(app: &TestApp, agent: &str) -> Vec<AuditRow> {
    app.db
        .client()
        .query(
            "SELECT from_profile_name, from_model_name, to_profile_name, to_model_name
             FROM audit_switches WHERE agent_id = $1 ORDER BY id",
            &[&agent],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Health
// ---------------------------------------------------------------------------------------------

#[test]
fn healthz_reports_the_database() {
    let app = TestApp::spawn();
    let r = app.request("GET", "/healthz").send();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!({"status": "ok", "db": "ok", "audit_backlog": 0})
    );
}

#[test]
fn healthz_needs_no_key_and_ignores_a_wrong_one() {
    let app = TestApp::spawn();
    for call in [
        app.request("GET", "/healthz"),
        app.request("GET", "/healthz").key("not-a-key"),
        app.agent("GET", "/healthz"),
        app.admin("GET", "/healthz"),
    ] {
        let r = call.send();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["status"], "ok", "{}", r.text());
    }
}

#[test]
fn healthz_is_degraded_while_the_database_is_down_and_recovers_by_itself() {
    let db = TestDb::create();
    let mut forwarder = PgForwarder::start();
    let url = forwarder.database_url(&db.name);
    let app = TestApp::spawn_on(db, &[("DATABASE_URL", &url)]);

    let r = app.request("GET", "/healthz").send();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "ok", "{}", r.text());
    app.create_profile("before", "openai", "https://api.openai.com/v1", "sk-before");

    forwarder.stop();
    let mut last = None;
    let down = eventually(Duration::from_secs(30), || {
        let r = app.request("GET", "/healthz").send();
        let is_down = r.json()["db"] == "unavailable";
        last = Some(r);
        is_down
    });
    let last = last.unwrap();
    assert!(
        down,
        "healthz did not notice: {} {}",
        last.status,
        last.text()
    );
    // Still serving from memory: healthy for an orchestrator, but degraded.
    assert_eq!(last.status, 200, "{}", last.text());
    assert_eq!(
        last.json(),
        json!({"status": "degraded", "db": "unavailable", "audit_backlog": 0})
    );
    // A route that needs the database says so in the error shape, without a 500.
    let r = app.admin("GET", "/admin/profiles").send();
    assert_error(&r, 503);

    forwarder.restart();
    let mut last = None;
    let up = eventually(Duration::from_secs(30), || {
        let r = app.request("GET", "/healthz").send();
        let is_up = r.status == 200 && r.json()["status"] == "ok";
        last = Some(r);
        is_up
    });
    let last = last.unwrap();
    assert!(
        up,
        "healthz did not recover: {} {}",
        last.status,
        last.text()
    );
    assert_eq!(
        last.json(),
        json!({"status": "ok", "db": "ok", "audit_backlog": 0})
    );
    let r = app.admin("GET", "/admin/profiles").send();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"][0]["profile_name"], "before");
}

// ---------------------------------------------------------------------------------------------
// Profiles
// ---------------------------------------------------------------------------------------------

#[test]
fn creating_a_profile_returns_201_and_the_profile_without_credentials() {
    let app = TestApp::spawn();
    let key = "sk-create-7f3a9c1e5d";
    let r = create(
        &app,
        &json!({"profile_name": "main.openai_1-x", "provider_type": "openai",
                "base_url": "https://proxy.example.com/v1/", "credentials": {"api_key": key}}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let p = r.json();
    assert_profile_shape(&p);
    assert_eq!(p["profile_name"], "main.openai_1-x");
    assert_eq!(p["provider_type"], "openai");
    assert_eq!(p["base_url"], "https://proxy.example.com/v1");
    for word in ["credentials", "api_key", key] {
        assert!(
            !r.text().contains(word),
            "the profile shows {word}: {}",
            r.text()
        );
    }
    let row = app
        .db
        .client()
        .query_one("SELECT id, profile_name, base_url FROM profiles", &[])
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), p["id"].as_i64().unwrap());
    assert_eq!(row.get::<_, String>(1), "main.openai_1-x");
    assert_eq!(row.get::<_, String>(2), "https://proxy.example.com/v1");
}

#[test]
fn profiles_get_the_default_base_url_of_their_provider_type() {
    let app = TestApp::spawn();
    let r = create(&app, &profile_body("oa", "openai", "sk-1"));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["base_url"], "https://api.openai.com/v1");
    let r = create(&app, &profile_body("an", "anthropic", "sk-ant-1"));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["base_url"], "https://api.anthropic.com");
    let r = create(
        &app,
        &json!({"profile_name": "local", "provider_type": "openai_compatible",
                "base_url": "http://127.0.0.1:8000/v1", "credentials": {"api_key": "x"}}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["base_url"], "http://127.0.0.1:8000/v1");
}

#[test]
fn an_openai_compatible_profile_without_base_url_is_400_naming_base_url() {
    let app = TestApp::spawn();
    let r = create(&app, &profile_body("local", "openai_compatible", "sk-1"));
    assert_bad_field(&r, "base_url");
    let mut body = profile_body("local", "openai_compatible", "sk-1");
    body["base_url"] = Value::Null;
    assert_bad_field(&create(&app, &body), "base_url");
    assert_eq!(count(&app, "SELECT count(*) FROM profiles"), 0);
}

#[test]
fn invalid_profile_fields_are_400_naming_the_field() {
    let app = TestApp::spawn();
    let good = json!({"profile_name": "p", "provider_type": "openai",
                      "base_url": "https://x.example/v1", "credentials": {"api_key": "sk-1"}});
    let with = |field: &str, value: Value| {
        let mut body = good.clone();
        body[field] = value;
        body
    };
    let without = |field: &str| {
        let mut body = good.clone();
        body.as_object_mut().unwrap().remove(field);
        body
    };
    let cases: Vec<(Value, &str)> = vec![
        (without("profile_name"), "profile_name"),
        (with("profile_name", json!(5)), "profile_name"),
        (without("provider_type"), "provider_type"),
        (with("provider_type", json!("azure")), "provider_type"),
        (with("provider_type", json!(true)), "provider_type"),
        (with("base_url", json!(7)), "base_url"),
        (with("base_url", json!("ftp://x.example")), "base_url"),
        (with("base_url", json!("not a url")), "base_url"),
        (without("credentials"), "credentials"),
        (with("credentials", json!("sk-1")), "credentials"),
        (with("credentials", json!({})), "credentials.api_key"),
        (
            with("credentials", json!({"api_key": ""})),
            "credentials.api_key",
        ),
        (
            with("credentials", json!({"api_key": 5})),
            "credentials.api_key",
        ),
    ];
    for (body, field) in cases {
        let r = create(&app, &body);
        assert_bad_field(&r, field);
        assert!(
            !r.text().contains("sk-1"),
            "an error shows the key: {}",
            r.text()
        );
    }
    assert_eq!(count(&app, "SELECT count(*) FROM profiles"), 0);
}

#[test]
fn a_taken_profile_name_is_409_and_nothing_is_created() {
    let app = TestApp::spawn();
    let first = app.create_profile("dup", "openai", "https://a.example/v1", "sk-first");
    let r = create(&app, &profile_body("dup", "anthropic", "sk-second-9d8c"));
    let message = assert_error(&r, 409);
    assert!(message.contains("dup"), "{message}");
    assert!(!r.text().contains("sk-second-9d8c"));
    let rows = app
        .db
        .client()
        .query("SELECT id, provider_type, base_url FROM profiles", &[])
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, i64>(0), first["id"].as_i64().unwrap());
    assert_eq!(rows[0].get::<_, String>(1), "openai");
    assert_eq!(rows[0].get::<_, String>(2), "https://a.example/v1");
}

#[test]
fn creating_one_name_from_many_threads_gives_one_201_and_409s() {
    let app = TestApp::spawn();
    let barrier = Barrier::new(8);
    let statuses: Vec<u16> = thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (app, barrier) = (&app, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    let r = create(app, &profile_body("race", "openai", &format!("sk-{i}")));
                    if r.status != 201 {
                        assert_error(&r, 409);
                    }
                    r.status
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        7,
        "{statuses:?}"
    );
    assert_eq!(count(&app, "SELECT count(*) FROM profiles"), 1);
}

#[test]
fn listing_profiles_returns_every_profile_in_data() {
    let app = TestApp::spawn();
    let r = app.admin("GET", "/admin/profiles").send();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"data": []}));

    let a = app.create_profile("a", "openai", "https://a.example/v1", "sk-list-aaaa");
    let b = app.create_profile("b", "anthropic", "https://b.example", "sk-list-bbbb");
    let r = app.admin("GET", "/admin/profiles").send();
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(keys(&body), ["data"]);
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2, "{body}");
    for p in data {
        assert_profile_shape(p);
    }
    let listed: Vec<&Value> = data.iter().collect();
    assert!(listed.contains(&&a) && listed.contains(&&b), "{body}");
    for secret in ["sk-list-aaaa", "sk-list-bbbb", "api_key", "credentials"] {
        assert!(!r.text().contains(secret), "{}", r.text());
    }
}

#[test]
fn patching_a_profile_changes_its_base_url_and_rotates_its_credentials() {
    let app = TestApp::spawn();
    let p = app.create_profile("p", "openai", "https://old.example/v1", "sk-old-key-1111");
    let id = p["id"].as_i64().unwrap();
    let sealed = |app: &TestApp| -> Vec<u8> {
        app.db
            .client()
            .query_one("SELECT credentials_enc FROM profiles WHERE id = $1", &[&id])
            .unwrap()
            .get(0)
    };
    let before = sealed(&app);

    let r = app
        .admin("PATCH", &format!("/admin/profiles/{id}"))
        .json(&json!({"base_url": "https://new.example/v2/"}));
    assert_eq!(r.status, 200, "{}", r.text());
    let patched = r.json();
    assert_profile_shape(&patched);
    assert_eq!(patched["id"], id);
    assert_eq!(patched["base_url"], "https://new.example/v2");
    assert_eq!(patched["profile_name"], "p");
    assert_eq!(sealed(&app), before, "credentials are kept when left out");

    let r = app
        .admin("PATCH", &format!("/admin/profiles/{id}"))
        .json(&json!({"credentials": {"api_key": "sk-new-key-2222"}}));
    assert_eq!(r.status, 200, "{}", r.text());
    let rotated = r.json();
    assert_profile_shape(&rotated);
    assert_eq!(
        rotated["base_url"], "https://new.example/v2",
        "base_url is kept"
    );
    for word in [
        "credentials",
        "api_key",
        "sk-new-key-2222",
        "sk-old-key-1111",
    ] {
        assert!(!r.text().contains(word), "{}", r.text());
    }
    assert_ne!(sealed(&app), before, "the credentials were rewritten");

    // `null` returns an openai profile to its default base URL.
    let r = app
        .admin("PATCH", &format!("/admin/profiles/{id}"))
        .json(&json!({"base_url": null}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["base_url"], "https://api.openai.com/v1");
    let stored: String = app
        .db
        .client()
        .query_one("SELECT base_url FROM profiles WHERE id = $1", &[&id])
        .unwrap()
        .get(0);
    assert_eq!(stored, "https://api.openai.com/v1");
}

#[test]
fn patching_with_invalid_fields_is_400_naming_the_field_and_changes_nothing() {
    let app = TestApp::spawn();
    let p = app.create_profile(
        "local",
        "openai_compatible",
        "http://127.0.0.1:9/v1",
        "sk-patch-bad",
    );
    let path = format!("/admin/profiles/{}", p["id"]);
    let cases = [
        (json!({"base_url": 5}), "base_url"),
        (json!({"base_url": "ftp://x"}), "base_url"),
        (json!({"base_url": null}), "base_url"),
        (json!({"credentials": "sk"}), "credentials"),
        (json!({"credentials": {}}), "credentials.api_key"),
        (
            json!({"credentials": {"api_key": ""}}),
            "credentials.api_key",
        ),
        (
            json!({"credentials": {"api_key": ["x"]}}),
            "credentials.api_key",
        ),
    ];
    for (body, field) in cases {
        assert_bad_field(&app.admin("PATCH", &path).json(&body), field);
    }
    let r = app.admin("GET", "/admin/profiles").send();
    assert_eq!(r.json()["data"][0], p, "the profile is unchanged");
}

#[test]
fn patching_or_deleting_an_unknown_or_non_numeric_profile_id_is_404() {
    let app = TestApp::spawn();
    app.create_profile("p", "openai", "https://a.example/v1", "sk-1");
    let patch = json!({"base_url": "https://b.example/v1"});
    for id in ["999999", "abc", "1.5", "-1", "99999999999999999999999"] {
        let path = format!("/admin/profiles/{id}");
        assert_error(&app.admin("PATCH", &path).json(&patch), 404);
        let message = assert_error(&app.admin("DELETE", &path).send(), 404);
        if id == "abc" {
            assert!(
                message.contains("numbers") && message.contains("GET /admin/profiles"),
                "says what an id is and where to find one: {message}"
            );
        }
    }
    assert_eq!(count(&app, "SELECT count(*) FROM profiles"), 1);
    let base_url: String = app
        .db
        .client()
        .query_one("SELECT base_url FROM profiles", &[])
        .unwrap()
        .get(0);
    assert_eq!(base_url, "https://a.example/v1");
}

#[test]
fn deleting_a_profile_an_agent_is_switched_to_is_409_and_deletes_nothing() {
    let app = TestApp::spawn();
    let p = app.create_profile("busy", "openai", "https://a.example/v1", "sk-1");
    app.add_model("busy", "gpt-a", json!({}));
    app.add_model("busy", "gpt-b", json!({}));
    app.switch("agent-1", "busy", "gpt-a");

    let r = app
        .admin("DELETE", &format!("/admin/profiles/{}", p["id"]))
        .send();
    let message = assert_error(&r, 409);
    assert!(message.contains("agent-1"), "names the agent: {message}");
    assert_eq!(count(&app, "SELECT count(*) FROM profiles"), 1);
    assert_eq!(count(&app, "SELECT count(*) FROM models"), 2);
    assert_eq!(count(&app, "SELECT count(*) FROM agent_state"), 1);
    let r = app.agent("GET", "/api/active?agent_id=agent-1").send();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["profile_name"], "busy");
}

#[test]
fn deleting_a_profile_many_agents_use_names_ten_of_them_and_counts_the_rest() {
    let app = TestApp::spawn();
    let p = app.create_profile("busy", "openai", "https://a.example/v1", "sk-1");
    for i in 0..12 {
        app.switch(&format!("agent-{i:02}"), "busy", "gpt-a");
    }
    let r = app
        .admin("DELETE", &format!("/admin/profiles/{}", p["id"]))
        .send();
    let message = assert_error(&r, 409);
    assert!(
        message.contains("agent-00") && message.contains("agent-09"),
        "{message}"
    );
    assert!(!message.contains("agent-10"), "{message}");
    assert!(message.contains("and 2 more"), "{message}");
}

#[test]
fn an_api_key_with_whitespace_or_control_characters_is_400_naming_it() {
    let app = TestApp::spawn();
    let p = app.create_profile("p", "openai", "https://a.example/v1", "sk-good-key");
    let path = format!("/admin/profiles/{}", p["id"]);
    for key in [
        "sk-pasted-key\n",
        "sk-pasted-key\r\n",
        " sk-pasted-key",
        "sk-pasted key",
        "sk-pasted\tkey",
        "sk-pasted\u{7f}key",
        "sk-pasted\u{0}key",
        "sk-pasted\u{a0}key",
    ] {
        let r = create(&app, &profile_body("q", "openai", key));
        let message = assert_error(&r, 400);
        assert!(
            message.contains("credentials.api_key")
                && message.contains("whitespace or control characters"),
            "{key:?}: {message}"
        );
        assert!(
            !r.text().contains("sk-pasted"),
            "the key is echoed: {}",
            r.text()
        );
        let r = app
            .admin("PATCH", &path)
            .json(&json!({"credentials": {"api_key": key}}));
        assert_bad_field(&r, "credentials.api_key");
    }
    assert_eq!(count(&app, "SELECT count(*) FROM profiles"), 1);
    let r = app.admin("GET", "/admin/profiles").send();
    assert_eq!(r.json()["data"][0], p, "the profile is unchanged");
    // Other credential fields are kept as they are, whatever they hold.
    let r = app
        .admin("PATCH", &path)
        .json(&json!({"credentials": {"api_key": "sk-new", "organization": "org 1\n", "n": 5}}));
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Whether a session of the app's database is waiting for a lock.
fn a_session_waits_for_a_lock(db: &mut postgres::Client) -> bool {
    db.query_one(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
        &[],
    )
    .unwrap()
    .get::<_, i64>(0)
        > 0
}

/// Sends `send` on another thread while `held` (an open transaction of another session) is
/// in progress; commits `held` once the request waits for it (or has already answered).
fn send_during(
    app: &TestApp,
    held: postgres::Transaction<'_>,
    send: impl FnOnce() -> Reply + Send,
) -> Reply {
    let mut watcher = app.db.client();
    thread::scope(|s| {
        let request = s.spawn(send);
        let waited = eventually(Duration::from_secs(10), || {
            request.is_finished() || a_session_waits_for_a_lock(&mut watcher)
        });
        assert!(waited, "the request neither waited nor answered");
        held.commit().unwrap();
        request.join().unwrap()
    })
}

#[test]
fn a_switch_racing_a_profile_delete_that_commits_first_is_404() {
    let app = TestApp::spawn();
    let p = app.create_profile("doomed", "openai", "https://a.example/v1", "sk-1");
    app.add_model("doomed", "gpt-a", json!({}));
    let id = p["id"].as_i64().unwrap();
    let mut session = app.db.client();
    let mut delete = session.transaction().unwrap();
    // What DELETE /admin/profiles/{id} does, held open.
    delete
        .query_one("SELECT id FROM profiles WHERE id = $1 FOR UPDATE", &[&id])
        .unwrap();
    delete
        .execute("DELETE FROM profiles WHERE id = $1", &[&id])
        .unwrap();

    let r = send_during(&app, delete, || {
        app.agent("POST", "/api/switch")
            .json(&switch_body("agent-1", "doomed", "gpt-a"))
    });
    let message = assert_error(&r, 404);
    assert!(message.contains("doomed"), "{message}");
    assert_eq!(count(&app, "SELECT count(*) FROM agent_state"), 0);
    assert_eq!(count(&app, "SELECT count(*) FROM audit_switches"), 0);
}

#[test]
fn a_profile_delete_racing_a_switch_that_commits_first_is_409() {
    let app = TestApp::spawn();
    let p = app.create_profile("busy", "openai", "https://a.example/v1", "sk-1");
    let m = app.add_model("busy", "gpt-a", json!({}));
    let (id, model_id) = (p["id"].as_i64().unwrap(), m["id"].as_i64().unwrap());
    let mut session = app.db.client();
    let mut switch = session.transaction().unwrap();
    // What POST /api/switch does, held open.
    switch
        .query_one("SELECT id FROM profiles WHERE id = $1 FOR SHARE", &[&id])
        .unwrap();
    switch
        .execute(
            "INSERT INTO agent_state (agent_id, profile_id, model_id) VALUES ('agent-1', $1, $2)",
            &[&id, &model_id],
        )
        .unwrap();

    let r = send_during(&app, switch, || {
        app.admin("DELETE", &format!("/admin/profiles/{id}")).send()
    });
    let message = assert_error(&r, 409);
    assert!(message.contains("active profile"), "{message}");
    assert_eq!(count(&app, "SELECT count(*) FROM profiles"), 1);
    assert_eq!(count(&app, "SELECT count(*) FROM models"), 1);
}

#[test]
fn a_switch_racing_a_model_disable_that_commits_first_is_409() {
    let app = TestApp::spawn();
    app.create_profile("p", "openai", "https://a.example/v1", "sk-1");
    let m = app.add_model("p", "gpt-a", json!({}));
    let model_id = m["id"].as_i64().unwrap();
    let mut session = app.db.client();
    let mut disable = session.transaction().unwrap();
    disable
        .execute(
            "UPDATE models SET enabled = false WHERE id = $1",
            &[&model_id],
        )
        .unwrap();

    let r = send_during(&app, disable, || {
        app.agent("POST", "/api/switch")
            .json(&switch_body("agent-1", "p", "gpt-a"))
    });
    let message = assert_error(&r, 409);
    assert!(message.contains("disabled"), "{message}");
    assert_eq!(count(&app, "SELECT count(*) FROM agent_state"), 0);
}

fn model_enabled(app: &TestApp, model: &str) -> bool {
    app.db
        .client()
        .query_one(
            "SELECT enabled FROM models WHERE model_name = $1",
            &[&model],
        )
        .unwrap()
        .get(0)
}

#[test]
fn disabling_a_model_agents_use_is_409_naming_them_and_changes_nothing() {
    let app = TestApp::spawn();
    app.create_profile("p", "openai", "https://a.example/v1", "sk-1");
    app.add_model("p", "gpt-a", json!({}));
    app.add_model("p", "gpt-b", json!({}));
    for i in 0..12 {
        app.switch(&format!("agent-{i:02}"), "p", "gpt-a");
    }
    app.switch("bystander", "p", "gpt-b");

    let body = json!({"profile_name": "p", "model_name": "gpt-a", "enabled": false, "tags": ["x"]});
    let r = app.admin("POST", "/admin/models").json(&body);
    let message = assert_error(&r, 409);
    for i in 0..10 {
        assert!(message.contains(&format!("agent-{i:02}")), "{message}");
    }
    assert!(
        !message.contains("agent-10") && message.contains("2 more"),
        "{message}"
    );
    assert!(!message.contains("bystander"), "{message}");
    assert!(model_enabled(&app, "gpt-a"));
    let tags: Vec<String> = app
        .db
        .client()
        .query_one("SELECT tags FROM models WHERE model_name = 'gpt-a'", &[])
        .unwrap()
        .get(0);
    assert!(tags.is_empty(), "the refused upsert changed tags: {tags:?}");

    // Once they are switched elsewhere it can be disabled; other fields still change freely.
    for i in 0..12 {
        app.switch(&format!("agent-{i:02}"), "p", "gpt-b");
    }
    let r = app.admin("POST", "/admin/models").json(&body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!model_enabled(&app, "gpt-a"));
    let r = app
        .admin("POST", "/admin/models")
        .json(&json!({"profile_name": "p", "model_name": "gpt-b", "tags": ["kept"]}));
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn a_model_disable_racing_a_switch_that_commits_first_is_409() {
    let app = TestApp::spawn();
    let p = app.create_profile("p", "openai", "https://a.example/v1", "sk-1");
    let m = app.add_model("p", "gpt-a", json!({}));
    let (id, model_id) = (p["id"].as_i64().unwrap(), m["id"].as_i64().unwrap());
    let mut session = app.db.client();
    let mut switch = session.transaction().unwrap();
    // What POST /api/switch does, held open.
    switch
        .query_one(
            "SELECT id FROM models WHERE id = $1 FOR SHARE",
            &[&model_id],
        )
        .unwrap();
    switch
        .execute(
            "INSERT INTO agent_state (agent_id, profile_id, model_id) VALUES ('racer', $1, $2)",
            &[&id, &model_id],
        )
        .unwrap();

    let r = send_during(&app, switch, || {
        app.admin("POST", "/admin/models")
            .json(&json!({"profile_name": "p", "model_name": "gpt-a", "enabled": false}))
    });
    let message = assert_error(&r, 409);
    assert!(message.contains("racer"), "{message}");
    assert!(model_enabled(&app, "gpt-a"));
}

#[test]
fn deleting_a_profile_removes_it_and_its_models() {
    let app = TestApp::spawn();
    let gone = app.create_profile("gone", "openai", "https://a.example/v1", "sk-1");
    app.create_profile("kept", "openai", "https://b.example/v1", "sk-2");
    app.add_model("gone", "m1", json!({}));
    app.add_model("gone", "m2", json!({}));
    app.add_model("kept", "m3", json!({}));
    // An agent that was on the profile and moved away no longer holds it.
    app.switch("agent-1", "gone", "m1");
    app.switch("agent-1", "kept", "m3");

    let id = gone["id"].as_i64().unwrap();
    let r = app.admin("DELETE", &format!("/admin/profiles/{id}")).send();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"deleted": true, "id": id}));

    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM profiles WHERE profile_name = 'gone'"
        ),
        0
    );
    assert_eq!(count(&app, "SELECT count(*) FROM models"), 1);
    let r = app.admin("GET", "/admin/profiles").send();
    let names: Vec<Value> = r.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["profile_name"].clone())
        .collect();
    assert_eq!(names, [json!("kept")]);
    let r = app.agent("GET", "/api/models").send();
    let models: Vec<Value> = r.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["model_name"].clone())
        .collect();
    assert_eq!(models, [json!("m3")]);
    // The audit trail outlives the profile.
    assert_eq!(audit_rows(&app, "agent-1").len(), 2);
    assert_error(
        &app.admin("DELETE", &format!("/admin/profiles/{id}")).send(),
        404,
    );
}

// ---------------------------------------------------------------------------------------------
// Models
// ---------------------------------------------------------------------------------------------

#[test]
fn upserting_a_model_creates_it_with_201_then_updates_it_with_200() {
    let app = TestApp::spawn();
    app.create_profile("p", "openai", "https://a.example/v1", "sk-1");
    let r = app
        .admin("POST", "/admin/models")
        .json(&json!({"profile_name": "p", "model_name": "gpt-4o"}));
    assert_eq!(r.status, 201, "{}", r.text());
    let created = r.json();
    assert_model_shape(&created);
    assert_eq!(created["profile_name"], "p");
    assert_eq!(created["model_name"], "gpt-4o");
    assert_eq!(created["enabled"], true);
    assert_eq!(created["tags"], json!([]));
    assert_eq!(created["max_tokens"], Value::Null);
    assert_eq!(created["drop_params"], json!([]));

    let r = app.admin("POST", "/admin/models").json(&json!({
        "profile_name": "p", "model_name": "gpt-4o", "enabled": false, "tags": ["fast", "cheap"],
        "max_tokens": 2048, "drop_params": ["temperature", "top_p"]
    }));
    assert_eq!(r.status, 200, "{}", r.text());
    let updated = r.json();
    assert_model_shape(&updated);
    assert_eq!(updated["id"], created["id"], "the same row");
    assert_eq!(updated["enabled"], false);
    assert_eq!(updated["tags"], json!(["fast", "cheap"]));
    assert_eq!(updated["max_tokens"], 2048);
    assert_eq!(updated["drop_params"], json!(["temperature", "top_p"]));

    let row = app
        .db
        .client()
        .query_one(
            "SELECT count(*) OVER (), enabled, tags, max_tokens, drop_params FROM models",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 1);
    assert!(!row.get::<_, bool>(1));
    assert_eq!(row.get::<_, Vec<String>>(2), ["fast", "cheap"]);
    assert_eq!(row.get::<_, Option<i32>>(3), Some(2048));
    assert_eq!(row.get::<_, Vec<String>>(4), ["temperature", "top_p"]);
}

#[test]
fn fields_left_out_of_a_model_upsert_keep_their_stored_values() {
    let app = TestApp::spawn();
    app.create_profile("p", "openai", "https://a.example/v1", "sk-1");
    app.add_model(
        "p",
        "o1",
        json!({"enabled": true, "tags": ["reasoning"], "max_tokens": 4096,
               "drop_params": ["temperature"]}),
    );
    let r = app
        .admin("POST", "/admin/models")
        .json(&json!({"profile_name": "p", "model_name": "o1", "enabled": false}));
    assert_eq!(r.status, 200, "{}", r.text());
    let m = r.json();
    assert_eq!(m["enabled"], false);
    assert_eq!(m["tags"], json!(["reasoning"]));
    assert_eq!(m["max_tokens"], 4096);
    assert_eq!(m["drop_params"], json!(["temperature"]));

    let r = app
        .admin("POST", "/admin/models")
        .json(&json!({"profile_name": "p", "model_name": "o1", "tags": []}));
    assert_eq!(r.status, 200, "{}", r.text());
    let m = r.json();
    assert_eq!(m["enabled"], false, "enabled kept");
    assert_eq!(m["tags"], json!([]));
    assert_eq!(m["max_tokens"], 4096, "max_tokens kept");
    assert_eq!(m["drop_params"], json!(["temperature"]), "drop_params kept");

    let listed = app.agent("GET", "/api/models?profile=p").send().json();
    assert_eq!(listed["data"][0], m);
}

#[test]
fn upserting_a_model_of_an_unknown_profile_is_404() {
    let app = TestApp::spawn();
    let r = app
        .admin("POST", "/admin/models")
        .json(&json!({"profile_name": "nobody", "model_name": "gpt-4o"}));
    let message = assert_error(&r, 404);
    assert!(message.contains("nobody"), "{message}");
    assert_eq!(count(&app, "SELECT count(*) FROM models"), 0);
}

#[test]
fn model_fields_of_the_wrong_type_are_400_naming_the_field() {
    let app = TestApp::spawn();
    app.create_profile("p", "openai", "https://a.example/v1", "sk-1");
    let cases = [
        (json!({"model_name": "m"}), "profile_name"),
        (
            json!({"profile_name": 5, "model_name": "m"}),
            "profile_name",
        ),
        (json!({"profile_name": "p"}), "model_name"),
        (json!({"profile_name": "p", "model_name": 5}), "model_name"),
        (json!({"profile_name": "p", "model_name": ""}), "model_name"),
        (
            json!({"profile_name": "p", "model_name": "x".repeat(257)}),
            "model_name",
        ),
        (
            json!({"profile_name": "p", "model_name": "m", "enabled": "yes"}),
            "enabled",
        ),
        (
            json!({"profile_name": "p", "model_name": "m", "enabled": 1}),
            "enabled",
        ),
        (
            json!({"profile_name": "p", "model_name": "m", "tags": "fast"}),
            "tags",
        ),
        (
            json!({"profile_name": "p", "model_name": "m", "tags": [1, 2]}),
            "tags",
        ),
        (
            json!({"profile_name": "p", "model_name": "m", "max_tokens": "big"}),
            "max_tokens",
        ),
        (
            json!({"profile_name": "p", "model_name": "m", "max_tokens": 0}),
            "max_tokens",
        ),
        (
            json!({"profile_name": "p", "model_name": "m", "max_tokens": -5}),
            "max_tokens",
        ),
        (
            json!({"profile_name": "p", "model_name": "m", "max_tokens": 1.5}),
            "max_tokens",
        ),
        (
            json!({"profile_name": "p", "model_name": "m", "max_tokens": 1u64 << 40}),
            "max_tokens",
        ),
        (
            json!({"profile_name": "p", "model_name": "m", "drop_params": "top_p"}),
            "drop_params",
        ),
        (
            json!({"profile_name": "p", "model_name": "m", "drop_params": [null]}),
            "drop_params",
        ),
    ];
    for (body, field) in cases {
        assert_bad_field(&app.admin("POST", "/admin/models").json(&body), field);
    }
    assert_eq!(count(&app, "SELECT count(*) FROM models"), 0);
}

#[test]
fn listing_models_returns_all_or_one_profiles_models() {
    let app = TestApp::spawn();
    app.create_profile("a", "openai", "https://a.example/v1", "sk-1");
    app.create_profile("b", "anthropic", "https://b.example", "sk-2");
    let r = app.agent("GET", "/api/models").send();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"data": []}));

    let a1 = app.add_model("a", "a1", json!({"tags": ["t"]}));
    let a2 = app.add_model("a", "a2", json!({"enabled": false}));
    let b1 = app.add_model("b", "b1", json!({"max_tokens": 100}));

    let r = app.agent("GET", "/api/models").send();
    assert_eq!(r.status, 200, "{}", r.text());
    let data = r.json()["data"].as_array().unwrap().clone();
    assert_eq!(data.len(), 3, "disabled models are listed too: {data:?}");
    for m in &data {
        assert_model_shape(m);
    }
    for m in [&a1, &a2, &b1] {
        assert!(data.contains(m), "{m} missing from {data:?}");
    }

    let r = app.agent("GET", "/api/models?profile=a").send();
    assert_eq!(r.status, 200, "{}", r.text());
    let data = r.json()["data"].as_array().unwrap().clone();
    assert_eq!(data.len(), 2);
    assert!(data.iter().all(|m| m["profile_name"] == "a"), "{data:?}");

    let r = app.admin("GET", "/api/models?profile=b").send();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"data": [b1]}));
}

#[test]
fn listing_models_of_an_unknown_profile_is_404() {
    let app = TestApp::spawn();
    app.create_profile("a", "openai", "https://a.example/v1", "sk-1");
    app.add_model("a", "a1", json!({}));
    let r = app.agent("GET", "/api/models?profile=nope").send();
    let message = assert_error(&r, 404);
    assert!(message.contains("nope"), "{message}");
}

// ---------------------------------------------------------------------------------------------
// Switching
// ---------------------------------------------------------------------------------------------

fn assert_auto_created(provider_type: &str, base_url: &str) {
    let app = TestApp::spawn();
    app.create_profile("p", provider_type, base_url, "sk-1");
    let r = app
        .agent("POST", "/api/switch")
        .json(&switch_body("agent-1", "p", "brand-new-model"));
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(
        keys(&body),
        [
            "agent_id",
            "model_name",
            "previous",
            "profile_name",
            "provider_type",
            "switched_at"
        ]
    );
    assert_eq!(body["agent_id"], "agent-1");
    assert_eq!(body["profile_name"], "p");
    assert_eq!(body["provider_type"], provider_type);
    assert_eq!(body["model_name"], "brand-new-model");
    assert_eq!(body["previous"], Value::Null);
    assert!(body["switched_at"].as_str().is_some_and(|s| !s.is_empty()));

    let models = app.agent("GET", "/api/models?profile=p").send().json();
    let data = models["data"].as_array().unwrap();
    assert_eq!(data.len(), 1, "{models}");
    assert_eq!(data[0]["model_name"], "brand-new-model");
    assert_eq!(data[0]["enabled"], true);
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM models WHERE enabled AND model_name = 'brand-new-model'"
        ),
        1
    );
}

#[test]
fn switching_to_an_unknown_openai_model_creates_it_enabled() {
    assert_auto_created("openai", "https://api.openai.com/v1");
}

#[test]
fn switching_to_an_unknown_openai_compatible_model_creates_it_enabled() {
    assert_auto_created("openai_compatible", "http://127.0.0.1:8000/v1");
}

#[test]
fn switching_to_an_unknown_anthropic_model_is_404() {
    let app = TestApp::spawn();
    app.create_profile("claude", "anthropic", "https://api.anthropic.com", "sk-ant");
    app.add_model("claude", "claude-known", json!({}));
    let r =
        app.agent("POST", "/api/switch")
            .json(&switch_body("agent-1", "claude", "claude-unknown"));
    let message = assert_error(&r, 404);
    assert!(message.contains("claude-unknown"), "{message}");
    assert_eq!(count(&app, "SELECT count(*) FROM models"), 1);
    assert_eq!(count(&app, "SELECT count(*) FROM agent_state"), 0);
    assert_eq!(count(&app, "SELECT count(*) FROM audit_switches"), 0);

    let body = app.switch("agent-1", "claude", "claude-known");
    assert_eq!(body["provider_type"], "anthropic");
    assert_eq!(body["model_name"], "claude-known");
}

#[test]
fn switching_to_an_unknown_profile_is_404() {
    let app = TestApp::spawn();
    let r = app
        .agent("POST", "/api/switch")
        .json(&switch_body("agent-1", "ghost", "gpt-4o"));
    let message = assert_error(&r, 404);
    assert!(message.contains("ghost"), "{message}");
    assert_eq!(count(&app, "SELECT count(*) FROM agent_state"), 0);
    assert_eq!(count(&app, "SELECT count(*) FROM audit_switches"), 0);
    assert_eq!(count(&app, "SELECT count(*) FROM models"), 0);
}

#[test]
fn switching_to_a_disabled_model_is_409_and_keeps_the_current_model() {
    let app = TestApp::spawn();
    app.create_profile("p", "openai", "https://a.example/v1", "sk-1");
    app.add_model("p", "on", json!({}));
    app.add_model("p", "off", json!({"enabled": false}));
    app.switch("agent-1", "p", "on");

    let r = app
        .agent("POST", "/api/switch")
        .json(&switch_body("agent-1", "p", "off"));
    let message = assert_error(&r, 409);
    assert!(message.contains("off"), "{message}");
    let active = app
        .agent("GET", "/api/active?agent_id=agent-1")
        .send()
        .json();
    assert_eq!(active["model_name"], "on");
    assert_eq!(
        audit_rows(&app, "agent-1").len(),
        1,
        "a refused switch is not audited"
    );
}

#[test]
fn a_switch_reports_the_previous_target_and_writes_one_audit_row() {
    let app = TestApp::spawn();
    app.create_profile("oa", "openai", "https://a.example/v1", "sk-1");
    app.create_profile("an", "anthropic", "https://b.example", "sk-2");
    app.add_model("an", "claude-x", json!({}));

    let first = app.switch("agent-1", "oa", "gpt-a");
    assert_eq!(first["previous"], Value::Null);
    let second = app.switch("agent-1", "an", "claude-x");
    assert_eq!(
        second["previous"],
        json!({"profile_name": "oa", "provider_type": "openai", "model_name": "gpt-a"})
    );
    let third = app.switch("agent-1", "an", "claude-x");
    assert_eq!(
        third["previous"],
        json!({"profile_name": "an", "provider_type": "anthropic", "model_name": "claude-x"})
    );
    // Another agent has its own history.
    let other = app.switch("agent-2", "oa", "gpt-a");
    assert_eq!(other["previous"], Value::Null);

    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        audit_rows(&app, "agent-1"),
        vec![
            (None, None, "oa".into(), "gpt-a".into()),
            (s("oa"), s("gpt-a"), "an".into(), "claude-x".into()),
            (s("an"), s("claude-x"), "an".into(), "claude-x".into()),
        ]
    );
    assert_eq!(audit_rows(&app, "agent-2").len(), 1);
    let providers = app
        .db
        .client()
        .query(
            "SELECT from_provider_type, to_provider_type FROM audit_switches
             WHERE agent_id = 'agent-1' ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, Option<String>>(0), r.get::<_, String>(1)))
        .collect::<Vec<_>>();
    assert_eq!(
        providers,
        vec![
            (None, "openai".into()),
            (s("openai"), "anthropic".into()),
            (s("anthropic"), "anthropic".into())
        ]
    );
}

#[test]
fn the_active_model_is_reported_after_a_switch() {
    let app = TestApp::spawn();
    app.create_profile("p", "openai", "https://a.example/v1", "sk-1");
    let switched = app.switch("agent-1", "p", "gpt-a");
    let r = app.agent("GET", "/api/active?agent_id=agent-1").send();
    assert_eq!(r.status, 200, "{}", r.text());
    let active = r.json();
    assert_eq!(
        keys(&active),
        [
            "agent_id",
            "model_name",
            "profile_name",
            "provider_type",
            "updated_at"
        ]
    );
    assert_eq!(active["agent_id"], "agent-1");
    assert_eq!(active["profile_name"], "p");
    assert_eq!(active["provider_type"], "openai");
    assert_eq!(active["model_name"], "gpt-a");
    assert_eq!(active["updated_at"], switched["switched_at"]);

    app.switch("agent-1", "p", "gpt-b");
    let active = app
        .admin("GET", "/api/active?agent_id=agent-1")
        .send()
        .json();
    assert_eq!(active["model_name"], "gpt-b");
}

#[test]
fn agent_ids_are_decoded_from_the_query_string() {
    let app = TestApp::spawn();
    app.create_profile("p", "openai", "https://a.example/v1", "sk-1");
    app.switch("team a/b&c", "p", "gpt-a");
    let r = app
        .agent("GET", "/api/active?agent_id=team%20a%2Fb%26c")
        .send();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["agent_id"], "team a/b&c");
    assert_eq!(r.json()["model_name"], "gpt-a");
}

#[test]
fn an_agent_without_a_switch_has_no_active_model_404() {
    let app = TestApp::spawn();
    let r = app
        .agent("GET", "/api/active?agent_id=never-switched")
        .send();
    let message = assert_error(&r, 404);
    assert!(
        message.starts_with("No active model set for agent_id")
            && message.contains("POST /api/switch"),
        "{message}"
    );
}

#[test]
fn active_without_agent_id_is_400() {
    let app = TestApp::spawn();
    for path in [
        "/api/active",
        "/api/active?agent=x",
        "/api/active?agent_id=",
    ] {
        let r = app.agent("GET", path).send();
        assert_bad_field(&r, "agent_id");
    }
}

// ---------------------------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------------------------

#[test]
fn an_unknown_route_is_404_in_the_error_shape() {
    let app = TestApp::spawn();
    for (method, path) in [
        ("GET", "/nope"),
        ("GET", "/"),
        ("POST", "/admin"),
        ("GET", "/admin/profiles/1/extra"),
        ("GET", "/api/switch/now"),
    ] {
        assert_error(&app.admin(method, path).send(), 404);
        assert_error(&app.request(method, path).send(), 404);
    }
}

#[test]
fn a_wrong_method_is_405_with_an_allow_header() {
    let app = TestApp::spawn();
    let cases = [
        ("POST", "/healthz", &["GET"][..]),
        ("PUT", "/admin/profiles", &["GET", "POST"][..]),
        ("DELETE", "/admin/profiles", &["GET", "POST"][..]),
        ("GET", "/admin/profiles/1", &["PATCH", "DELETE"][..]),
        ("GET", "/admin/models", &["POST"][..]),
        ("POST", "/api/models", &["GET"][..]),
        ("GET", "/api/switch", &["POST"][..]),
        ("DELETE", "/api/active", &["GET"][..]),
    ];
    for (method, path, allowed) in cases {
        let r = app.admin(method, path).send();
        assert_error(&r, 405);
        let allow = r
            .header("Allow")
            .unwrap_or_else(|| panic!("{method} {path}: no Allow header"));
        let listed: Vec<&str> = allow.split(',').map(str::trim).collect();
        for m in allowed {
            assert!(
                listed.contains(m),
                "{method} {path}: Allow {allow:?} lacks {m}"
            );
        }
        assert!(
            !listed.contains(&method),
            "{method} {path}: Allow {allow:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Auth
// ---------------------------------------------------------------------------------------------

#[test]
fn admin_routes_need_the_admin_key() {
    let app = TestApp::spawn();
    let p = app.create_profile("p", "openai", "https://a.example/v1", "sk-1");
    let id = p["id"].as_i64().unwrap();
    let doomed = app.create_profile("doomed", "openai", "https://a.example/v1", "sk-2");
    let routes: Vec<(&str, String, Option<Value>)> = vec![
        ("GET", "/admin/profiles".into(), None),
        (
            "POST",
            "/admin/profiles".into(),
            Some(profile_body("fresh", "openai", "sk-3")),
        ),
        (
            "PATCH",
            format!("/admin/profiles/{id}"),
            Some(json!({"base_url": "https://c.example/v1"})),
        ),
        (
            "POST",
            "/admin/models".into(),
            Some(json!({"profile_name": "p", "model_name": "m"})),
        ),
        ("DELETE", format!("/admin/profiles/{}", doomed["id"]), None),
    ];
    let send = |call: Call, body: &Option<Value>| match body {
        Some(b) => call.json(b),
        None => call.send(),
    };
    for (method, path, body) in &routes {
        let cases = [
            ("no key", app.request(method, path), 401, "invalid_api_key"),
            (
                "wrong key",
                app.request(method, path).key("wrong-key"),
                401,
                "invalid_api_key",
            ),
            (
                "not a bearer",
                app.request(method, path).header("Authorization", ADMIN_KEY),
                401,
                "invalid_api_key",
            ),
            (
                "agent key",
                app.agent(method, path),
                403,
                "admin_key_required",
            ),
        ];
        for (what, call, status, code) in cases {
            let r = send(call, body);
            assert_error(&r, status);
            assert_eq!(
                r.json()["error"]["code"],
                code,
                "{method} {path} with {what}"
            );
        }
    }
    // Nothing above got through.
    assert_eq!(count(&app, "SELECT count(*) FROM profiles"), 2);
    assert_eq!(count(&app, "SELECT count(*) FROM models"), 0);
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM profiles WHERE base_url = 'https://c.example/v1'"
        ),
        0
    );

    let expected = [200, 201, 200, 201, 200];
    for ((method, path, body), status) in routes.iter().zip(expected) {
        let r = send(app.admin(method, path), body);
        assert_eq!(
            r.status,
            status,
            "{method} {path} with the admin key: {}",
            r.text()
        );
    }
    assert_eq!(count(&app, "SELECT count(*) FROM profiles"), 2);
    assert_eq!(count(&app, "SELECT count(*) FROM models"), 1);
}

#[test]
fn agent_routes_take_the_agent_or_the_admin_key() {
    let app = TestApp::spawn();
    app.create_profile("p", "openai", "https://a.example/v1", "sk-1");
    app.add_model("p", "m", json!({}));
    let routes: Vec<(&str, &str, Option<Value>)> = vec![
        ("GET", "/api/models", None),
        (
            "POST",
            "/api/switch",
            Some(switch_body("agent-1", "p", "m")),
        ),
        ("GET", "/api/active?agent_id=agent-1", None),
    ];
    let send = |call: Call, body: &Option<Value>| match body {
        Some(b) => call.json(b),
        None => call.send(),
    };
    for (method, path, body) in &routes {
        for call in [
            app.request(method, path),
            app.request(method, path).key("wrong-key"),
            app.request(method, path).key(&format!("{AGENT_KEY}x")),
        ] {
            let r = send(call, body);
            assert_error(&r, 401);
            assert_eq!(r.json()["error"]["code"], "invalid_api_key");
        }
    }
    assert_eq!(count(&app, "SELECT count(*) FROM audit_switches"), 0);

    for key in [AGENT_KEY, ADMIN_KEY] {
        for (method, path, body) in &routes {
            let r = send(app.request(method, path).key(key), body);
            assert_eq!(r.status, 200, "{method} {path}: {}", r.text());
        }
    }
    let models = app.agent("GET", "/api/models").send().json();
    assert_eq!(models["data"][0]["model_name"], "m");
    assert_eq!(count(&app, "SELECT count(*) FROM audit_switches"), 2);
}

#[test]
fn the_key_is_checked_before_the_body_is_read() {
    let app = TestApp::spawn();
    let r = app.request("POST", "/admin/profiles").body(b"{not json");
    let message = assert_error(&r, 401);
    assert!(
        message.contains("Authorization: Bearer"),
        "names the header it expects: {message}"
    );
    let r = app.agent("POST", "/admin/profiles").body(b"{not json");
    assert_error(&r, 403);
    let r = app.request("POST", "/api/switch").body(b"[]");
    assert_error(&r, 401);
}

// ---------------------------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------------------------

#[test]
fn concurrent_switches_of_one_agent_leave_one_state_row_and_a_consistent_audit_trail() {
    const THREADS: usize = 16;
    let app = TestApp::spawn();
    app.create_profile("p", "openai", "https://a.example/v1", "sk-1");
    let barrier = Barrier::new(THREADS);
    let replies: Vec<Value> = thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|i| {
                let (app, barrier) = (&app, &barrier);
                s.spawn(move || {
                    let model = if i % 2 == 0 {
                        "model-even"
                    } else {
                        "model-odd"
                    };
                    barrier.wait();
                    let r = app
                        .agent("POST", "/api/switch")
                        .json(&switch_body("crowd", "p", model));
                    assert_eq!(r.status, 200, "{}", r.text());
                    r.json()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(replies.len(), THREADS);

    assert_eq!(count(&app, "SELECT count(*) FROM agent_state"), 1);
    assert_eq!(
        count(&app, "SELECT count(*) FROM models"),
        2,
        "each auto-created model exists once"
    );
    let rows = audit_rows(&app, "crowd");
    assert_eq!(rows.len(), THREADS);
    assert_eq!((rows[0].0.clone(), rows[0].1.clone()), (None, None));
    for pair in rows.windows(2) {
        assert_eq!(
            (pair[1].0.clone(), pair[1].1.clone()),
            (Some(pair[0].2.clone()), Some(pair[0].3.clone())),
            "each switch starts where the previous one ended: {rows:?}"
        );
    }
    let last = rows.last().unwrap();
    let state: (String, String) = {
        let row = app
            .db
            .client()
            .query_one(
                "SELECT p.profile_name, m.model_name FROM agent_state s
                 JOIN profiles p ON p.id = s.profile_id JOIN models m ON m.id = s.model_id
                 WHERE s.agent_id = 'crowd'",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(state, (last.2.clone(), last.3.clone()));
    let active = app.agent("GET", "/api/active?agent_id=crowd").send().json();
    assert_eq!(active["model_name"], last.3.as_str());

    // The `previous` each caller saw is exactly one audit row's `from`.
    let mut seen: Vec<Option<String>> = replies
        .iter()
        .map(|r| r["previous"]["model_name"].as_str().map(str::to_string))
        .collect();
    let mut audited: Vec<Option<String>> = rows.iter().map(|r| r.1.clone()).collect();
    seen.sort();
    audited.sort();
    assert_eq!(seen, audited);
}

// ---------------------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------------------

#[test]
fn malformed_or_non_object_bodies_are_400_on_every_route_that_reads_a_body() {
    let app = TestApp::spawn();
    let p = app.create_profile("p", "openai", "https://a.example/v1", "sk-1");
    let patch = format!("/admin/profiles/{}", p["id"]);
    let routes = [
        ("POST", "/admin/profiles"),
        ("PATCH", patch.as_str()),
        ("POST", "/admin/models"),
        ("POST", "/api/switch"),
    ];
    let bodies: [&[u8]; 9] = [
        b"{not json",
        b"{\"profile_name\": \"p\",",
        b"[1, 2]",
        b"[]",
        b"null",
        b"\"a string\"",
        b"42",
        b"",
        b"\xff\xfe{}",
    ];
    for (method, path) in routes {
        for body in bodies {
            let r = app
                .admin(method, path)
                .header("Content-Type", "application/json")
                .body(body);
            assert_error(&r, 400);
            assert!(
                r.error_message().contains("JSON") || r.error_message().contains("body"),
                "{method} {path} {:?}: {}",
                String::from_utf8_lossy(body),
                r.text()
            );
        }
    }
    // Missing fields on the routes that require some.
    for (path, field) in [
        ("/admin/profiles", "profile_name"),
        ("/admin/models", "profile_name"),
        ("/api/switch", "agent_id"),
    ] {
        assert_bad_field(&app.admin("POST", path).json(&json!({})), field);
    }
    let cases = [
        (json!({"profile_name": "p", "model_name": "m"}), "agent_id"),
        (json!({"agent_id": "a", "model_name": "m"}), "profile_name"),
        (json!({"agent_id": "a", "profile_name": "p"}), "model_name"),
        (
            json!({"agent_id": 5, "profile_name": "p", "model_name": "m"}),
            "agent_id",
        ),
        (
            json!({"agent_id": "a", "profile_name": ["p"], "model_name": "m"}),
            "profile_name",
        ),
        (
            json!({"agent_id": "a", "profile_name": "p", "model_name": {}}),
            "model_name",
        ),
        (
            json!({"agent_id": "", "profile_name": "p", "model_name": "m"}),
            "agent_id",
        ),
        (
            json!({"agent_id": "a", "profile_name": "p", "model_name": ""}),
            "model_name",
        ),
    ];
    for (body, field) in cases {
        assert_bad_field(&app.agent("POST", "/api/switch").json(&body), field);
    }
    assert_eq!(count(&app, "SELECT count(*) FROM profiles"), 1);
    assert_eq!(count(&app, "SELECT count(*) FROM models"), 0);
    assert_eq!(count(&app, "SELECT count(*) FROM audit_switches"), 0);
    assert!(!app.logs().contains(" 500 "), "{}", app.logs());
}

#[test]
fn strings_postgres_cannot_store_are_refused_without_a_500() {
    let app = TestApp::spawn();
    let p = app.create_profile("p", "openai", "https://a.example/v1", "sk-1");
    app.add_model("p", "m", json!({}));
    let nul = "a\u{0}b";
    let cases: Vec<(&str, String, Value, u16, &str)> = vec![
        (
            "POST",
            "/admin/models".into(),
            json!({"profile_name": "p", "model_name": "m", "tags": [nul]}),
            400,
            "tags",
        ),
        (
            "POST",
            "/admin/models".into(),
            json!({"profile_name": "p", "model_name": "m", "drop_params": [nul]}),
            400,
            "drop_params",
        ),
        (
            "POST",
            "/admin/models".into(),
            json!({"profile_name": nul, "model_name": "m"}),
            400,
            "profile_name",
        ),
        (
            "POST",
            "/admin/profiles".into(),
            json!({"profile_name": "q", "provider_type": "openai",
                   "base_url": format!("https://x.example/{nul}"),
                   "credentials": {"api_key": "k"}}),
            400,
            "base_url",
        ),
        (
            "PATCH",
            format!("/admin/profiles/{}", p["id"]),
            json!({"base_url": format!("https://x.example/{nul}")}),
            400,
            "base_url",
        ),
        (
            "POST",
            "/api/switch".into(),
            switch_body("agent-1", nul, "m"),
            400,
            "profile_name",
        ),
        (
            "POST",
            "/api/switch".into(),
            switch_body(nul, "p", "m"),
            400,
            "agent_id",
        ),
        (
            "POST",
            "/api/switch".into(),
            switch_body("agent-1", "p", nul),
            400,
            "model_name",
        ),
    ];
    for (method, path, body, status, field) in cases {
        let r = app.admin(method, &path).json(&body);
        let message = assert_error(&r, status);
        assert!(message.contains(field), "{method} {path} {body}: {message}");
    }
    let r = app.agent("GET", "/api/models?profile=a%00b").send();
    assert_error(&r, 404);
    let r = app.agent("GET", "/api/active?agent_id=a%00b").send();
    assert_bad_field(&r, "agent_id");
    let m = app.agent("GET", "/api/models?profile=p").send().json();
    assert_eq!(m["data"][0]["tags"], json!([]));
    assert_eq!(m["data"][0]["drop_params"], json!([]));
    assert_eq!(count(&app, "SELECT count(*) FROM profiles"), 1);
    assert_eq!(count(&app, "SELECT count(*) FROM agent_state"), 0);
}

#[test]
fn bad_profile_names_are_400() {
    let app = TestApp::spawn();
    let long = "a".repeat(65);
    for name in [
        "has space",
        long.as_str(),
        "",
        "slash/y",
        "ünï",
        "tab\there",
        "semi;colon",
    ] {
        let r = create(&app, &profile_body(name, "openai", "sk-1"));
        assert_bad_field(&r, "profile_name");
    }
    assert_eq!(count(&app, "SELECT count(*) FROM profiles"), 0);
    let longest = "b".repeat(64);
    let r = create(&app, &profile_body(&longest, "openai", "sk-1"));
    assert_eq!(r.status, 201, "64 characters are allowed: {}", r.text());
    assert_eq!(r.json()["profile_name"], longest.as_str());
}

#[test]
fn an_over_long_agent_id_is_400() {
    let app = TestApp::spawn();
    app.create_profile("p", "openai", "https://a.example/v1", "sk-1");
    let long = "x".repeat(129);
    let r = app
        .agent("POST", "/api/switch")
        .json(&switch_body(&long, "p", "m"));
    assert_bad_field(&r, "agent_id");
    let r = app
        .agent("GET", &format!("/api/active?agent_id={long}"))
        .send();
    assert_bad_field(&r, "agent_id");
    let r = app
        .agent(
            "GET",
            &format!("/api/active?agent_id={}", "y".repeat(10_000)),
        )
        .send();
    assert!(
        r.status == 400 || r.status == 414 || r.status == 431,
        "{}",
        r.status
    );
    assert_eq!(count(&app, "SELECT count(*) FROM agent_state"), 0);
    assert_eq!(count(&app, "SELECT count(*) FROM models"), 0);

    let longest = "z".repeat(128);
    let body = app.switch(&longest, "p", "m");
    assert_eq!(body["agent_id"], longest.as_str());
}

#[test]
fn a_body_over_max_body_bytes_is_413_in_the_error_shape() {
    let app = TestApp::spawn_with(&[("MAX_BODY_BYTES", "1024")]);
    let padding = "x".repeat(4096);
    let r = app
        .admin("POST", "/admin/profiles")
        .json(&json!({"profile_name": "big", "provider_type": "openai",
                      "credentials": {"api_key": padding}}));
    let message = assert_error(&r, 413);
    assert!(message.contains("1024"), "{message}");
    assert_eq!(r.json()["error"]["code"], "body_too_large");
    assert_eq!(count(&app, "SELECT count(*) FROM profiles"), 0);

    // The limit itself is allowed; one byte more is not.
    let body = serde_json::to_vec(&profile_body("edge", "openai", "k")).unwrap();
    let mut exact = body.clone();
    exact.resize(1024, b' ');
    let r = app.admin("POST", "/admin/profiles").body(&exact);
    assert_eq!(
        r.status,
        201,
        "a body of exactly MAX_BODY_BYTES: {}",
        r.text()
    );
    let mut over = serde_json::to_vec(&profile_body("edge2", "openai", "k")).unwrap();
    over.resize(1025, b' ');
    assert_error(&app.admin("POST", "/admin/profiles").body(&over), 413);

    // A body under the limit still goes through, and so does the next request.
    let r = create(&app, &profile_body("small", "openai", &"k".repeat(800)));
    assert_eq!(r.status, 201, "{}", r.text());
    let r = app.agent("POST", "/api/switch").body(&[b' '; 4096]);
    assert_error(&r, 413);
    let r = app.admin("GET", "/admin/profiles").send();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["data"].as_array().unwrap().len(), 2);
}

#[test]
fn a_chunked_body_over_max_body_bytes_is_413() {
    let app = TestApp::spawn_with(&[("MAX_BODY_BYTES", "1024")]);
    let mut s = TcpStream::connect(("127.0.0.1", app.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let head = format!(
        "POST /admin/models HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {ADMIN_KEY}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    for _ in 0..4 {
        let chunk = [b' '; 1024];
        let _ = s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes());
        let _ = s.write_all(&chunk);
        let _ = s.write_all(b"\r\n");
    }
    let _ = s.write_all(b"0\r\n\r\n");
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"error\""), "{answer}");
}

// ---------------------------------------------------------------------------------------------
// Secrets
// ---------------------------------------------------------------------------------------------

const SECRET_A: &str = "sk-SECRETa1b2c3d4e5f6g7h8";
const SECRET_B: &str = "sk-ant-SECRETz9y8x7w6v5u4";
const SECRET_C: &str = "sk-SECRETrotated00112233";

/// The forms a key might take in a dump: as is, hex, and base64.
fn encodings(key: &str) -> Vec<String> {
    use base64::Engine;
    let hex: String = key.bytes().map(|b| format!("{b:02x}")).collect();
    vec![
        key.to_string(),
        hex,
        base64::engine::general_purpose::STANDARD.encode(key),
    ]
}

fn put_secrets_in(app: &TestApp) {
    let a = app.create_profile("a", "openai", "https://a.example/v1", SECRET_A);
    app.create_profile("b", "anthropic", "https://b.example", SECRET_B);
    let r = app
        .admin("PATCH", &format!("/admin/profiles/{}", a["id"]))
        .json(&json!({"credentials": {"api_key": SECRET_C, "organization": "org-1"}}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!r.text().contains(SECRET_C));
    // A conflicting create carries a key too; it must not end up anywhere either.
    let r = create(app, &profile_body("b", "openai", "sk-SECRETconflict4455"));
    assert_error(&r, 409);
    app.add_model("b", "claude", json!({}));
    app.switch("agent-1", "a", "gpt");
    app.switch("agent-1", "b", "claude");
}

#[test]
fn no_table_holds_an_api_key_in_any_form() {
    let app = TestApp::spawn();
    put_secrets_in(&app);
    let mut client = app.db.client();
    let tables: Vec<String> = client
        .query(
            "SELECT table_name::text FROM information_schema.tables
             WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for t in [
        "profiles",
        "models",
        "agent_state",
        "audit_switches",
        "audit_requests",
    ] {
        assert!(
            tables.iter().any(|n| n == t),
            "table {t} exists: {tables:?}"
        );
    }
    let secrets = [SECRET_A, SECRET_B, SECRET_C, "sk-SECRETconflict4455"];
    for table in &tables {
        let dump: String = client
            .query_one(
                &format!(
                    "SELECT coalesce(string_agg(row_to_json(t)::text, E'\\n'), '') FROM {table} t"
                ),
                &[],
            )
            .unwrap()
            .get(0);
        if table == "profiles" {
            assert!(dump.contains("credentials_enc"), "{dump}");
        }
        for secret in secrets {
            for form in encodings(secret) {
                assert!(
                    !dump.to_lowercase().contains(&form.to_lowercase()),
                    "table {table} holds {secret} as {form}"
                );
            }
        }
        assert!(!dump.contains("SECRET"), "table {table}: {dump}");
    }
    let blobs: Vec<Vec<u8>> = client
        .query("SELECT credentials_enc FROM profiles", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(blobs.len(), 2);
    for blob in &blobs {
        assert!(blob.len() > 28, "nonce, ciphertext and tag");
        for secret in secrets {
            assert!(
                !blob.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "credentials_enc holds {secret} in clear"
            );
            assert!(!blob.windows(6).any(|w| w == b"SECRET"));
        }
        assert!(!blob.windows(7).any(|w| w == b"api_key"));
    }
}

#[test]
fn every_write_of_credentials_uses_a_fresh_nonce() {
    let app = TestApp::spawn();
    let a = app.create_profile("a", "openai", "https://a.example/v1", "sk-same");
    let b = app.create_profile("b", "openai", "https://a.example/v1", "sk-same");
    let blob = |id: &Value| -> Vec<u8> {
        app.db
            .client()
            .query_one(
                "SELECT credentials_enc FROM profiles WHERE id = $1",
                &[&id.as_i64().unwrap()],
            )
            .unwrap()
            .get(0)
    };
    let first = blob(&a["id"]);
    assert_ne!(
        first,
        blob(&b["id"]),
        "two profiles, same key, different blobs"
    );
    assert_ne!(first[..12], blob(&b["id"])[..12], "different nonces");
    let r = app
        .admin("PATCH", &format!("/admin/profiles/{}", a["id"]))
        .json(&json!({"credentials": {"api_key": "sk-same"}}));
    assert_eq!(r.status, 200, "{}", r.text());
    let second = blob(&a["id"]);
    assert_ne!(first, second, "rewriting the same key gives a new blob");
    assert_ne!(first[..12], second[..12], "with a new nonce");
}

#[test]
fn the_server_output_never_contains_a_key() {
    let app = TestApp::spawn();
    put_secrets_in(&app);
    // Rejected keys are not logged either.
    let r = app
        .request("GET", "/admin/profiles")
        .key("sk-SECRETwrongkey998877")
        .send();
    assert_error(&r, 401);
    let r = app.agent("GET", "/admin/profiles").send();
    assert_error(&r, 403);
    // Bodies that fail to parse are not echoed into the log.
    let r = app
        .admin("POST", "/admin/profiles")
        .body(b"{\"credentials\": {\"api_key\": \"sk-SECRETbroken\"");
    assert_error(&r, 400);
    assert!(!r.text().contains("sk-SECRETbroken"), "{}", r.text());

    let logs = app.logs();
    assert!(
        logs.contains("/admin/profiles"),
        "requests are logged: {logs}"
    );
    for secret in [
        SECRET_A,
        SECRET_B,
        SECRET_C,
        "sk-SECRETconflict4455",
        "sk-SECRETwrongkey998877",
        "sk-SECRETbroken",
        ADMIN_KEY,
        AGENT_KEY,
    ] {
        assert!(!logs.contains(secret), "the output shows {secret}:\n{logs}");
    }
    assert!(!logs.contains("SECRET"), "{logs}");
}

// ---------------------------------------------------------------------------------------------
// Re-keying
// ---------------------------------------------------------------------------------------------

#[test]
fn credentials_sealed_under_one_key_do_not_open_under_another_and_can_be_rekeyed() {
    use switcher_api::app::App;
    use switcher_api::config::Config;

    const NEW_ADMIN_KEY: &str = "another-admin-key-5566778899";
    let app = TestApp::spawn();
    let p = app.create_profile("p", "openai", "https://a.example/v1", "sk-first-key");
    let id = p["id"].as_i64().unwrap();
    let blob = |app: &TestApp| -> Vec<u8> {
        app.db
            .client()
            .query_one("SELECT credentials_enc FROM profiles WHERE id = $1", &[&id])
            .unwrap()
            .get(0)
    };
    let sealed_before = blob(&app);
    // The service's own cipher, under either admin key (no ROUTER_KMS_KEY: derived from it).
    let opener = |admin_key: &str| {
        let config = Config::from_lookup(|name| match name {
            "ROUTER_ADMIN_KEY" => Some(admin_key.to_string()),
            "ROUTER_AGENT_KEY" => Some(AGENT_KEY.to_string()),
            "DATABASE_URL" => Some(app.db.url.clone()),
            _ => None,
        })
        .unwrap();
        let pg = switcher_api::db::parse_url(&config.database_url).unwrap();
        let journal = switcher_api::journal::Journal::open(&empty_dir(), 1 << 20).unwrap();
        App::new(
            config,
            switcher_api::db::pool(pg, 1),
            std::sync::Arc::new(journal),
        )
    };
    let old_cipher = opener(ADMIN_KEY);
    let new_cipher = opener(NEW_ADMIN_KEY);
    let opened = old_cipher
        .open_credentials(id, "p", &sealed_before)
        .unwrap();
    assert_eq!(opened["api_key"], "sk-first-key");
    let e = new_cipher
        .open_credentials(id, "p", &sealed_before)
        .unwrap_err();
    assert!(
        e.message().contains("'p'"),
        "the error names the profile: {e}"
    );
    assert!(!e.message().contains("sk-first-key"));
    // Bound to its row: the same blob does not open as another profile's.
    assert!(old_cipher
        .open_credentials(id + 1, "q", &sealed_before)
        .is_err());

    let app = app.restart_with(&[("ROUTER_ADMIN_KEY", NEW_ADMIN_KEY)]);
    let r = app
        .request("GET", "/admin/profiles")
        .key(NEW_ADMIN_KEY)
        .send();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"], json!([p]));
    assert_error(&app.admin("GET", "/admin/profiles").send(), 401);

    let r = app
        .request("PATCH", &format!("/admin/profiles/{id}"))
        .key(NEW_ADMIN_KEY)
        .json(&json!({"credentials": {"api_key": "sk-second-key"}}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_profile_shape(&r.json());
    let sealed_after = blob(&app);
    assert_ne!(sealed_after, sealed_before);
    let opened = new_cipher.open_credentials(id, "p", &sealed_after).unwrap();
    assert_eq!(opened["api_key"], "sk-second-key");
    assert!(old_cipher.open_credentials(id, "p", &sealed_after).is_err());

    // The rest of the control plane works on the old data.
    let r = app
        .request("POST", "/admin/models")
        .key(NEW_ADMIN_KEY)
        .json(&json!({"profile_name": "p", "model_name": "m"}));
    assert_eq!(r.status, 201, "{}", r.text());
    app.switch("agent-1", "p", "m");
}

// ---------------------------------------------------------------------------------------------
// Slow clients
// ---------------------------------------------------------------------------------------------

#[test]
fn stalled_request_bodies_do_not_starve_the_workers() {
    let app = TestApp::spawn_with(&[("WORKERS", "2"), ("REQUEST_READ_TIMEOUT_MS", "500")]);
    let stalled: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", app.port)).unwrap();
            let head = format!(
                "POST /api/switch HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                 Authorization: Bearer {AGENT_KEY}\r\nContent-Type: application/json\r\n\
                 Content-Length: 100000\r\n\r\n"
            );
            s.write_all(head.as_bytes()).unwrap();
            s
        })
        .collect();
    thread::sleep(Duration::from_millis(200));

    let (tx, rx) = mpsc::channel();
    let url = app.url.clone();
    thread::spawn(move || {
        let r = crate::support::client()
            .get(format!("{url}/api/active?agent_id=x"))
            .header("Authorization", format!("Bearer {AGENT_KEY}"))
            .call();
        let _ = tx.send(match r {
            Ok(r) => (
                r.status().as_u16(),
                r.into_body().read_to_string().unwrap_or_default(),
            ),
            Err(e) => (0, e.to_string()),
        });
    });
    let (status, body) = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("a normal request is answered beside stalled ones within 30 s");
    assert_eq!(status, 404, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("No active model set for agent_id")),
        "{body}"
    );

    for (i, mut s) in stalled.into_iter().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut answer = Vec::new();
        match s.read_to_end(&mut answer) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("stalled connection {i} was neither answered nor closed: {e}"),
        }
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
            "stalled connection {i} got: {answer}"
        );
    }
    // The workers are all free again.
    let r = app.request("GET", "/healthz").send();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(count(&app, "SELECT count(*) FROM audit_switches"), 0);
}

/// Opens a connection that sends `head` (which declares a body) and then nothing.
fn stall(app: &TestApp, head: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", app.port)).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s
}

/// A request on a fresh connection, answered within `limit` or `None`.
fn answered_within(app: &TestApp, path: &str, limit: Duration) -> Option<(u16, String)> {
    let (tx, rx) = mpsc::channel();
    let url = format!("{}{path}", app.url);
    thread::spawn(move || {
        let r = crate::support::client()
            .get(&url)
            .header("Authorization", format!("Bearer {AGENT_KEY}"))
            .call();
        let _ = tx.send(match r {
            Ok(r) => (
                r.status().as_u16(),
                r.into_body().read_to_string().unwrap_or_default(),
            ),
            Err(e) => (0, e.to_string()),
        });
    });
    rx.recv_timeout(limit).ok()
}

/// Reads a stalled connection to its end: it must be closed within 20 s.
fn read_until_closed(mut s: TcpStream, what: &str) -> String {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut answer = Vec::new();
    match s.read_to_end(&mut answer) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!(
            "{what} was not closed: {e}; got {:?}",
            String::from_utf8_lossy(&answer)
        ),
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn stalled_bodies_on_routes_that_read_none_do_not_starve_the_workers() {
    let app = TestApp::spawn_with(&[("WORKERS", "2"), ("REQUEST_READ_TIMEOUT_MS", "500")]);
    let heads = [
        "GET /api/active?agent_id=x HTTP/1.1",
        "GET /healthz HTTP/1.1",
        "GET /admin/profiles HTTP/1.1",
        "DELETE /admin/profiles/12345 HTTP/1.1",
    ];
    let stalled: Vec<TcpStream> = heads
        .iter()
        .map(|line| {
            let key = if line.contains("/admin/") {
                ADMIN_KEY
            } else {
                AGENT_KEY
            };
            stall(
                &app,
                &format!(
                    "{line}\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n\
                     Content-Length: 100000\r\n\r\n"
                ),
            )
        })
        .collect();
    thread::sleep(Duration::from_millis(200));

    let (status, body) = answered_within(&app, "/api/active?agent_id=x", Duration::from_secs(30))
        .expect("a normal request is answered beside stalled ones within 30 s");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("No active model set for agent_id"), "{body}");
    for (s, head) in stalled.into_iter().zip(heads) {
        let answer = read_until_closed(s, head);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 "),
            "{head}: {answer}"
        );
    }
    let r = app.request("GET", "/healthz").send();
    assert_eq!(r.status, 200, "{}", r.text());
}

// ---------------------------------------------------------------------------------------------
// Migrations and configuration
// ---------------------------------------------------------------------------------------------

fn sql_files() -> Vec<String> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/sql");
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".sql"))
        .collect();
    files.sort();
    files
}

fn migrate_env(db: &TestDb) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", db.url.clone()),
        ("ROUTER_ADMIN_KEY", ADMIN_KEY.to_string()),
        ("ROUTER_AGENT_KEY", AGENT_KEY.to_string()),
        ("HOST", "127.0.0.1".to_string()),
        ("PORT", "0".to_string()),
    ]
}

fn run(args: &[&str], env: &[(&'static str, String)]) -> Exit {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    run_binary(args, &env, Duration::from_secs(90))
}

fn ledger(db: &TestDb) -> Vec<String> {
    db.client()
        .query("SELECT name FROM schema_migrations ORDER BY version", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[test]
fn migrate_twice_succeeds_and_records_each_file_once() {
    let db = TestDb::create();
    let env = migrate_env(&db);
    let first = run(&["migrate"], &env);
    assert_eq!(first.code, Some(0), "{first:?}");
    assert!(first.stdout.contains("0001_init.sql"), "{first:?}");
    let second = run(&["migrate"], &env);
    assert_eq!(second.code, Some(0), "{second:?}");
    assert!(
        !second.stdout.contains("applied"),
        "nothing applied twice: {second:?}"
    );
    assert_eq!(ledger(&db), sql_files());
    let tables: i64 = db
        .client()
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'
             AND table_name IN ('profiles', 'models', 'agent_state', 'audit_switches',
                                'audit_requests')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(tables, 5);
    // The server starts on the migrated database and applies nothing more.
    let app = TestApp::spawn_on(db, &[]);
    assert_eq!(app.request("GET", "/healthz").send().status, 200);
    assert_eq!(ledger(&app.db), sql_files());
}

/// The audit table holds a prompt's hash, never its text: `prompt_sha256` takes exactly 64
/// lowercase hex characters (or nothing), whatever writes the row.
#[test]
fn the_audit_table_refuses_anything_but_a_hex_sha256_as_the_prompt_hash() {
    let db = TestDb::create();
    assert_eq!(run(&["migrate"], &migrate_env(&db)).code, Some(0));
    let mut client = db.client();
    let hash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let mut insert = |value: Option<String>| {
        client.execute(
            "INSERT INTO audit_requests (agent_id, status, latency_ms, prompt_sha256)
             VALUES ('a', 200, 1, $1)",
            &[&value],
        )
    };
    assert!(insert(Some(hash.to_string())).is_ok());
    assert!(insert(None).is_ok());
    for bad in [
        hash.to_uppercase(),
        hash[..63].to_string(),
        format!("{hash}0"),
        format!("{} ", &hash[..63]),
        format!("{}é", &hash[..63]),
        // 64 bytes, 63 characters.
        format!("{}é", &hash[..62]),
        format!("{}g", &hash[..63]),
        "Say hello.".to_string(),
        String::new(),
    ] {
        let e = insert(Some(bad.clone())).expect_err(&bad);
        let db_error = e.as_db_error().expect("a refusal by the database");
        assert_eq!(
            db_error.constraint(),
            Some("audit_requests_prompt_sha256_check"),
            "{bad:?}: {db_error}"
        );
    }
}

#[test]
fn a_changed_migration_checksum_stops_migrate_and_the_server() {
    let db = TestDb::create();
    let env = migrate_env(&db);
    assert_eq!(run(&["migrate"], &env).code, Some(0));
    db.client()
        .execute(
            "UPDATE schema_migrations SET checksum = repeat('0', 64) WHERE name = '0001_init.sql'",
            &[],
        )
        .unwrap();
    for args in [&["migrate"][..], &["serve"][..], &[][..]] {
        let exit = run(args, &env);
        assert!(
            exit.code.is_some_and(|c| c != 0),
            "{args:?} must refuse to start: {exit:?}"
        );
        assert!(exit.stderr.contains("0001_init.sql"), "{args:?}: {exit:?}");
        assert!(!exit.stderr.contains("listening"), "{exit:?}");
    }
    let checksum: String = db
        .client()
        .query_one(
            "SELECT checksum FROM schema_migrations WHERE name = '0001_init.sql'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(checksum, "0".repeat(64), "the ledger is left as it was");
}

/// Runs the server with `env` and expects it to refuse with one stderr line naming `variable`.
fn assert_refuses_to_start(env: &[(&'static str, String)], variable: &str, secrets: &[&str]) {
    let exit = run(&[], env);
    assert!(exit.code.is_some_and(|c| c != 0), "{exit:?}");
    let lines: Vec<&str> = exit
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {exit:?}");
    assert!(
        lines[0].contains(variable),
        "the line names {variable}: {exit:?}"
    );
    for secret in secrets {
        assert!(!exit.stderr.contains(secret), "{exit:?}");
    }
}

fn config_env(vars: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    let mut env = vec![
        // A database that does not exist: a binary that got past its configuration would fail
        // on it without touching any real database.
        (
            "DATABASE_URL",
            database_url_for("switcher_test_never_created"),
        ),
        ("HOST", "127.0.0.1".to_string()),
        ("PORT", "0".to_string()),
    ];
    env.extend(vars.iter().map(|(k, v)| (*k, v.to_string())));
    env
}

#[test]
fn a_missing_admin_key_stops_the_binary_with_one_line_naming_it() {
    let env = config_env(&[("ROUTER_AGENT_KEY", AGENT_KEY)]);
    assert_refuses_to_start(&env, "ROUTER_ADMIN_KEY", &[AGENT_KEY]);
    let env = config_env(&[("ROUTER_ADMIN_KEY", ""), ("ROUTER_AGENT_KEY", AGENT_KEY)]);
    assert_refuses_to_start(&env, "ROUTER_ADMIN_KEY", &[AGENT_KEY]);
}

#[test]
fn equal_admin_and_agent_keys_stop_the_binary_with_one_line() {
    let env = config_env(&[
        ("ROUTER_ADMIN_KEY", ADMIN_KEY),
        ("ROUTER_AGENT_KEY", ADMIN_KEY),
    ]);
    assert_refuses_to_start(&env, "ROUTER_AGENT_KEY", &[ADMIN_KEY]);
}

#[test]
fn a_kms_key_that_is_not_base64_of_32_bytes_stops_the_binary() {
    use base64::Engine;
    let short = base64::engine::general_purpose::STANDARD.encode([7u8; 16]);
    let long = base64::engine::general_purpose::STANDARD.encode([7u8; 33]);
    for bad in ["not base64 at all!!", short.as_str(), long.as_str()] {
        let env = config_env(&[
            ("ROUTER_ADMIN_KEY", ADMIN_KEY),
            ("ROUTER_AGENT_KEY", AGENT_KEY),
            ("ROUTER_KMS_KEY", bad),
        ]);
        assert_refuses_to_start(&env, "ROUTER_KMS_KEY", &[ADMIN_KEY, AGENT_KEY]);
    }
    // And the migrate command checks the same configuration.
    let env = config_env(&[
        ("ROUTER_ADMIN_KEY", ADMIN_KEY),
        ("ROUTER_AGENT_KEY", AGENT_KEY),
        ("ROUTER_KMS_KEY", short.as_str()),
    ]);
    let exit = run(&["migrate"], &env);
    assert!(exit.code.is_some_and(|c| c != 0), "{exit:?}");
    assert!(exit.stderr.contains("ROUTER_KMS_KEY"), "{exit:?}");
}

#[test]
fn control_plane_bodies_refuse_unknown_fields_naming_them_and_the_allowed_ones() {
    let app = TestApp::spawn();
    let id = app.create_profile("main", "openai", "http://127.0.0.1:9/v1", "sk-test-main")["id"]
        .as_i64()
        .unwrap();
    app.add_model("main", "gpt-4o-mini", json!({}));
    app.switch("bot", "main", "gpt-4o-mini");

    let cases: Vec<(&str, String, Value, &str, &str)> = vec![
        (
            "POST",
            "/admin/profiles".into(),
            json!({"profile_name": "typo", "provider_type": "openai",
                   "base_ur": "http://127.0.0.1:9/v1", "credentials": {"api_key": "sk-x"}}),
            "base_ur",
            "base_url",
        ),
        (
            "PATCH",
            format!("/admin/profiles/{id}"),
            json!({"base_ur": "http://127.0.0.1:9/v1"}),
            "base_ur",
            "credentials",
        ),
        (
            "POST",
            "/admin/models".into(),
            json!({"profile_name": "main", "model_name": "gpt-4o-mini", "enable": false}),
            "enable",
            "enabled",
        ),
        (
            "POST",
            "/api/switch".into(),
            json!({"agent_id": "bot", "profile_name": "main", "model_name": "gpt-4o-mini",
                   "agent": "other"}),
            "agent",
            "model_name",
        ),
        (
            "POST",
            "/api/rollback".into(),
            json!({"agent_id": "bot", "to_switch": 1}),
            "to_switch",
            "to_switch_id",
        ),
        (
            "POST",
            "/admin/agent-keys".into(),
            json!({"agent_id": "bot", "label": "laptop"}),
            "label",
            "name",
        ),
    ];
    for (method, path, body, unknown, allowed) in cases {
        let r = app.admin(method, &path).json(&body);
        let message = assert_error(&r, 400);
        assert!(
            message.contains(&format!("`{unknown}`")) && message.contains(&format!("`{allowed}`")),
            "{method} {path}: the message names `{unknown}` and the allowed `{allowed}`: {message}"
        );
    }

    // Nothing was written by the refused bodies.
    let profiles = app.admin("GET", "/admin/profiles").send().json();
    assert_eq!(profiles["data"].as_array().unwrap().len(), 1, "{profiles}");
    let models = app.agent("GET", "/api/models").send().json();
    assert_eq!(models["data"][0]["enabled"], json!(true), "{models}");
    let keys = app.admin("GET", "/admin/agent-keys").send().json();
    assert_eq!(keys["data"].as_array().unwrap().len(), 0, "{keys}");
    let history = app.admin("GET", "/api/history?agent_id=bot").send().json();
    assert_eq!(history["data"].as_array().unwrap().len(), 1, "{history}");
}
