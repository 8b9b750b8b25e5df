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
use crate::provider::{default_base_url, normalize_base_url, PROVIDER_TYPES};

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

mod api;
mod atomic;
mod docker;
mod env_file;
mod flags;
mod prompt;
mod setup;
use api::*;
use atomic::*;
use docker::*;
use env_file::*;
use flags::*;
use prompt::*;
use setup::*;

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
                          can see command-line flags while the wizard runs, and the shell keeps
                          them in its history: prefer one of the next two
    --api-key-env NAME    read the API key from the environment variable NAME
    --api-key-file PATH   read the API key from a file; `-` reads standard input (with --yes)
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

#[cfg(test)]
mod tests;
