//! The switcher's own HTTP API, as the wizard calls it, and the wait for `/healthz`.

use super::*;

/// Which bearer key a call carries.
#[derive(Clone, Copy)]
pub(super) enum Key {
    Admin,
    Agent,
}

/// The switcher's HTTP API, as the wizard uses it.
pub(super) struct Api {
    pub(super) agent: ureq::Agent,
    pub(super) url: String,
    pub(super) admin_key: String,
    pub(super) agent_key: String,
    /// Where each key came from, for the hint after a 401 or 403.
    pub(super) admin_key_at: String,
    pub(super) agent_key_at: String,
}

/// A finished call: any status, the body as JSON (`Null` when it is not).
pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) body: Value,
}

impl Api {
    pub(super) fn new(url: &str, plan: &EnvPlan, env_file: &str) -> Api {
        let at = |name: &str| {
            if plan.from_env.contains(&name) {
                "the environment".to_string()
            } else {
                env_file.to_string()
            }
        };
        Api {
            // Model sync waits on the provider (up to UPSTREAM_TIMEOUT_MS per page).
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .proxy(None)
                .timeout_connect(Some(Duration::from_secs(5)))
                .timeout_global(Some(Duration::from_secs(180)))
                .build()
                .into(),
            url: url.trim_end_matches('/').to_string(),
            admin_key: plan.values[ADMIN_KEY].clone(),
            agent_key: plan.values[AGENT_KEY].clone(),
            admin_key_at: at(ADMIN_KEY),
            agent_key_at: at(AGENT_KEY),
        }
    }

    pub(super) fn call(
        &self,
        method: &str,
        path: &str,
        key: Key,
        body: Option<&Value>,
    ) -> Result<Answer, String> {
        let secret = match key {
            Key::Admin => &self.admin_key,
            Key::Agent => &self.agent_key,
        };
        let url = format!("{}{path}", self.url);
        let auth = format!("Bearer {secret}");
        let result = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("Authorization", &auth).call(),
            ("DELETE", _) => self
                .agent
                .delete(&url)
                .header("Authorization", &auth)
                .call(),
            (_, body) => {
                let request = match method {
                    "PATCH" => self.agent.patch(&url),
                    "PUT" => self.agent.put(&url),
                    _ => self.agent.post(&url),
                };
                let request = request.header("Authorization", &auth);
                match body {
                    Some(b) => request
                        .header("Content-Type", "application/json")
                        .send(b.to_string().as_bytes()),
                    None => request.send_empty(),
                }
            }
        };
        let response = match result {
            Ok(r) => r,
            Err(e) => return Err(format!("{method} {path}: cannot reach {}: {e}", self.url)),
        };
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .read_to_string()
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(Value::Null);
        Ok(Answer { status, body })
    }

    /// One line for an answer the wizard cannot go on from. The server's messages never hold
    /// a credential, so they are safe to show.
    pub(super) fn refusal(&self, what: &str, answer: &Answer, key: Key) -> String {
        let message = answer.body["error"]["message"]
            .as_str()
            .or_else(|| answer.body["error"].as_str())
            .unwrap_or("no error message");
        let hint = match (answer.status, key) {
            (401 | 403, Key::Admin) => format!(
                " (the server does not take ROUTER_ADMIN_KEY from {}: was it started with the same one?)",
                self.admin_key_at
            ),
            (401 | 403, Key::Agent) => format!(
                " (the server does not take ROUTER_AGENT_KEY from {}: was it started with the same one?)",
                self.agent_key_at
            ),
            _ => String::new(),
        };
        format!(
            "{what}: the server answered {}: {message}{hint}",
            answer.status
        )
    }
}

pub(super) fn wait_until_healthy(api: &Api, docker: bool) -> Result<(), String> {
    let target = format!("{}/healthz", api.url);
    say_more!("Waiting for {target} (up to {} s)", HEALTH_WAIT.as_secs());
    let start = Instant::now();
    loop {
        let last = match api
            .agent
            .get(&target)
            .config()
            .timeout_global(Some(Duration::from_secs(3)))
            .build()
            .call()
        {
            Ok(r) if r.status() == 200 => {
                say!(" ready.");
                return Ok(());
            }
            Ok(r) if r.status() == 503 => "/healthz answered 503: database unavailable".into(),
            Ok(r) => format!("/healthz answered {}", r.status().as_u16()),
            Err(e) => e.to_string(),
        };
        if start.elapsed() >= HEALTH_WAIT {
            say!();
            let hint = if docker {
                "; see `docker compose logs switcher-api`"
            } else {
                "; is the server running there? (--url sets where to look)"
            };
            return Err(format!(
                "the server at {} was not healthy within {} s (last: {last}){hint}",
                api.url,
                HEALTH_WAIT.as_secs()
            ));
        }
        say_more!(".");
        thread::sleep(Duration::from_secs(1));
    }
}
