//! The operator's side: agents, history, rollback, agent keys, the request log, the console.

use std::sync::Barrier;
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Checks the status and the error shape; returns `error.message`.
fn error(r: &Reply, status: u16) -> String {
    assert_eq!(r.status, status, "unexpected status; body: {}", r.text());
    let body = r.json();
    assert!(body["error"]["code"].is_string(), "{body}");
    body["error"]["message"].as_str().unwrap_or("").to_string()
}

fn keys(v: &Value) -> Vec<String> {
    let mut keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    keys
}

fn count(app: &TestApp, sql: &str) -> i64 {
    app.db.client().query_one(sql, &[]).unwrap().get(0)
}

fn rollback(app: &TestApp, body: Value) -> Reply {
    app.agent("POST", "/api/rollback").json(&body)
}

fn history(app: &TestApp, agent: &str) -> Vec<Value> {
    let r = app
        .agent("GET", &format!("/api/history?agent_id={agent}"))
        .send();
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["data"].as_array().unwrap().clone()
}

fn active_model(app: &TestApp, agent: &str) -> String {
    let r = app
        .agent("GET", &format!("/api/active?agent_id={agent}"))
        .send();
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["model_name"].as_str().unwrap().to_string()
}

/// An app with profile `p` (openai) and agent `a` switched m1 → m2 → m3.
fn three_switches() -> TestApp {
    let app = TestApp::spawn();
    app.create_profile("p", "openai", "https://a.example/v1", "sk-1");
    for m in ["m1", "m2", "m3"] {
        app.switch("a", "p", m);
    }
    app
}

fn new_key(app: &TestApp, agent: &str) -> Value {
    let r = app
        .admin("POST", "/admin/agent-keys")
        .json(&json!({"agent_id": agent, "name": format!("{agent}'s key")}));
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()
}

fn completion() -> Value {
    json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1_700_000_000,
        "model": "x",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    })
}

fn chat(app: &TestApp, key: &str, agent: Option<&str>) -> Reply {
    let mut call = app.request("POST", "/v1/chat/completions").key(key);
    if let Some(agent) = agent {
        call = call.header("x-agent-id", agent);
    }
    call.json(&json!({"model": "ignored", "messages": [{"role": "user", "content": "hi"}]}))
}

// ---------------------------------------------------------------------------------------------
// Agents and history
// ---------------------------------------------------------------------------------------------

#[test]
fn agents_lists_every_agent_with_a_state_ordered_by_agent_id() {
    let app = TestApp::spawn();
    let r = app.agent("GET", "/api/agents").send();
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"data": []}));
    app.create_profile("p", "openai", "https://a.example/v1", "sk-1");
    app.switch("zed", "p", "m1");
    app.switch("alpha", "p", "m2");
    let data = app.admin("GET", "/api/agents").send().json()["data"].clone();
    let ids: Vec<&str> = data
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["agent_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["alpha", "zed"]);
    assert_eq!(
        keys(&data[0]),
        [
            "agent_id",
            "model_name",
            "profile_name",
            "provider_type",
            "updated_at"
        ]
    );
    assert_eq!(data[0]["model_name"], "m2");
    assert_eq!(data[0]["provider_type"], "openai");
    let anonymous = app.request("GET", "/api/agents").send();
    assert!(error(&anonymous, 401).starts_with("missing or unknown API key"));
}

#[test]
fn history_is_newest_first_with_from_to_and_rollback_of() {
    let app = three_switches();
    let h = history(&app, "a");
    assert_eq!(h.len(), 3);
    assert_eq!(
        keys(&h[0]),
        ["agent_id", "from", "id", "rollback_of", "switched_at", "to"]
    );
    assert!(h[0]["id"].as_i64() > h[1]["id"].as_i64());
    assert_eq!(
        h[0]["from"],
        json!({"profile_name": "p", "provider_type": "openai", "model_name": "m2"})
    );
    assert_eq!(h[0]["to"]["model_name"], "m3");
    assert_eq!(h[2]["from"], Value::Null);
    assert_eq!(h[2]["to"]["model_name"], "m1");
    assert!(h.iter().all(|s| s["rollback_of"].is_null()));

    let r = app.agent("GET", "/api/history?agent_id=a&limit=2").send();
    assert_eq!(r.json()["data"].as_array().unwrap().len(), 2);
    assert_eq!(history(&app, "nobody"), Vec::<Value>::new());
}

#[test]
fn history_refuses_a_missing_agent_or_a_limit_out_of_range() {
    let app = TestApp::spawn();
    let m = error(&app.agent("GET", "/api/history").send(), 400);
    assert!(m.contains("agent_id"), "{m}");
    for limit in ["0", "1001", "x", "-3"] {
        let r = app
            .agent("GET", &format!("/api/history?agent_id=a&limit={limit}"))
            .send();
        assert!(error(&r, 400).contains("limit"));
    }
    let r = app
        .agent("GET", "/api/history?agent_id=a&limit=1000")
        .send();
    assert_eq!(r.status, 200);
    let anonymous = app.request("GET", "/api/history?agent_id=a").send();
    assert!(error(&anonymous, 401).starts_with("missing or unknown API key"));
}

// ---------------------------------------------------------------------------------------------
// Rollback
// ---------------------------------------------------------------------------------------------

#[test]
fn rollback_after_three_switches_goes_back_one_step_and_is_audited() {
    let app = three_switches();
    let latest = history(&app, "a")[0]["id"].as_i64().unwrap();
    let r = rollback(&app, json!({"agent_id": "a"}));
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
    assert_eq!(body["model_name"], "m2");
    assert_eq!(body["previous"]["model_name"], "m3");
    assert_eq!(active_model(&app, "a"), "m2");
    let h = history(&app, "a");
    assert_eq!(h.len(), 4);
    assert_eq!(h[0]["rollback_of"], latest);
    assert_eq!(h[0]["from"]["model_name"], "m3");
    assert_eq!(h[0]["to"]["model_name"], "m2");

    // A rollback of the rollback returns to where the agent was before it.
    let r = rollback(&app, json!({"agent_id": "a"}));
    assert_eq!(r.json()["model_name"], "m3", "{}", r.text());
    assert_eq!(active_model(&app, "a"), "m3");
    assert_eq!(history(&app, "a")[0]["rollback_of"], h[0]["id"]);
}

#[test]
fn rollback_to_a_chosen_switch_goes_to_the_state_it_produced() {
    let app = three_switches();
    let h = history(&app, "a");
    let first = h[2]["id"].as_i64().unwrap();
    let r = rollback(&app, json!({"agent_id": "a", "to_switch_id": first}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model_name"], "m1");
    assert_eq!(r.json()["previous"]["model_name"], "m3");
    assert_eq!(active_model(&app, "a"), "m1");
    let h = history(&app, "a");
    assert_eq!(h[0]["rollback_of"], first);
    assert_eq!(h[0]["to"]["model_name"], "m1");

    // The proxy's state follows (this instance serves it before answering).
    let snapshot_model =
        app.admin("GET", "/api/agents").send().json()["data"][0]["model_name"].clone();
    assert_eq!(snapshot_model, "m1");
}

#[test]
fn rollback_without_a_state_is_404_and_after_one_switch_is_409() {
    let app = TestApp::spawn();
    let r = rollback(&app, json!({"agent_id": "ghost"}));
    let m = error(&r, 404);
    assert!(
        m.starts_with("No active model set for agent_id 'ghost'"),
        "{m}"
    );
    app.create_profile("p", "openai", "https://a.example/v1", "sk-1");
    app.switch("once", "p", "m1");
    let m = error(&rollback(&app, json!({"agent_id": "once"})), 409);
    assert!(m.contains("once"), "{m}");
    assert_eq!(count(&app, "SELECT count(*) FROM audit_switches"), 1);
}

#[test]
fn rollback_to_an_unknown_or_another_agents_switch_is_404() {
    let app = three_switches();
    app.switch("b", "p", "m9");
    let theirs = history(&app, "b")[0]["id"].as_i64().unwrap();
    for id in [theirs, 999_999] {
        let r = rollback(&app, json!({"agent_id": "a", "to_switch_id": id}));
        let m = error(&r, 404);
        assert!(m.contains(&id.to_string()), "{m}");
    }
    assert_eq!(active_model(&app, "a"), "m3");
    assert_eq!(count(&app, "SELECT count(*) FROM audit_switches"), 4);
}

#[test]
fn rollback_bodies_are_checked_field_by_field() {
    let app = three_switches();
    for (body, field) in [
        (json!({}), "agent_id"),
        (json!({"agent_id": 5}), "agent_id"),
        (json!({"agent_id": ""}), "agent_id"),
        (
            json!({"agent_id": "a", "to_switch_id": "1"}),
            "to_switch_id",
        ),
        (json!({"agent_id": "a", "to_switch_id": 0}), "to_switch_id"),
        (
            json!({"agent_id": "a", "to_switch_id": 1.5}),
            "to_switch_id",
        ),
        (json!({"agent_id": "a", "extra": true}), "extra"),
    ] {
        let m = error(&rollback(&app, body.clone()), 400);
        assert!(m.contains(field), "{body}: {m}");
    }
    let r = app.agent("POST", "/api/rollback").body(b"{nope");
    assert_eq!(r.status, 400);
    let anonymous = app
        .request("POST", "/api/rollback")
        .json(&json!({"agent_id": "a"}));
    assert!(error(&anonymous, 401).starts_with("missing or unknown API key"));
    assert_eq!(app.agent("GET", "/api/rollback").send().status, 405);
    assert_eq!(active_model(&app, "a"), "m3");
}

#[test]
fn rollback_to_a_deleted_model_or_profile_is_409_naming_it_and_changes_nothing() {
    let app = TestApp::spawn();
    app.create_profile("old", "openai", "https://a.example/v1", "sk-1");
    app.create_profile("new", "openai", "https://b.example/v1", "sk-2");
    app.switch("a", "old", "m-old");
    app.switch("a", "new", "m-gone");
    app.switch("a", "new", "m-now");

    // The model the latest switch came from is gone (a model has no delete route).
    app.db
        .client()
        .execute("DELETE FROM models WHERE model_name = 'm-gone'", &[])
        .unwrap();
    let before = count(&app, "SELECT count(*) FROM audit_switches");
    let m = error(&rollback(&app, json!({"agent_id": "a"})), 409);
    assert!(m.contains("m-gone") && m.contains("new"), "{m}");

    // The profile of the first switch is gone.
    let old_id = app.admin("GET", "/admin/profiles").send().json()["data"][0]["id"].clone();
    let r = app
        .admin("DELETE", &format!("/admin/profiles/{old_id}"))
        .send();
    assert_eq!(r.status, 200, "{}", r.text());
    let first = history(&app, "a")[2]["id"].as_i64().unwrap();
    let m = error(
        &rollback(&app, json!({"agent_id": "a", "to_switch_id": first})),
        409,
    );
    assert!(m.contains("'old'"), "{m}");

    assert_eq!(count(&app, "SELECT count(*) FROM audit_switches"), before);
    assert_eq!(active_model(&app, "a"), "m-now");
}

#[test]
fn rollback_to_a_disabled_model_is_409_and_changes_nothing() {
    let app = three_switches();
    app.add_model("p", "m2", json!({"enabled": false}));
    let m = error(&rollback(&app, json!({"agent_id": "a"})), 409);
    assert!(m.contains("m2") && m.contains("disabled"), "{m}");
    assert_eq!(active_model(&app, "a"), "m3");
    assert_eq!(history(&app, "a").len(), 3);
}

#[test]
fn concurrent_rollbacks_and_switches_of_one_agent_leave_one_state_and_one_audit_row_each() {
    const THREADS: usize = 16;
    let app = TestApp::spawn();
    app.create_profile("p", "openai", "https://a.example/v1", "sk-1");
    app.switch("crowd", "p", "start-1");
    app.switch("crowd", "p", "start-2");
    let barrier = Barrier::new(THREADS);
    thread::scope(|s| {
        for i in 0..THREADS {
            let (app, barrier) = (&app, &barrier);
            s.spawn(move || {
                barrier.wait();
                let r = if i % 2 == 0 {
                    rollback(app, json!({"agent_id": "crowd"}))
                } else {
                    app.agent("POST", "/api/switch").json(&json!({
                        "agent_id": "crowd", "profile_name": "p", "model_name": format!("m{i}")
                    }))
                };
                assert_eq!(r.status, 200, "{}", r.text());
            });
        }
    });

    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM agent_state WHERE agent_id = 'crowd'"
        ),
        1
    );
    let mut h = history(&app, "crowd");
    h.reverse();
    assert_eq!(
        h.len(),
        2 + THREADS,
        "one audit row per switch and rollback"
    );
    assert_eq!(
        h.iter().filter(|s| !s["rollback_of"].is_null()).count(),
        THREADS / 2
    );
    for pair in h.windows(2) {
        let (before, after) = (&pair[0], &pair[1]);
        assert_eq!(
            after["from"], before["to"],
            "each starts where the last ended: {h:?}"
        );
        if !after["rollback_of"].is_null() {
            // A rollback undoes the switch just before it.
            assert_eq!(after["rollback_of"], before["id"]);
            assert_eq!(after["to"], before["from"]);
        }
    }
    let last = h.last().unwrap();
    assert_eq!(
        active_model(&app, "crowd"),
        last["to"]["model_name"].as_str().unwrap()
    );
}

// ---------------------------------------------------------------------------------------------
// Agent keys
// ---------------------------------------------------------------------------------------------

#[test]
fn an_agent_key_is_created_once_listed_without_its_key_and_stored_as_its_sha256_only() {
    let app = TestApp::spawn();
    let created = new_key(&app, "bob");
    assert_eq!(
        keys(&created),
        ["agent_id", "created_at", "id", "key", "name"]
    );
    assert_eq!(created["agent_id"], "bob");
    assert_eq!(created["name"], "bob's key");
    let key = created["key"].as_str().unwrap();
    let rest = key.strip_prefix("sk-sw-").expect("the key's prefix");
    assert!(rest.len() >= 43, "{key}");
    assert!(rest
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));

    let unnamed = app
        .admin("POST", "/admin/agent-keys")
        .json(&json!({"agent_id": "carol"}));
    assert_eq!(unnamed.status, 201);
    assert_eq!(unnamed.json()["name"], Value::Null);
    assert_ne!(unnamed.json()["key"], created["key"]);

    let list = app.admin("GET", "/admin/agent-keys").send();
    assert_eq!(list.status, 200);
    assert!(!list.text().contains(rest), "the key is shown once only");
    let data = list.json()["data"].clone();
    assert_eq!(data.as_array().unwrap().len(), 2);
    assert_eq!(
        keys(&data[0]),
        ["agent_id", "created_at", "id", "last_used_at", "name"]
    );
    assert_eq!(data[0]["last_used_at"], Value::Null);
    let only_bob = app
        .admin("GET", "/admin/agent-keys?agent_id=bob")
        .send()
        .json();
    assert_eq!(only_bob["data"].as_array().unwrap().len(), 1);

    let mut db = app.db.client();
    let row = db
        .query_one(
            "SELECT key_sha256, encode(key_sha256, 'hex') FROM agent_keys WHERE agent_id = 'bob'",
            &[],
        )
        .unwrap();
    let stored: Vec<u8> = row.get(0);
    assert_eq!(stored.len(), 32);
    let hex: String = row.get(1);
    assert_eq!(hex, switcher_api::crypto::sha256_hex(key.as_bytes()));
    let dump: String = db
        .query_one("SELECT string_agg(t::text, ' ') FROM agent_keys t", &[])
        .unwrap()
        .get(0);
    assert!(!dump.contains(rest), "the database never holds the key");
}

#[test]
fn agent_key_bodies_are_checked_and_the_routes_need_the_admin_key() {
    let app = TestApp::spawn();
    for (body, field) in [
        (json!({}), "agent_id"),
        (json!({"agent_id": ""}), "agent_id"),
        (json!({"agent_id": 1}), "agent_id"),
        (json!({"agent_id": "a", "name": 3}), "name"),
        (json!({"agent_id": "a", "name": ""}), "name"),
        (json!({"agent_id": "a", "key": "mine"}), "key"),
    ] {
        let r = app.admin("POST", "/admin/agent-keys").json(&body);
        assert!(error(&r, 400).contains(field), "{body}");
    }
    let created = new_key(&app, "bob");
    let own = created["key"].as_str().unwrap();
    for (method, path) in [
        ("GET", "/admin/agent-keys".to_string()),
        ("POST", "/admin/agent-keys".to_string()),
        ("DELETE", format!("/admin/agent-keys/{}", created["id"])),
        ("GET", "/admin/requests".to_string()),
        ("GET", "/admin/profiles".to_string()),
    ] {
        let body = json!({"agent_id": "bob"});
        assert_eq!(
            app.agent(method, &path).json(&body).status,
            403,
            "{method} {path}"
        );
        assert_eq!(
            app.request(method, &path).key(own).json(&body).status,
            403,
            "{method} {path}"
        );
        assert_eq!(
            app.request(method, &path).json(&body).status,
            401,
            "{method} {path}"
        );
    }
    assert_eq!(count(&app, "SELECT count(*) FROM agent_keys"), 1);
    assert_eq!(app.admin("PUT", "/admin/agent-keys").send().status, 405);
}

#[test]
fn an_agent_key_acts_for_its_own_agent_only_on_every_route() {
    let upstream = FakeUpstream::start(|_| Answer::Json(200, completion()));
    let app = TestApp::spawn();
    app.create_profile("p", "openai", &upstream.url, "sk-up");
    app.switch("bob", "p", "m-bob");
    app.switch("alice", "p", "m-alice");
    app.switch("bob", "p", "m-bob-2");
    let key = new_key(&app, "bob")["key"].as_str().unwrap().to_string();

    // The proxy: the key's agent, with or without a matching x-agent-id.
    let r = chat(&app, &key, None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-switcher-model"), Some("m-bob-2"));
    assert_eq!(upstream.last().json()["model"], "m-bob-2");
    assert_eq!(chat(&app, &key, Some("bob")).status, 200);
    let r = chat(&app, &key, Some("alice"));
    let m = error(&r, 403);
    assert!(m.contains("bob") && m.contains("alice"), "{m}");
    assert_eq!(
        upstream.received().len(),
        2,
        "nothing went upstream for alice"
    );

    // The agent API.
    let switch = |agent: &str| {
        app.request("POST", "/api/switch").key(&key).json(&json!({
            "agent_id": agent, "profile_name": "p", "model_name": "m-x"
        }))
    };
    assert!(error(&switch("alice"), 403).contains("alice"));
    assert_eq!(switch("bob").status, 200);
    let get = |path: &str| app.request("GET", path).key(&key).send();
    assert_eq!(get("/api/history?agent_id=alice").status, 403);
    assert_eq!(get("/api/active?agent_id=alice").status, 403);
    assert_eq!(get("/api/history?agent_id=bob").status, 200);
    assert_eq!(get("/api/active?agent_id=bob").json()["model_name"], "m-x");
    let rb = |agent: &str| {
        app.request("POST", "/api/rollback")
            .key(&key)
            .json(&json!({"agent_id": agent}))
    };
    assert_eq!(rb("alice").status, 403);
    assert_eq!(active_model(&app, "alice"), "m-alice");
    assert_eq!(rb("bob").json()["model_name"], "m-bob-2");
    let agents = get("/api/agents").json();
    assert_eq!(agents["data"].as_array().unwrap().len(), 1);
    assert_eq!(agents["data"][0]["agent_id"], "bob");
    assert_eq!(get("/api/models").status, 200);

    // Alice's switch history was not touched by any of it.
    assert_eq!(history(&app, "alice").len(), 1);
    // The audit rows of the key's requests name its agent.
    assert!(eventually(Duration::from_secs(30), || {
        count(
            &app,
            "SELECT count(*) FROM audit_requests WHERE agent_id = 'bob'",
        ) == 2
    }));
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM audit_requests WHERE agent_id <> 'bob'"
        ),
        0
    );
}

#[test]
fn an_agent_key_in_x_api_key_is_bound_to_its_agent_on_the_messages_route() {
    let upstream = FakeUpstream::start(|_| Answer::Json(200, completion()));
    let app = TestApp::spawn();
    app.create_profile("p", "openai", &upstream.url, "sk-up");
    app.switch("bob", "p", "m-bob");
    app.switch("alice", "p", "m-alice");
    let key = new_key(&app, "bob")["key"].as_str().unwrap().to_string();
    let message = |agent: Option<&str>, path: &str| {
        let mut call = app.request("POST", path).header("x-api-key", &key);
        if let Some(agent) = agent {
            call = call.header("x-agent-id", agent);
        }
        call.json(&json!({"model": "x", "max_tokens": 16,
                          "messages": [{"role": "user", "content": "hi"}]}))
    };
    let r = message(None, "/v1/messages");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-switcher-model"), Some("m-bob"));
    let r = message(Some("alice"), "/v1/messages");
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["type"], "error");
    assert_eq!(r.json()["error"]["type"], "permission_error");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("alice"));
    assert_eq!(
        message(Some("alice"), "/v1/messages/count_tokens").status,
        403
    );
    assert_eq!(message(None, "/v1/messages/count_tokens").status, 200);
    assert_eq!(
        upstream.received().len(),
        1,
        "nothing went upstream for alice"
    );
}

#[test]
fn a_deleted_agent_key_stops_working_on_every_instance() {
    let upstream = FakeUpstream::start(|_| Answer::Json(200, completion()));
    let first = TestApp::spawn();
    let second = TestApp::spawn_on(first.db.shared(), &[]);
    first.create_profile("p", "openai", &upstream.url, "sk-up");
    first.switch("bob", "p", "m");
    let created = new_key(&first, "bob");
    let key = created["key"].as_str().unwrap();
    assert_eq!(
        chat(&first, key, None).status,
        200,
        "served at once where it was made"
    );
    assert!(
        eventually(Duration::from_secs(30), || chat(&second, key, None).status
            == 200),
        "the other instance learns of the key"
    );

    let r = first
        .admin("DELETE", &format!("/admin/agent-keys/{}", created["id"]))
        .send();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"deleted": true, "id": created["id"]}));
    assert!(error(&chat(&first, key, None), 401).starts_with("missing or unknown API key"));
    let on_api = first
        .request("GET", "/api/active?agent_id=bob")
        .key(key)
        .send();
    assert_eq!(on_api.status, 401);
    assert!(
        eventually(Duration::from_secs(30), || chat(&second, key, None).status
            == 401),
        "the other instance refuses it too"
    );

    let again = first
        .admin("DELETE", &format!("/admin/agent-keys/{}", created["id"]))
        .send();
    assert!(error(&again, 404).contains(&created["id"].to_string()));
    assert_eq!(
        first
            .admin("DELETE", "/admin/agent-keys/nope")
            .send()
            .status,
        404
    );
}

#[test]
fn last_used_at_is_written_in_the_background_at_most_once_a_minute() {
    let app = TestApp::spawn();
    app.create_profile("p", "openai", "https://a.example/v1", "sk-1");
    app.switch("bob", "p", "m");
    let bob = new_key(&app, "bob")["key"].as_str().unwrap().to_string();
    let carol = new_key(&app, "carol")["key"].as_str().unwrap().to_string();
    let last_used = |agent: &str| -> Option<String> {
        app.db
            .client()
            .query_one(
                "SELECT last_used_at::text FROM agent_keys WHERE agent_id = $1",
                &[&agent],
            )
            .unwrap()
            .get(0)
    };
    let use_key = |key: &str, agent: &str| {
        let r = app
            .request("GET", &format!("/api/history?agent_id={agent}"))
            .key(key)
            .send();
        assert_eq!(r.status, 200, "{}", r.text());
    };
    use_key(&bob, "bob");
    assert!(eventually(Duration::from_secs(30), || last_used("bob").is_some()));
    let first = last_used("bob");
    use_key(&bob, "bob");
    // Carol's first use is written by a later flush than bob's second use was noted in.
    use_key(&carol, "carol");
    assert!(eventually(Duration::from_secs(30), || last_used("carol").is_some()));
    assert_eq!(
        last_used("bob"),
        first,
        "not written again within the minute"
    );
    let listed = app
        .admin("GET", "/admin/agent-keys?agent_id=bob")
        .send()
        .json();
    assert!(listed["data"][0]["last_used_at"].is_string());
}

// ---------------------------------------------------------------------------------------------
// The request log
// ---------------------------------------------------------------------------------------------

fn insert_requests(app: &TestApp, agent: &str, n: i64) {
    app.db
        .client()
        .execute(
            "INSERT INTO audit_requests (agent_id, profile_name, provider_type, model_name,
                 status, latency_ms, endpoint)
             SELECT $1, 'p', 'openai', 'm', 200, g::int, 'messages'
             FROM generate_series(1, $2::bigint) g",
            &[&agent, &n],
        )
        .unwrap();
}

#[test]
fn requests_are_listed_newest_first_a_page_at_a_time() {
    let app = TestApp::spawn();
    let empty = app.admin("GET", "/admin/requests").send();
    assert_eq!(empty.status, 200);
    assert_eq!(empty.json(), json!({"data": []}));
    insert_requests(&app, "a", 60);
    insert_requests(&app, "b", 5);

    let page = app.admin("GET", "/admin/requests").send().json()["data"].clone();
    let page = page.as_array().unwrap();
    assert_eq!(page.len(), 50, "the default limit");
    assert_eq!(
        keys(&page[0]),
        [
            "agent_id",
            "completion_tokens",
            "created_at",
            "endpoint",
            "error",
            "id",
            "latency_ms",
            "model_name",
            "profile_name",
            "prompt_sha256",
            "prompt_tokens",
            "provider_type",
            "status",
            "stream",
            "total_tokens"
        ]
    );
    assert_eq!(page[0]["agent_id"], "b");
    assert_eq!(page[0]["endpoint"], "messages");
    let ids: Vec<i64> = page.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first");

    // Paging back through one agent's requests meets each once.
    let mut seen = Vec::new();
    let mut before: Option<i64> = None;
    loop {
        let path = match before {
            Some(b) => format!("/admin/requests?agent_id=a&limit=25&before_id={b}"),
            None => "/admin/requests?agent_id=a&limit=25".to_string(),
        };
        let data = app.admin("GET", &path).send().json()["data"].clone();
        let data = data.as_array().unwrap().clone();
        if data.is_empty() {
            break;
        }
        assert!(data.iter().all(|r| r["agent_id"] == "a"));
        before = data.last().unwrap()["id"].as_i64();
        seen.extend(data.iter().map(|r| r["id"].as_i64().unwrap()));
    }
    assert_eq!(seen.len(), 60);
    let mut unique = seen.clone();
    unique.dedup();
    assert_eq!(unique.len(), 60);

    for bad in [
        "limit=0",
        "limit=1001",
        "limit=x",
        "before_id=0",
        "before_id=x",
    ] {
        let r = app.admin("GET", &format!("/admin/requests?{bad}")).send();
        let m = error(&r, 400);
        assert!(m.contains(bad.split('=').next().unwrap()), "{bad}: {m}");
    }
}

/// The plan of one of the page queries, for `params` (limit first).
fn plan(db: &mut postgres::Client, by_agent: bool, before_id: bool, params: &str) -> String {
    let sql = switcher_api::audit::requests_page_sql(by_agent, before_id);
    db.batch_execute("DEALLOCATE ALL").unwrap();
    db.batch_execute(&format!("PREPARE page AS {sql}")).unwrap();
    db.query(&format!("EXPLAIN EXECUTE page({params})"), &[])
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_shape_of_the_requests_page_is_served_by_an_index_without_a_sort() {
    let app = TestApp::spawn();
    // One busy agent and a rare one: a scan of the primary key filtered by agent would have
    // to read through the busy agent's rows to find the rare one's.
    insert_requests(&app, "rare", 100);
    insert_requests(&app, "busy", 20000);
    insert_requests(&app, "rare", 100);
    let mut db = app.db.client();
    db.batch_execute("ANALYZE audit_requests").unwrap();
    for (by_agent, before_id, params) in [
        (false, false, "50"),
        (true, false, "50, 'rare'"),
        (false, true, "50, 15000"),
        (true, true, "50, 'rare', 20150"),
    ] {
        let plan = plan(&mut db, by_agent, before_id, params);
        assert!(plan.contains("Index Scan Backward"), "{plan}");
        assert!(
            !plan.contains("Sort") && !plan.contains("Seq Scan"),
            "{plan}"
        );
        if by_agent {
            assert!(plan.contains("audit_requests_agent_id_id_idx"), "{plan}");
        }
    }
}

#[test]
fn history_and_rollback_read_an_index_of_the_agents_switches() {
    let app = TestApp::spawn();
    let mut db = app.db.client();
    db.batch_execute(
        "INSERT INTO audit_switches (agent_id, to_profile_name, to_provider_type, to_model_name)
         SELECT 'agent-' || (g % 50), 'p', 'openai', 'm' FROM generate_series(1, 20000) g;
         ANALYZE audit_switches",
    )
    .unwrap();
    let plan: Vec<String> = db
        .query(
            "EXPLAIN SELECT id FROM audit_switches WHERE agent_id = 'agent-7' ORDER BY id DESC LIMIT 50",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let plan = plan.join("\n");
    assert!(
        plan.contains("audit_switches_agent_id_id_idx") && !plan.contains("Sort"),
        "{plan}"
    );
}

// ---------------------------------------------------------------------------------------------
// The console
// ---------------------------------------------------------------------------------------------

#[test]
fn the_console_is_served_without_a_key_under_a_strict_content_security_policy() {
    let app = TestApp::spawn();
    let page = app.request("GET", "/console").send();
    assert_eq!(page.status, 200);
    assert!(page
        .header("Content-Type")
        .unwrap()
        .starts_with("text/html"));
    let csp = page.header("Content-Security-Policy").expect("a CSP");
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe"), "{csp}");
    assert!(page.text().contains("/console/console.js"));
    let script = app.request("GET", "/console/console.js").send();
    assert_eq!(script.status, 200);
    assert!(script
        .header("Content-Type")
        .unwrap()
        .starts_with("text/javascript"));
    assert!(script.text().contains("sessionStorage"));
    let style = app.request("GET", "/console/console.css").send();
    assert!(style
        .header("Content-Type")
        .unwrap()
        .starts_with("text/css"));
    assert_eq!(app.request("POST", "/console").send().status, 405);
    assert_eq!(app.request("GET", "/console/other.js").send().status, 404);
}
