//! The command line: every flag read and checked before anything else happens.

use super::*;

/// The command line, every given value already checked.
#[derive(Debug, Default)]
pub(super) struct Flags {
    pub(super) provider_type: Option<String>,
    pub(super) profile_name: Option<String>,
    pub(super) base_url: Option<String>,
    pub(super) api_key: Option<String>,
    pub(super) model: Option<String>,
    pub(super) agent_id: Option<String>,
    pub(super) url: Option<String>,
    pub(super) env_file: Option<PathBuf>,
    pub(super) sync_models: bool,
    pub(super) no_docker: bool,
    pub(super) yes: bool,
}

impl Flags {
    /// `Ok(None)` asks for the help text.
    pub(super) fn parse(mut args: pico_args::Arguments) -> Result<Option<Flags>, String> {
        if args.contains(["-h", "--help"]) {
            return Ok(None);
        }
        let mut value = |flag: &'static str,
                         check: fn(&str) -> Result<String, String>|
         -> Result<Option<String>, String> {
            let raw: Option<String> = args.opt_value_from_str(flag).map_err(|e| e.to_string())?;
            raw.map(|v| check(&v).map_err(|e| format!("{flag}: {e}")))
                .transpose()
        };
        let provider_type = value("--provider-type", check_provider_type)?;
        let profile_name = value("--profile-name", check_profile_name)?;
        let base_url = value("--base-url", check_base_url)?;
        let api_key = value("--api-key", check_api_key)?;
        // Where the key is, not the key: checked once it is read.
        let api_key_env = value("--api-key-env", |v| Ok(v.to_string()))?;
        let api_key_file = value("--api-key-file", |v| Ok(v.to_string()))?;
        let model = value("--model", check_model)?;
        let agent_id = value("--agent-id", check_agent)?;
        let url = value("--url", check_server_url)?;
        let env_file = value("--env-file", check_path)?.map(PathBuf::from);
        let yes = args.contains(["-y", "--yes"]);
        let api_key = match (api_key, api_key_env, api_key_file) {
            (key, None, None) => key,
            (None, Some(name), None) => Some(api_key_from_env(&name)?),
            (None, None, Some(path)) => Some(api_key_from_file(&path, yes)?),
            _ => {
                return Err(
                    "give the API key one way: --api-key, --api-key-env or --api-key-file".into(),
                )
            }
        };
        let flags = Flags {
            provider_type,
            profile_name,
            base_url,
            api_key,
            model,
            agent_id,
            url,
            env_file,
            sync_models: args.contains("--sync-models"),
            no_docker: args.contains("--no-docker"),
            yes,
        };
        if let Some(extra) = args.finish().first() {
            let extra = extra.to_string_lossy();
            // A stray value may be a secret (`--api-key=sk-...` is not a form pico-args
            // reads), so only a flag's name is ever repeated back.
            return Err(if extra.starts_with('-') {
                let name = extra.split('=').next().unwrap_or_default();
                if extra.contains('=') {
                    format!("write {name} VALUE (with a space), not {name}=VALUE")
                } else {
                    format!("unknown flag {name}; see `switcher-api wizard --help`")
                }
            } else {
                "unexpected argument without a flag; see `switcher-api wizard --help`".into()
            });
        }
        Ok(Some(flags))
    }
}

pub(super) fn check_provider_type(raw: &str) -> Result<String, String> {
    let t = raw.trim();
    if PROVIDER_TYPES.contains(&t) {
        Ok(t.to_string())
    } else {
        Err(format!(
            "unknown provider type {t:?}: choose openai, anthropic or openai_compatible"
        ))
    }
}

pub(super) fn check_profile_name(raw: &str) -> Result<String, String> {
    let name = raw.trim();
    if valid_profile_name(name) {
        Ok(name.to_string())
    } else {
        Err(format!(
            "profile name {name:?} is not 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' or '-'"
        ))
    }
}

pub(super) fn check_base_url(raw: &str) -> Result<String, String> {
    normalize_base_url(raw).map_err(|_| {
        format!(
            "base URL {:?} is not an http:// or https:// URL with a host (e.g. http://localhost:11434/v1)",
            raw.trim()
        )
    })
}

/// The key is never repeated back, not even in a refusal.
pub(super) fn check_api_key(raw: &str) -> Result<String, String> {
    let key = raw.trim();
    if key.is_empty() {
        Err("the API key must not be empty".into())
    } else if !crate::app::usable_api_key(key) {
        Err("the API key must not contain spaces or control characters".into())
    } else {
        Ok(key.to_string())
    }
}

/// `--api-key-env NAME`: the key from an environment variable, out of the command line and
/// the shell history.
pub(super) fn api_key_from_env(name: &str) -> Result<String, String> {
    let raw = std::env::var(name).map_err(|_| {
        format!("--api-key-env: the environment variable {name} is not set (or not UTF-8)")
    })?;
    check_api_key(&raw).map_err(|e| format!("--api-key-env {name}: {e}"))
}

/// `--api-key-file PATH`: the key from a file, or from standard input with `-` (which the
/// questions would read too, so only with `--yes`). Surrounding whitespace and the final
/// newline are not part of the key.
pub(super) fn api_key_from_file(path: &str, yes: bool) -> Result<String, String> {
    let raw = if path == "-" {
        if !yes {
            return Err(
                "--api-key-file -: reading the key from standard input needs --yes \
                 (the questions read standard input too)"
                    .into(),
            );
        }
        let mut raw = String::new();
        io::Read::read_to_string(&mut io::stdin().lock(), &mut raw)
            .map_err(|e| format!("--api-key-file -: cannot read standard input: {e}"))?;
        raw
    } else {
        fs::read_to_string(path).map_err(|e| format!("--api-key-file {path}: {e}"))?
    };
    check_api_key(&raw).map_err(|e| format!("--api-key-file {path}: {e}"))
}

pub(super) fn check_model(raw: &str) -> Result<String, String> {
    let model = raw.trim();
    check_model_name(model)
        .map(|_| model.to_string())
        .map_err(|_| "the model name must be 1 to 256 characters with no control characters".into())
}

pub(super) fn check_agent(raw: &str) -> Result<String, String> {
    let agent = raw.trim();
    check_agent_id(agent)
        .map(|_| agent.to_string())
        .map_err(|_| "the agent id must be 1 to 128 characters with no control characters".into())
}

pub(super) fn check_server_url(raw: &str) -> Result<String, String> {
    normalize_base_url(raw).map_err(|_| {
        format!(
            "{:?} is not an http:// or https:// URL with a host (e.g. http://127.0.0.1:8080)",
            raw.trim()
        )
    })
}

pub(super) fn check_path(raw: &str) -> Result<String, String> {
    if raw.trim().is_empty() {
        Err("the path must not be empty".into())
    } else {
        Ok(raw.to_string())
    }
}

pub(super) fn default_model(provider_type: &str) -> Option<&'static str> {
    match provider_type {
        "openai" => Some("gpt-4o-mini"),
        "anthropic" => Some("claude-sonnet-4-5"),
        _ => None,
    }
}
