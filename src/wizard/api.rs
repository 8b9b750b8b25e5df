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
            agent: ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(5))
                .timeout(Duration::from_secs(180))
                .build(),
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
        let request = self
            .agent
            .request(method, &format!("{}{path}", self.url))
            .set("Authorization", &format!("Bearer {secret}"));
        let result = match body {
            Some(b) => request
                .set("Content-Type", "application/json")
                .send_string(&b.to_string()),
            None => request.call(),
        };
        let response = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(ureq::Error::Transport(t)) => {
                return Err(format!("{method} {path}: cannot reach {}: {t}", self.url))
            }
        };
        let status = response.status();
        let body = response
            .into_string()
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
            .timeout(Duration::from_secs(3))
            .call()
        {
            Ok(r) if r.status() == 200 => {
                say!(" ready.");
                return Ok(());
            }
            Ok(r) => format!("/healthz answered {}", r.status()),
            Err(ureq::Error::Status(503, _)) => {
                "/healthz answered 503: database unavailable".into()
            }
            Err(ureq::Error::Status(code, _)) => format!("/healthz answered {code}"),
            Err(ureq::Error::Transport(t)) => t.to_string(),
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
