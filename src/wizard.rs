//! `switcher-api wizard`: the first run, from no `.env` to an agent with an active model.
//!
//! The order of the steps is chosen so that a failure never leaves a half-done state behind:
//! every flag is checked first, then the existing `.env` (a placeholder key stops the wizard
//! before anything is asked), then every question is answered, and only then is `.env`
//! written (atomically) and the server touched.

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufRead, IsTerminal, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::crypto;
use crate::input::{check_agent_id, check_model_name, valid_profile_name};
use crate::routes::profiles::{default_base_url, normalize_base_url, PROVIDER_TYPES};

/// `println!` that ignores a closed stdout: `println!` would panic there, possibly halfway
/// through the work, and the report matters less than the work.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(io::stdout(), $($arg)*);
    }};
}

/// `print!` and a flush, for a line that is still being written; a closed stdout is ignored.
macro_rules! say_more {
    ($($arg:tt)*) => {{
        let mut out = io::stdout();
        let _ = write!(out, $($arg)*);
        let _ = out.flush();
    }};
}

const HELP: &str = "\
switcher-api wizard: the first run. Creates or updates .env (random keys where they are
missing; existing values are never changed), starts Docker Compose, waits for the server,
creates (or updates) a provider profile and sets an agent's active model. Every question
has a flag; with --yes nothing is asked.

USAGE:
    switcher-api wizard [OPTIONS]

OPTIONS:
    --provider-type TYPE  openai | anthropic | openai_compatible           [openai]
    --profile-name NAME   profile to create or update, 1-64 of A-Za-z0-9._-  [the provider type]
    --base-url URL        the provider's API base URL
                          [openai: https://api.openai.com/v1, anthropic: https://api.anthropic.com;
                           required for openai_compatible]
    --api-key KEY         the provider's API key (required; never printed). Other local users
                          can see command-line flags while the wizard runs: on a shared machine,
                          answer the question instead.
    --model NAME          the model to make active
                          [openai: gpt-4o-mini, anthropic: claude-sonnet-4-5;
                           required for openai_compatible]
    --agent-id ID         the agent whose model is set                     [default]
    --sync-models         also fetch the provider's model list (asked when not given)
    --url URL             the server's base URL      [http://127.0.0.1:PORT, PORT from .env:
                          SWITCHER_PUBLISH's port with Docker; with --no-docker, PORT from
                          the environment or else .env; else 8080]
    --env-file PATH       the file to create or update                     [.env]
    --no-docker           skip `docker compose up -d --build` (the server runs elsewhere)
    -y, --yes             ask nothing: take the defaults, fail if a required answer is missing
    -h, --help            print this help

With Docker, the wizard talks to the server with the keys in the env file, which the
service reads (env_file: .env). With --no-docker it reads keys and PORT as the server
does: the environment first, then the env file. A key set in the environment is used as
it is and never copied into the file; no replacement is generated for it.
";

const ADMIN_KEY: &str = "ROUTER_ADMIN_KEY";
const AGENT_KEY: &str = "ROUTER_AGENT_KEY";
const KMS_KEY: &str = "ROUTER_KMS_KEY";

/// Variables added with their default value when the file does not mention them at all.
/// `POSTGRES_PASSWORD` is deliberately absent: Postgres sets it only when its volume is
/// created, so a new value in an old installation would lock the service out.
const DEFAULTS: &[(&str, &str)] = &[("PORT", "8080")];

const NEW_FILE_HEADER: &str = "\
# switcher-api configuration, written by `switcher-api wizard`; see .env.example for every
# variable. Keep this file private (mode 0600) and back up ROUTER_KMS_KEY with the database:
# stored credentials cannot be decrypted without it.
";

const HEALTH_WAIT: Duration = Duration::from_secs(60);

pub fn main(args: pico_args::Arguments) -> ExitCode {
    let flags = match Flags::parse(args) {
        Ok(Some(flags)) => flags,
        Ok(None) => {
            say_more!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(e) => return fail(&e, 2),
    };
    match run(&flags) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e, 1),
    }
}

fn fail(message: &str, code: u8) -> ExitCode {
    eprintln!("switcher-api wizard: error: {message}");
    ExitCode::from(code)
}

/// The command line, every given value already checked.
#[derive(Debug, Default)]
struct Flags {
    provider_type: Option<String>,
    profile_name: Option<String>,
    base_url: Option<String>,
    api_key: Option<String>,
    model: Option<String>,
    agent_id: Option<String>,
    url: Option<String>,
    env_file: Option<PathBuf>,
    sync_models: bool,
    no_docker: bool,
    yes: bool,
}

impl Flags {
    /// `Ok(None)` asks for the help text.
    fn parse(mut args: pico_args::Arguments) -> Result<Option<Flags>, String> {
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
        let model = value("--model", check_model)?;
        let agent_id = value("--agent-id", check_agent)?;
        let url = value("--url", check_server_url)?;
        let env_file = value("--env-file", check_path)?.map(PathBuf::from);
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
            yes: args.contains(["-y", "--yes"]),
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

fn check_provider_type(raw: &str) -> Result<String, String> {
    let t = raw.trim();
    if PROVIDER_TYPES.contains(&t) {
        Ok(t.to_string())
    } else {
        Err(format!(
            "unknown provider type {t:?}: choose openai, anthropic or openai_compatible"
        ))
    }
}

fn check_profile_name(raw: &str) -> Result<String, String> {
    let name = raw.trim();
    if valid_profile_name(name) {
        Ok(name.to_string())
    } else {
        Err(format!(
            "profile name {name:?} is not 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' or '-'"
        ))
    }
}

fn check_base_url(raw: &str) -> Result<String, String> {
    normalize_base_url(raw).map_err(|_| {
        format!(
            "base URL {:?} is not an http:// or https:// URL with a host (e.g. http://localhost:11434/v1)",
            raw.trim()
        )
    })
}

/// The key is never repeated back, not even in a refusal.
fn check_api_key(raw: &str) -> Result<String, String> {
    let key = raw.trim();
    if key.is_empty() {
        Err("the API key must not be empty".into())
    } else if !crate::app::usable_api_key(key) {
        Err("the API key must not contain spaces or control characters".into())
    } else {
        Ok(key.to_string())
    }
}

fn check_model(raw: &str) -> Result<String, String> {
    let model = raw.trim();
    check_model_name(model)
        .map(|_| model.to_string())
        .map_err(|_| "the model name must be 1 to 256 characters with no control characters".into())
}

fn check_agent(raw: &str) -> Result<String, String> {
    let agent = raw.trim();
    check_agent_id(agent)
        .map(|_| agent.to_string())
        .map_err(|_| "the agent id must be 1 to 128 characters with no control characters".into())
}

fn check_server_url(raw: &str) -> Result<String, String> {
    normalize_base_url(raw).map_err(|_| {
        format!(
            "{:?} is not an http:// or https:// URL with a host (e.g. http://127.0.0.1:8080)",
            raw.trim()
        )
    })
}

fn check_path(raw: &str) -> Result<String, String> {
    if raw.trim().is_empty() {
        Err("the path must not be empty".into())
    } else {
        Ok(raw.to_string())
    }
}

fn default_model(provider_type: &str) -> Option<&'static str> {
    match provider_type {
        "openai" => Some("gpt-4o-mini"),
        "anthropic" => Some("claude-sonnet-4-5"),
        _ => None,
    }
}

/// Everything the wizard was told, by flag, by answer or by default.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answers {
    provider_type: String,
    profile_name: String,
    base_url: String,
    api_key: String,
    model: String,
    agent_id: String,
    sync_models: bool,
}

/// One question and the flag that answers it in advance.
struct Question<'a> {
    flag: &'static str,
    text: &'a str,
    default: Option<&'a str>,
}

/// Where answers that no flag gave come from: the operator, or the defaults under `--yes`.
trait Ask {
    fn ask(
        &mut self,
        q: &Question,
        check: fn(&str) -> Result<String, String>,
    ) -> Result<String, String>;
    fn ask_secret(
        &mut self,
        q: &Question,
        check: fn(&str) -> Result<String, String>,
    ) -> Result<String, String>;
    fn confirm(&mut self, text: &str, default: bool) -> Result<bool, String>;
}

/// `--yes`: every default taken, nothing read from stdin.
struct Unattended;

impl Ask for Unattended {
    fn ask(
        &mut self,
        q: &Question,
        check: fn(&str) -> Result<String, String>,
    ) -> Result<String, String> {
        match q.default {
            Some(d) => check(d),
            None => Err(format!(
                "{} is required with --yes ({} has no default)",
                q.flag, q.text
            )),
        }
    }

    fn ask_secret(
        &mut self,
        q: &Question,
        check: fn(&str) -> Result<String, String>,
    ) -> Result<String, String> {
        self.ask(q, check)
    }

    fn confirm(&mut self, _text: &str, _default: bool) -> Result<bool, String> {
        // Optional steps run unattended only when their flag asks for them.
        Ok(false)
    }
}

/// Questions on `output`, answers line by line from `input` (a terminal or a pipe).
struct Prompter<R, W> {
    input: R,
    output: W,
    /// Whether the input is a terminal, whose echo is turned off while a secret is typed.
    terminal: bool,
}

impl<R: BufRead, W: Write> Prompter<R, W> {
    fn prompt(&mut self, q: &Question) {
        let _ = match q.default {
            Some(d) => write!(self.output, "{} [{d}]: ", q.text),
            None => write!(self.output, "{}: ", q.text),
        };
        let _ = self.output.flush();
    }

    fn read_answer(&mut self, q: &Question) -> Result<String, String> {
        let mut line = String::new();
        match self.input.read_line(&mut line) {
            Ok(0) => Err(format!(
                "stdin ended before \"{}\" was answered; nothing was written (answer with {} or run with --yes)",
                q.text, q.flag
            )),
            Ok(_) => Ok(line.trim().to_string()),
            Err(e) => Err(format!("cannot read the answer to \"{}\": {e}", q.text)),
        }
    }

    /// Applies the default to an empty answer and checks it; `Err(message)` asks again.
    fn judge(
        q: &Question,
        answer: &str,
        check: fn(&str) -> Result<String, String>,
    ) -> Result<String, String> {
        match (answer.is_empty(), q.default) {
            (true, Some(d)) => check(d),
            (true, None) => Err("an answer is required".into()),
            (false, _) => check(answer),
        }
    }

    fn refuse(&mut self, message: &str) {
        let _ = writeln!(self.output, "  ! {message}; please answer again.");
    }
}

impl<R: BufRead, W: Write> Ask for Prompter<R, W> {
    fn ask(
        &mut self,
        q: &Question,
        check: fn(&str) -> Result<String, String>,
    ) -> Result<String, String> {
        loop {
            self.prompt(q);
            let answer = self.read_answer(q)?;
            if !self.terminal {
                // A terminal shows what was typed; a pipe does not, so the transcript would
                // run every question into one line.
                let _ = writeln!(self.output, "{answer}");
            }
            match Self::judge(q, &answer, check) {
                Ok(value) => return Ok(value),
                Err(message) => self.refuse(&message),
            }
        }
    }

    fn ask_secret(
        &mut self,
        q: &Question,
        check: fn(&str) -> Result<String, String>,
    ) -> Result<String, String> {
        loop {
            // Echo goes off before the question appears, so nothing typed after it shows.
            let echo = EchoOff::new(self.terminal);
            self.prompt(q);
            let answer = self.read_answer(q);
            drop(echo);
            // The Enter that ended the hidden line was not echoed (and a pipe echoes nothing);
            // the key itself is never shown.
            let _ = writeln!(self.output);
            match Self::judge(q, &answer?, check) {
                Ok(value) => return Ok(value),
                Err(message) => self.refuse(&message),
            }
        }
    }

    fn confirm(&mut self, text: &str, default: bool) -> Result<bool, String> {
        let text = format!("{text} (y/n)");
        let q = Question {
            flag: "--sync-models",
            text: &text,
            default: Some(if default { "y" } else { "n" }),
        };
        let answer = self.ask(&q, |a| match a.to_ascii_lowercase().as_str() {
            "y" | "yes" => Ok("y".into()),
            "n" | "no" => Ok("n".into()),
            _ => Err("answer y or n".into()),
        })?;
        Ok(answer == "y")
    }
}

/// Terminal echo switched off (through `stty`, on stdin) for as long as it lives.
struct EchoOff(bool);

impl EchoOff {
    fn new(terminal: bool) -> EchoOff {
        EchoOff(terminal && stty("-echo"))
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if self.0 {
            stty("echo");
        }
    }
}

fn stty(setting: &str) -> bool {
    Command::new("stty")
        .arg(setting)
        .stdin(Stdio::inherit())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Fills every answer: the flag when given, else the question (or its default).
fn resolve_answers(flags: &Flags, ask: &mut dyn Ask) -> Result<Answers, String> {
    let provider_type = match &flags.provider_type {
        Some(v) => v.clone(),
        None => ask.ask(
            &Question {
                flag: "--provider-type",
                text: "Provider type (openai, anthropic, openai_compatible)",
                default: Some("openai"),
            },
            check_provider_type,
        )?,
    };
    let profile_name = match &flags.profile_name {
        Some(v) => v.clone(),
        None => ask.ask(
            &Question {
                flag: "--profile-name",
                text: "Profile name",
                default: Some(&provider_type),
            },
            check_profile_name,
        )?,
    };
    let base_url = match &flags.base_url {
        Some(v) => v.clone(),
        None => ask.ask(
            &Question {
                flag: "--base-url",
                text: &format!("Base URL of the {provider_type} API"),
                default: default_base_url(&provider_type),
            },
            check_base_url,
        )?,
    };
    let api_key = match &flags.api_key {
        Some(v) => v.clone(),
        None => ask.ask_secret(
            &Question {
                flag: "--api-key",
                text: &format!("API key for {profile_name} (input hidden)"),
                default: None,
            },
            check_api_key,
        )?,
    };
    let sync_models = flags.sync_models
        || ask.confirm("Fetch the provider's model list now (sync-models)?", false)?;
    let model = match &flags.model {
        Some(v) => v.clone(),
        None => ask.ask(
            &Question {
                flag: "--model",
                text: "Model name to make active",
                default: default_model(&provider_type),
            },
            check_model,
        )?,
    };
    let agent_id = match &flags.agent_id {
        Some(v) => v.clone(),
        None => ask.ask(
            &Question {
                flag: "--agent-id",
                text: "Agent id",
                default: Some("default"),
            },
            check_agent,
        )?,
    };
    Ok(Answers {
        provider_type,
        profile_name,
        base_url,
        api_key,
        model,
        agent_id,
        sync_models,
    })
}

/// What the wizard will do to the env file.
#[derive(Debug)]
struct EnvPlan {
    /// The new contents, or `None` when nothing needs to change.
    text: Option<String>,
    /// One line per variable added or filled in; never a key's value.
    notes: Vec<String>,
    /// One line per variable whose environment value overrides (or hides) the file's, or
    /// that the Docker service will not see; never a value.
    warnings: Vec<String>,
    /// The variables of [`SHELL_VARS`] whose value comes from the environment, not the file.
    from_env: Vec<&'static str>,
    /// The effective values after the change, read the way the server reads them.
    values: HashMap<String, String>,
}

/// The process environment as the wizard sees it, and whether the server shares it.
struct Shell<'a> {
    /// A variable of the environment (`std::env::var` in use; a map in the tests).
    lookup: &'a dyn Fn(&str) -> Option<String>,
    /// True with `--no-docker`: the server is started from this environment, which wins over
    /// the env file (dotenvy never overrides a variable that is already set). The Docker
    /// service sees only the env file (`env_file: .env`; compose passes no `ROUTER_*`
    /// variable of the shell), so there the environment is ignored.
    seen_by_server: bool,
}

/// The variables whose environment value the wizard itself uses: the keys for its API calls
/// (and the KMS key's derivation), `PORT` for the default URL.
const SHELL_VARS: [&str; 4] = [ADMIN_KEY, AGENT_KEY, KMS_KEY, "PORT"];

fn is_blank(value: &str) -> bool {
    value.trim().is_empty()
}

/// The variables of an env file in order, parsed as the server parses them (dotenvy).
fn parse_env(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for item in dotenvy::from_read_iter(text.as_bytes()) {
        match item {
            Ok(pair) => pairs.push(pair),
            // dotenvy's message quotes the line, which may hold a key: name the place only.
            Err(_) => {
                return Err(match pairs.last() {
                    Some((name, _)) => {
                        format!("a line after the one setting {name} cannot be parsed")
                    }
                    None => "its first setting cannot be parsed".into(),
                })
            }
        }
    }
    Ok(pairs)
}

/// The name and raw value of a `NAME=value` (or `export NAME=value`) line.
fn assignment(line: &str) -> Option<(&str, &str)> {
    let t = line.trim_start();
    if t.starts_with('#') {
        return None;
    }
    let t = t
        .strip_prefix("export")
        .filter(|rest| rest.starts_with([' ', '\t']))
        .map(str::trim_start)
        .unwrap_or(t);
    let (name, value) = t.split_once('=')?;
    Some((name.trim_end(), value))
}

/// Whether `line` sets `name` to nothing (`NAME=`, `NAME=""`, `NAME='' # comment`).
fn is_empty_assignment(line: &str, name: &str) -> bool {
    let Some((n, value)) = assignment(line) else {
        return false;
    };
    let value = value.trim();
    let value = if value.starts_with('#') {
        ""
    } else {
        value
            .split(" #")
            .next()
            .and_then(|v| v.split("\t#").next())
            .unwrap_or_default()
            .trim()
    };
    n == name && matches!(value, "" | "\"\"" | "''")
}

/// Plans the env file: existing lines stay as they are; missing keys are generated with
/// `random` and appended (or written into a line that sets them to nothing); missing
/// defaults are appended. A key the server takes from the environment (`shell`) exists
/// already: it is used, never generated, and never copied into the file. The result is
/// checked as the server would check it. `file` names the env file in messages.
fn plan_env(
    existing: &str,
    file: &str,
    shell: &Shell,
    random: &mut dyn FnMut(usize) -> Vec<u8>,
) -> Result<EnvPlan, String> {
    let mut in_file: HashMap<String, String> = HashMap::new();
    // dotenvy keeps the first definition of a variable, so the wizard does too.
    for (name, value) in parse_env(existing).map_err(|e| format!("{file}: {e}"))? {
        in_file.entry(name).or_insert(value);
    }
    let mut values = in_file.clone();
    let mut warnings = Vec::new();
    let mut from_env = Vec::new();
    for name in SHELL_VARS {
        let Some(env_value) = (shell.lookup)(name) else {
            continue;
        };
        let file_value = in_file.get(name).filter(|v| !is_blank(v));
        if !shell.seen_by_server {
            // Compose fixes the container's PORT; SWITCHER_PUBLISH decides the URL.
            if name != "PORT" && !is_blank(&env_value) && file_value != Some(&env_value) {
                warnings.push(format!(
                    "{name} is set in this environment, but the Docker service reads only {file}, so the wizard uses {file}'s"
                ));
            }
        } else if is_blank(&env_value) {
            // Set, even to nothing, it keeps the server from reading the file's value.
            warnings.push(format!(
                "{name} is set but empty in the environment, which hides {file}'s {name} from the server; unset it or give it a value"
            ));
        } else {
            if file_value.is_some_and(|v| *v != env_value) {
                warnings.push(format!(
                    "{name} in the environment differs from the one in {file}; the server uses the environment's, and so does the wizard"
                ));
            }
            values.insert(name.to_string(), env_value);
            from_env.push(name);
        }
    }
    let is_set = |values: &HashMap<String, String>, name: &str| {
        values.get(name).is_some_and(|v| !is_blank(v))
    };
    // The admin key the server uses: the environment's when set, else the file's.
    let admin_existed = is_set(&values, ADMIN_KEY);

    let mut lines: Vec<String> = existing.split_inclusive('\n').map(String::from).collect();
    let mut appended: Vec<String> = Vec::new();
    let mut notes = Vec::new();

    for name in [ADMIN_KEY, AGENT_KEY, KMS_KEY] {
        if is_set(&values, name) {
            continue;
        }
        let (value, how) = match name {
            // Without ROUTER_KMS_KEY the server encrypts with SHA-256(ROUTER_ADMIN_KEY). A
            // fresh random key would make every credential stored so far unreadable; this one
            // keeps them readable and no longer ties them to the admin key.
            KMS_KEY if admin_existed => (
                base64::engine::general_purpose::STANDARD
                    .encode(Sha256::digest(values[ADMIN_KEY].as_bytes())),
                "the key the server already derived from ROUTER_ADMIN_KEY, so stored credentials still open",
            ),
            KMS_KEY => (
                base64::engine::general_purpose::STANDARD.encode(random(32)),
                "new random key (back it up with the database)",
            ),
            _ => (crypto::hex(&random(32)), "new random key"),
        };
        if in_file.contains_key(name) {
            let at = lines
                .iter()
                .position(|l| is_empty_assignment(l, name))
                .ok_or_else(|| {
                    format!("{file}: {name} is empty in a form the wizard cannot fill in; delete that line and run the wizard again")
                })?;
            let ending = if lines[at].ends_with("\r\n") {
                "\r\n"
            } else if lines[at].ends_with('\n') {
                "\n"
            } else {
                ""
            };
            lines[at] = format!("{name}={value}{ending}");
            notes.push(format!("{name}: was empty, now set: {how}"));
        } else {
            appended.push(format!("{name}={value}\n"));
            notes.push(format!("{name}: added: {how}"));
        }
        values.insert(name.to_string(), value);
    }
    for (name, value) in DEFAULTS {
        if !values.contains_key(*name) {
            appended.push(format!("{name}={value}\n"));
            notes.push(format!("{name}={value}: added (the default)"));
            values.insert(name.to_string(), value.to_string());
        }
    }

    // The server's view: the environment first (set at all, even to nothing, it hides the
    // file), then the file. The wizard's own variables are settled in `values` above.
    let effective = |name: &str| -> Option<String> {
        let env = if shell.seen_by_server && !SHELL_VARS.contains(&name) {
            (shell.lookup)(name)
        } else {
            None
        };
        env.or_else(|| values.get(name).cloned())
    };
    if let Err(e) = Config::from_lookup(effective) {
        let in_env = shell.seen_by_server
            && (shell.lookup)(e.variable)
                .is_some_and(|v| !SHELL_VARS.contains(&e.variable) || !is_blank(&v));
        if in_env {
            return Err(format!(
                "{e} (the value set in the environment, which the server reads before {file}; the wizard never changes it)"
            ));
        }
        let hint = match e.variable {
            ADMIN_KEY | AGENT_KEY => {
                "; the wizard never replaces an existing key: set a real one, or delete its line to have one generated"
            }
            KMS_KEY => {
                "; the wizard never replaces it: fix it (a new key would not open the credentials stored under the old one)"
            }
            _ => "",
        };
        return Err(format!("{file}: {e}{hint}"));
    }

    let text = if notes.is_empty() {
        None
    } else {
        let mut text = lines.concat();
        if !appended.is_empty() {
            if text.trim().is_empty() {
                text.push_str(NEW_FILE_HEADER);
            } else {
                if !text.ends_with('\n') {
                    text.push('\n');
                }
                text.push_str("\n# Added by `switcher-api wizard`.\n");
            }
            text.extend(appended);
        }
        Some(text)
    };
    Ok(EnvPlan {
        text,
        notes,
        warnings,
        from_env,
        values,
    })
}

/// Replaces `path` with `text` in one step: a private temporary file beside it, then a
/// rename, so a reader (or a crash) sees the old file or the new one, never a mix.
fn write_atomically(path: &Path, text: &str) -> io::Result<()> {
    // Through a symbolic link, the file it points to is the one to replace.
    let target = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| ".env".into());
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let temp = dir.join(format!(".{name}.{}-{nanos}.tmp", std::process::id()));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        // `mode` is filtered by the umask; the file must end up exactly 0600 either way.
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&temp, &target)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
        return result;
    }
    // The rename itself is durable only once the directory is synced; best effort.
    if let Ok(d) = fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Restricts an existing file to its owner; returns the old mode when it changed.
fn make_private(path: &Path) -> io::Result<Option<u32>> {
    let mode = fs::metadata(path)?.permissions().mode() & 0o777;
    if mode == 0o600 {
        return Ok(None);
    }
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    Ok(Some(mode))
}

fn read_env_file(path: &Path) -> Result<Option<String>, String> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// The server's URL when `--url` is not given: the host port Docker publishes, or `PORT`.
fn default_server_url(values: &HashMap<String, String>, docker: bool) -> String {
    let from_env = |name: &str| {
        // Docker Compose prefers the shell's variables to `.env` when it fills `ports:`.
        let shell = if docker {
            std::env::var(name).ok()
        } else {
            None
        };
        shell.or_else(|| values.get(name).cloned())
    };
    let raw = if docker {
        from_env("SWITCHER_PUBLISH").map(|p| p.rsplit(':').next().unwrap_or("").to_string())
    } else {
        values.get("PORT").cloned()
    };
    let port = raw
        .and_then(|p| p.trim().parse::<u16>().ok())
        .filter(|p| *p != 0)
        .unwrap_or(8080);
    format!("http://127.0.0.1:{port}")
}

fn run(flags: &Flags) -> Result<(), String> {
    let env_path = flags
        .env_file
        .clone()
        .unwrap_or_else(|| PathBuf::from(".env"));
    let shown = env_path.display().to_string();
    let existing = read_env_file(&env_path)?;
    let lookup = |name: &str| std::env::var(name).ok();
    let shell = Shell {
        lookup: &lookup,
        seen_by_server: flags.no_docker,
    };
    let plan = plan_env(
        existing.as_deref().unwrap_or(""),
        &shown,
        &shell,
        &mut crypto::random_bytes,
    )?;
    // Before any question, so that the operator can still stop here.
    for warning in &plan.warnings {
        say!("Warning: {warning}.");
    }

    let answers = if flags.yes {
        resolve_answers(flags, &mut Unattended)?
    } else {
        let stdin = io::stdin();
        let terminal = stdin.is_terminal();
        say!("switcher-api first run. Press Enter to take the [default].");
        let mut prompter = Prompter {
            input: stdin.lock(),
            output: io::stdout(),
            terminal,
        };
        resolve_answers(flags, &mut prompter)?
    };

    apply_env_plan(&env_path, existing.is_some(), &plan)?;

    if flags.no_docker {
        say!("Skipping Docker (--no-docker).");
    } else {
        if env_path != Path::new(".env") {
            say!("Note: docker compose reads ./.env, not {shown}.");
        }
        start_docker()?;
    }

    let url = flags
        .url
        .clone()
        .unwrap_or_else(|| default_server_url(&plan.values, !flags.no_docker));
    let api = Api::new(&url, &plan, &shown);
    wait_until_healthy(&api, !flags.no_docker)?;
    set_up(&api, &answers)?;
    let admin_key_at = if plan.from_env.contains(&ADMIN_KEY) {
        "your environment".to_string()
    } else {
        shown
    };
    print_summary(&url, &plan.values[AGENT_KEY], &admin_key_at, &answers);
    Ok(())
}

fn apply_env_plan(path: &Path, existed: bool, plan: &EnvPlan) -> Result<(), String> {
    let shown = path.display();
    if !plan.from_env.is_empty() {
        say!(
            "Using {} from the environment (it wins over {shown}; not copied into it).",
            plan.from_env.join(", ")
        );
    }
    match &plan.text {
        Some(text) => {
            write_atomically(path, text).map_err(|e| format!("cannot write {shown}: {e}"))?;
            if existed {
                say!("Updated {shown} (mode 0600; every existing line kept as it was):");
            } else {
                say!("Created {shown} (mode 0600):");
            }
            for note in &plan.notes {
                say!("  + {note}");
            }
        }
        None if !existed => say!("{shown} not created: the environment sets every key."),
        None => {
            let was = make_private(path)
                .map_err(|e| format!("cannot restrict {shown} to mode 0600: {e}"))?;
            match was {
                Some(mode) => say!(
                    "{shown} already has every key; left as it is, mode changed from {mode:04o} to 0600."
                ),
                None => say!("{shown} already has every key; left as it is (mode 0600)."),
            }
        }
    }
    Ok(())
}

fn start_docker() -> Result<(), String> {
    say!("Starting the services: docker compose up -d --build");
    let status = Command::new("docker")
        .args(["compose", "up", "-d", "--build"])
        .status()
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => "docker was not found on PATH; install Docker (with the compose plugin), or start the server yourself and pass --no-docker".to_string(),
            _ => format!("cannot run docker: {e}"),
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "`docker compose up -d --build` failed ({status}); see its output above, or start the server yourself and pass --no-docker"
        ))
    }
}

/// Which bearer key a call carries.
#[derive(Clone, Copy)]
enum Key {
    Admin,
    Agent,
}

/// The switcher's HTTP API, as the wizard uses it.
struct Api {
    agent: ureq::Agent,
    url: String,
    admin_key: String,
    agent_key: String,
    /// Where each key came from, for the hint after a 401 or 403.
    admin_key_at: String,
    agent_key_at: String,
}

/// A finished call: any status, the body as JSON (`Null` when it is not).
struct Answer {
    status: u16,
    body: Value,
}

impl Api {
    fn new(url: &str, plan: &EnvPlan, env_file: &str) -> Api {
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

    fn call(
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
    fn refusal(&self, what: &str, answer: &Answer, key: Key) -> String {
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

fn wait_until_healthy(api: &Api, docker: bool) -> Result<(), String> {
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

/// Creates or updates the profile, optionally syncs its models, and switches the agent.
fn set_up(api: &Api, a: &Answers) -> Result<(), String> {
    let id = upsert_profile(api, a)?;

    if a.sync_models {
        let path = format!("/admin/profiles/{id}/sync-models");
        let r = api.call("POST", &path, Key::Admin, None)?;
        // The active model is set either way, so a failed sync is reported, not fatal.
        match r.status {
            200 => say!(
                "Synced the model list: {} discovered, {} new.",
                r.body["discovered"],
                r.body["created"]
            ),
            _ => say!(
                "Warning: syncing the model list failed ({}: {}); going on.",
                r.status,
                r.body["error"]
                    .as_str()
                    .or_else(|| r.body["error"]["message"].as_str())
                    .unwrap_or("no error message")
            ),
        }
    }

    // Anthropic models must exist before a switch; the switch also refuses a disabled model,
    // and the operator has just named this one as the model to use.
    let model = json!({"profile_name": a.profile_name, "model_name": a.model, "enabled": true});
    let r = api.call("POST", "/admin/models", Key::Admin, Some(&model))?;
    match r.status {
        201 => say!("Model {}: added to {}.", a.model, a.profile_name),
        200 => say!("Model {}: already in {}, enabled.", a.model, a.profile_name),
        _ => return Err(api.refusal("adding the model", &r, Key::Admin)),
    }

    let switch =
        json!({"agent_id": a.agent_id, "profile_name": a.profile_name, "model_name": a.model});
    let r = api.call("POST", "/api/switch", Key::Agent, Some(&switch))?;
    if r.status != 200 {
        return Err(api.refusal("switching the agent", &r, Key::Agent));
    }
    let previous = &r.body["previous"];
    match (
        previous["profile_name"].as_str(),
        previous["model_name"].as_str(),
    ) {
        (Some(p), Some(m)) => say!(
            "Agent {}: now {} / {} (was {p} / {m}).",
            a.agent_id,
            a.profile_name,
            a.model
        ),
        _ => say!(
            "Agent {}: now {} / {}.",
            a.agent_id,
            a.profile_name,
            a.model
        ),
    }
    Ok(())
}

/// Creates the profile; when the name is taken, rotates its key and base URL instead.
fn upsert_profile(api: &Api, a: &Answers) -> Result<i64, String> {
    let body = json!({
        "profile_name": a.profile_name,
        "provider_type": a.provider_type,
        "base_url": a.base_url,
        "credentials": {"api_key": a.api_key},
    });
    let r = api.call("POST", "/admin/profiles", Key::Admin, Some(&body))?;
    match r.status {
        201 => {
            say!("Profile {} ({}): created.", a.profile_name, a.provider_type);
            return profile_id(&r.body);
        }
        409 => {}
        _ => return Err(api.refusal("creating the profile", &r, Key::Admin)),
    }

    let r = api.call("GET", "/admin/profiles", Key::Admin, None)?;
    if r.status != 200 {
        return Err(api.refusal("listing the profiles", &r, Key::Admin));
    }
    let existing = r.body["data"]
        .as_array()
        .and_then(|list| {
            list.iter()
                .find(|p| p["profile_name"].as_str() == Some(a.profile_name.as_str()))
        })
        .ok_or_else(|| {
            format!(
                "profile {} exists (409) but is not in GET /admin/profiles",
                a.profile_name
            )
        })?;
    // PATCH cannot change a provider type; updating the key of another kind of account
    // would leave a profile that can never work.
    let their_type = existing["provider_type"].as_str().unwrap_or("");
    if their_type != a.provider_type {
        return Err(format!(
            "profile {} already exists with provider type {their_type}, not {}; choose another --profile-name",
            a.profile_name, a.provider_type
        ));
    }
    let id = profile_id(existing)?;
    let patch = json!({"base_url": a.base_url, "credentials": {"api_key": a.api_key}});
    let r = api.call(
        "PATCH",
        &format!("/admin/profiles/{id}"),
        Key::Admin,
        Some(&patch),
    )?;
    if r.status != 200 {
        return Err(api.refusal("updating the profile", &r, Key::Admin));
    }
    say!(
        "Profile {} ({}): already there; API key and base URL updated.",
        a.profile_name,
        a.provider_type
    );
    Ok(id)
}

fn profile_id(profile: &Value) -> Result<i64, String> {
    profile["id"]
        .as_i64()
        .ok_or_else(|| "the server's profile has no numeric id".to_string())
}

/// A Python string literal: JSON's escapes are all valid in Python.
fn py(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

fn print_summary(url: &str, agent_key: &str, admin_key_at: &str, a: &Answers) {
    let base = format!("{url}/v1");
    say!(
        "
Ready. Agent {agent} uses {profile} / {model}.

  Server:          {url}
  OpenAI base URL: {base}
  Agent key:       {agent_key}
  Agent id:        {agent}   (sent as the x-agent-id header)

The admin key is ROUTER_ADMIN_KEY in {admin_key_at}; keep it private. Switch models with
POST {url}/api/switch.

OpenAI SDK (Python):

from openai import OpenAI

client = OpenAI(
    base_url={py_base},
    api_key={py_key},
    default_headers={{\"x-agent-id\": {py_agent}}},
)
reply = client.chat.completions.create(
    model=\"ignored\",  # the switcher sends the agent's active model
    messages=[{{\"role\": \"user\", \"content\": \"Hello\"}}],
)
print(reply.choices[0].message.content)
",
        agent = a.agent_id,
        profile = a.profile_name,
        model = a.model,
        py_base = py(&base),
        py_key = py(agent_key),
        py_agent = py(&a.agent_id),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// Deterministic "random" bytes: 0, 1, 2, ... across calls.
    fn counter() -> impl FnMut(usize) -> Vec<u8> {
        let mut next = 0u8;
        move |n| {
            (0..n)
                .map(|_| {
                    next = next.wrapping_add(1);
                    next
                })
                .collect()
        }
    }

    /// Plans `existing` with `env` as the environment, which the server reads when
    /// `seen_by_server` (`--no-docker`).
    fn plan_with(
        existing: &str,
        env: &[(&str, &str)],
        seen_by_server: bool,
    ) -> Result<EnvPlan, String> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup = move |name: &str| env.get(name).cloned();
        let shell = Shell {
            lookup: &lookup,
            seen_by_server,
        };
        plan_env(existing, ".env", &shell, &mut counter())
    }

    /// Plans `existing` with an empty environment.
    fn try_plan(existing: &str) -> Result<EnvPlan, String> {
        plan_with(existing, &[], true)
    }

    fn plan(existing: &str) -> EnvPlan {
        try_plan(existing).unwrap()
    }

    fn temp_dir(label: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "switcher-wizard-unit-{label}-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn an_empty_file_gets_every_key_and_the_defaults() {
        let p = plan("");
        let text = p.text.unwrap();
        assert!(text.starts_with(NEW_FILE_HEADER));
        let config = Config::from_lookup(|n| p.values.get(n).cloned()).unwrap();
        assert!(config.kms_key_explicit);
        assert_eq!(p.values[ADMIN_KEY].len(), 64);
        assert_eq!(p.values[AGENT_KEY].len(), 64);
        assert_ne!(p.values[ADMIN_KEY], p.values[AGENT_KEY]);
        assert_eq!(p.values["PORT"], "8080");
        assert_eq!(parse_env(&text).unwrap().len(), 4);
    }

    #[test]
    fn existing_keys_comments_and_order_are_kept_and_missing_ones_appended() {
        let existing = "# mine\nROUTER_AGENT_KEY=agent-1\n\nLOG_LEVEL=debug # chatty\nROUTER_ADMIN_KEY=\"admin-1\"";
        let p = plan(existing);
        let text = p.text.unwrap();
        assert!(text.starts_with(&format!("{existing}\n")), "{text}");
        let added = &text[existing.len()..];
        assert!(added.contains("\nROUTER_KMS_KEY="));
        assert!(added.contains("\nPORT=8080\n"));
        assert!(!added.contains(ADMIN_KEY) && !added.contains(AGENT_KEY));
        assert_eq!(p.values[ADMIN_KEY], "admin-1");
        assert_eq!(p.values[AGENT_KEY], "agent-1");
    }

    #[test]
    fn a_file_with_everything_is_left_alone() {
        let kms = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
        let existing =
            format!("ROUTER_ADMIN_KEY=a1\nROUTER_AGENT_KEY=a2\nROUTER_KMS_KEY={kms}\nPORT=9000\n");
        let p = plan(&existing);
        assert!(p.text.is_none());
        assert!(p.notes.is_empty());
        assert_eq!(p.values["PORT"], "9000");
    }

    #[test]
    fn a_kms_key_added_beside_an_existing_admin_key_is_the_one_the_server_already_used() {
        let existing = "ROUTER_ADMIN_KEY=admin-1\nROUTER_AGENT_KEY=agent-1\n";
        let old: HashMap<String, String> = parse_env(existing).unwrap().into_iter().collect();
        let before = Config::from_lookup(|n| old.get(n).cloned()).unwrap();
        assert!(!before.kms_key_explicit);
        let p = plan(existing);
        let after = Config::from_lookup(|n| p.values.get(n).cloned()).unwrap();
        assert!(after.kms_key_explicit);
        assert_eq!(after.kms_key, before.kms_key);
    }

    #[test]
    fn empty_key_lines_are_filled_in_place() {
        let existing = "ROUTER_ADMIN_KEY=\r\n# between\nROUTER_AGENT_KEY=\"\"  # set me\nexport ROUTER_KMS_KEY=\nPORT=\n";
        let p = plan(existing);
        let text = p.text.unwrap();
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(lines[0].starts_with("ROUTER_ADMIN_KEY=") && lines[0].ends_with("\r\n"));
        assert_eq!(lines[1], "# between\n");
        assert!(lines[2].starts_with("ROUTER_AGENT_KEY=") && lines[2].len() > 30);
        assert!(lines[3].starts_with("ROUTER_KMS_KEY="));
        // An empty PORT is the server's default already; only keys are filled in.
        assert_eq!(lines[4], "PORT=\n");
        Config::from_lookup(|n| p.values.get(n).cloned()).unwrap();
    }

    #[test]
    fn placeholder_keys_are_reported_not_replaced() {
        let e = try_plan(
            "ROUTER_ADMIN_KEY=change-me-admin-key\nROUTER_AGENT_KEY=change-me-agent-key\n",
        )
        .unwrap_err();
        assert!(e.starts_with(".env: ROUTER_ADMIN_KEY "), "{e}");
        assert!(
            e.contains("placeholder") && e.contains("never replaces"),
            "{e}"
        );
        assert!(!e.contains('\n'));
    }

    #[test]
    fn a_broken_kms_key_or_equal_keys_are_reported() {
        let e = try_plan("ROUTER_KMS_KEY=short\n").unwrap_err();
        assert!(e.starts_with(".env: ROUTER_KMS_KEY "), "{e}");
        let e = try_plan("ROUTER_ADMIN_KEY=same\nROUTER_AGENT_KEY=same\n").unwrap_err();
        assert!(e.starts_with(".env: ROUTER_AGENT_KEY "), "{e}");
    }

    fn derived_kms(admin: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(admin.as_bytes()))
    }

    /// The value of `name` in an env file's text, as the server would read it.
    fn file_value(text: &str, name: &str) -> Option<String> {
        parse_env(text)
            .unwrap()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    #[test]
    fn keys_from_the_environment_are_used_and_never_generated_or_copied() {
        let env = [(ADMIN_KEY, "env-admin"), (AGENT_KEY, "env-agent")];
        let p = plan_with("", &env, true).unwrap();
        assert_eq!(p.values[ADMIN_KEY], "env-admin");
        assert_eq!(p.values[AGENT_KEY], "env-agent");
        assert_eq!(p.from_env, [ADMIN_KEY, AGENT_KEY]);
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        let text = p.text.unwrap();
        assert!(
            !text.contains(ADMIN_KEY) && !text.contains(AGENT_KEY),
            "{text}"
        );
        assert!(!text.contains("env-admin") && !text.contains("env-agent"));
        // Never random: the key the server derived from the admin key it actually uses.
        assert_eq!(
            file_value(&text, KMS_KEY).unwrap(),
            derived_kms("env-admin")
        );
        assert_eq!(p.values[KMS_KEY], derived_kms("env-admin"));
        assert_eq!(file_value(&text, "PORT").unwrap(), "8080");
    }

    #[test]
    fn an_environment_that_sets_everything_leaves_nothing_to_write() {
        let kms = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let env = [
            (ADMIN_KEY, "env-admin"),
            (AGENT_KEY, "env-agent"),
            (KMS_KEY, kms.as_str()),
            ("PORT", "9123"),
        ];
        let p = plan_with("", &env, true).unwrap();
        assert!(p.text.is_none() && p.notes.is_empty());
        assert_eq!(p.values[KMS_KEY], kms);
        assert_eq!(
            default_server_url(&p.values, false),
            "http://127.0.0.1:9123"
        );
    }

    #[test]
    fn the_environment_wins_over_the_file_with_one_warning_and_the_file_untouched() {
        let existing = "ROUTER_ADMIN_KEY=file-admin\nROUTER_AGENT_KEY=file-agent\nPORT=9000\n";
        let env = [(ADMIN_KEY, "env-admin"), ("PORT", "9001")];
        let p = plan_with(existing, &env, true).unwrap();
        assert_eq!(p.values[ADMIN_KEY], "env-admin");
        assert_eq!(p.values[AGENT_KEY], "file-agent");
        assert_eq!(
            default_server_url(&p.values, false),
            "http://127.0.0.1:9001"
        );
        let text = p.text.unwrap();
        assert!(text.starts_with(existing), "{text}");
        assert_eq!(
            file_value(&text, KMS_KEY).unwrap(),
            derived_kms("env-admin")
        );
        assert_eq!(p.warnings.len(), 2, "{:?}", p.warnings);
        assert!(p.warnings[0].starts_with("ROUTER_ADMIN_KEY in the environment differs"));
        assert!(p.warnings[1].starts_with("PORT in the environment differs"));
        for w in &p.warnings {
            assert!(!w.contains("admin-") && !w.contains("900"), "{w}");
        }
        // The same value in both places is no disagreement.
        let p = plan_with(existing, &[(ADMIN_KEY, "file-admin")], true).unwrap();
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    }

    #[test]
    fn empty_lines_of_keys_the_environment_sets_are_left_as_they_are() {
        let existing = "ROUTER_ADMIN_KEY=\nROUTER_AGENT_KEY=file-agent\nROUTER_KMS_KEY=\n";
        let p = plan_with(existing, &[(ADMIN_KEY, "env-admin")], true).unwrap();
        let text = p.text.unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "ROUTER_ADMIN_KEY=");
        assert_eq!(
            lines[2],
            format!("ROUTER_KMS_KEY={}", derived_kms("env-admin"))
        );
        assert_eq!(p.values[ADMIN_KEY], "env-admin");
    }

    #[test]
    fn a_kms_key_in_the_environment_is_not_replaced_in_the_file() {
        let kms = base64::engine::general_purpose::STANDARD.encode([5u8; 32]);
        let existing = "ROUTER_ADMIN_KEY=file-admin\nROUTER_AGENT_KEY=file-agent\n";
        let p = plan_with(existing, &[(KMS_KEY, kms.as_str())], true).unwrap();
        let text = p.text.unwrap();
        assert!(!text.contains(KMS_KEY), "{text}");
        assert_eq!(p.values[KMS_KEY], kms);
        // A broken one in the environment is the server's problem too, named as such.
        let e = plan_with(existing, &[(KMS_KEY, "short")], true).unwrap_err();
        assert!(
            e.starts_with("ROUTER_KMS_KEY ") && e.contains("environment"),
            "{e}"
        );
        assert!(!e.contains("short"), "{e}");
    }

    #[test]
    fn the_effective_combination_is_validated() {
        // The environment's agent key equals the file's admin key: the server would refuse.
        let existing = "ROUTER_ADMIN_KEY=same\nROUTER_AGENT_KEY=file-agent\n";
        let e = plan_with(existing, &[(AGENT_KEY, "same")], true).unwrap_err();
        assert!(e.starts_with("ROUTER_AGENT_KEY "), "{e}");
        // A placeholder in the file does not matter when the environment replaces it.
        let existing = "ROUTER_ADMIN_KEY=change-me-admin-key\nROUTER_AGENT_KEY=file-agent\n";
        plan_with(existing, &[(ADMIN_KEY, "env-admin")], true).unwrap();
        // Other variables count as the server reads them: environment first.
        let e = plan_with("", &[("LOG_LEVEL", "loud")], true).unwrap_err();
        assert!(
            e.starts_with("LOG_LEVEL ") && e.contains("environment"),
            "{e}"
        );
        plan_with("", &[("LOG_LEVEL", "loud")], false).unwrap();
    }

    #[test]
    fn an_empty_value_in_the_environment_is_not_a_key_but_is_warned_about() {
        let existing = "ROUTER_ADMIN_KEY=file-admin\nROUTER_AGENT_KEY=file-agent\n";
        let p = plan_with(existing, &[(ADMIN_KEY, "")], true).unwrap();
        assert_eq!(p.values[ADMIN_KEY], "file-admin");
        assert!(p.from_env.is_empty());
        assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
        assert!(p.warnings[0].starts_with("ROUTER_ADMIN_KEY is set but empty"));
    }

    #[test]
    fn with_docker_the_environment_is_not_the_servers_and_is_only_warned_about() {
        let env = [(ADMIN_KEY, "env-admin"), ("PORT", "9001")];
        let p = plan_with("", &env, false).unwrap();
        assert!(p.from_env.is_empty());
        assert_ne!(p.values[ADMIN_KEY], "env-admin");
        let text = p.text.unwrap();
        assert_eq!(file_value(&text, ADMIN_KEY).unwrap(), p.values[ADMIN_KEY]);
        assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
        assert!(p.warnings[0].contains("Docker"), "{:?}", p.warnings);
    }

    #[test]
    fn an_unparsable_line_is_named_without_its_contents() {
        let e =
            try_plan("ROUTER_ADMIN_KEY=a1\nROUTER_AGENT_KEY=\"unterminated-secret\n").unwrap_err();
        assert!(e.contains("ROUTER_ADMIN_KEY"), "{e}");
        assert!(!e.contains("unterminated-secret"), "{e}");
    }

    #[test]
    fn the_file_is_written_with_mode_0600_and_existing_files_are_restricted() {
        let dir = temp_dir("mode");
        let path = dir.join(".env");
        fs::write(&path, "OLD=1\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        write_atomically(&path, "NEW=1\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "NEW=1\n");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(make_private(&path).unwrap(), Some(0o644));
        assert_eq!(make_private(&path).unwrap(), None);
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn a_wrong_answer_is_explained_and_asked_again() {
        let mut p = Prompter {
            input: Cursor::new("bogus\n\n"),
            output: Vec::new(),
            terminal: false,
        };
        let q = Question {
            flag: "--provider-type",
            text: "Provider type",
            default: Some("openai"),
        };
        assert_eq!(p.ask(&q, check_provider_type).unwrap(), "openai");
        let shown = String::from_utf8(p.output).unwrap();
        assert_eq!(shown.matches("Provider type [openai]: ").count(), 2);
        assert!(shown.contains("unknown provider type \"bogus\""));
    }

    #[test]
    fn the_end_of_stdin_is_a_clear_error() {
        let mut p = Prompter {
            input: Cursor::new("\n"),
            output: Vec::new(),
            terminal: false,
        };
        let q = Question {
            flag: "--api-key",
            text: "API key",
            default: None,
        };
        let e = p.ask_secret(&q, check_api_key).unwrap_err();
        assert!(e.contains("stdin ended") && e.contains("--api-key"), "{e}");
        let shown = String::from_utf8(p.output).unwrap();
        assert!(shown.contains("an answer is required"));
    }

    #[test]
    fn unattended_runs_take_defaults_and_name_missing_flags() {
        let flags = Flags {
            api_key: Some("sk-1".into()),
            ..Flags::default()
        };
        let a = resolve_answers(&flags, &mut Unattended).unwrap();
        assert_eq!(a.provider_type, "openai");
        assert_eq!(a.profile_name, "openai");
        assert_eq!(a.base_url, "https://api.openai.com/v1");
        assert_eq!(a.agent_id, "default");
        assert!(!a.sync_models);

        let e = resolve_answers(&Flags::default(), &mut Unattended).unwrap_err();
        assert!(e.starts_with("--api-key is required with --yes"), "{e}");
        let flags = Flags {
            provider_type: Some("openai_compatible".into()),
            api_key: Some("sk-1".into()),
            ..Flags::default()
        };
        let e = resolve_answers(&flags, &mut Unattended).unwrap_err();
        assert!(e.starts_with("--base-url is required"), "{e}");
    }

    #[test]
    fn api_key_refusals_never_repeat_the_key() {
        let e = check_api_key("sk secret").unwrap_err();
        assert!(!e.contains("secret"));
    }

    #[test]
    fn the_default_url_follows_the_published_port_or_port() {
        let values: HashMap<String, String> = [
            ("PORT".to_string(), "9000".to_string()),
            ("SWITCHER_PUBLISH".to_string(), "127.0.0.1:8181".to_string()),
        ]
        .into();
        assert_eq!(default_server_url(&values, false), "http://127.0.0.1:9000");
        if std::env::var_os("SWITCHER_PUBLISH").is_none() {
            assert_eq!(default_server_url(&values, true), "http://127.0.0.1:8181");
        }
        assert_eq!(
            default_server_url(&HashMap::new(), false),
            "http://127.0.0.1:8080"
        );
    }
}
