//! The `switcher-api` command: serve (the default), migrate, wizard, healthcheck.

use std::process::ExitCode;
use std::time::Duration;

use switcher_api::config::Config;
use switcher_api::{log, signals, startup, wizard};

const HELP: &str = "\
switcher-api: one OpenAI-compatible endpoint; the operator switches, per agent, which
provider account and model it reaches.

USAGE:
    switcher-api [serve]       run the server (applies migrations first)
    switcher-api migrate       apply pending database migrations and exit
    switcher-api wizard        first run: write .env, start Docker Compose, create a profile,
                               set an agent's model (see `switcher-api wizard --help`)
    switcher-api healthcheck   exit 0 when /healthz answers 200 (for container health checks)
                               [--url http://127.0.0.1:8080]

OPTIONS:
    -h, --help       print this help
    -V, --version    print the version

Configuration comes from the environment and from a .env file in the working directory;
see README.md. ROUTER_ADMIN_KEY and ROUTER_AGENT_KEY are required.
";

fn main() -> ExitCode {
    let mut args = pico_args::Arguments::from_env();
    let command = match args.subcommand() {
        Ok(c) => c,
        Err(e) => return fail(&format!("{e}")),
    };
    // `wizard` has flags of its own, its `--help` included.
    if command.as_deref() == Some("wizard") {
        return wizard::main(args);
    }
    if args.contains(["-h", "--help"]) {
        print!("{HELP}");
        return ExitCode::SUCCESS;
    }
    if args.contains(["-V", "--version"]) {
        println!("switcher-api {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let command = command.unwrap_or_else(|| "serve".to_string());
    if command == "healthcheck" {
        return healthcheck(args);
    }
    if let Err(e) = no_more_args(args) {
        return fail(&e);
    }
    match command.as_str() {
        "serve" => serve(),
        "migrate" => migrate(),
        other => fail(&format!("unknown command '{other}'; see --help")),
    }
}

fn no_more_args(args: pico_args::Arguments) -> Result<(), String> {
    match args.finish().first() {
        None => Ok(()),
        Some(arg) => Err(format!(
            "unexpected argument {:?}; see --help",
            arg.to_string_lossy()
        )),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("switcher-api: error: {message}");
    ExitCode::from(2)
}

/// Loads `.env` of the working directory (not of its parents) into the environment;
/// variables already set win over it.
fn load_dotenv() -> Result<(), String> {
    match dotenvy::from_path(".env") {
        Ok(_) => Ok(()),
        Err(e) if e.not_found() => Ok(()),
        // dotenvy's message quotes the line, which may hold a key: say where, not what.
        Err(dotenvy::Error::LineParse(line, index)) => Err(format!(
            ".env could not be read: a line does not parse (at character {index} of line {})",
            line_number(".env", &line).map_or("?".to_string(), |n| n.to_string())
        )),
        Err(dotenvy::Error::Io(e)) => Err(format!(".env could not be read: {e}")),
        Err(_) => Err(".env could not be read".to_string()),
    }
}

/// The line number of the first line of `path` where `text` starts, if any.
fn line_number(path: &str, text: &str) -> Option<usize> {
    let content = std::fs::read_to_string(path).ok()?;
    let first = text.lines().next()?;
    content.lines().position(|l| l == first).map(|i| i + 1)
}

/// Loads `.env` and validates the configuration.
fn load_config() -> Result<Config, String> {
    load_dotenv()?;
    let config = Config::from_env().map_err(|e| e.to_string())?;
    log::set_level(config.log_level);
    log::set_format(config.log_format);
    Ok(config)
}

fn serve() -> ExitCode {
    let config = match load_config() {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let grace = config.shutdown_grace;
    let mut signals = match signals::StopSignals::register() {
        Ok(s) => s,
        Err(e) => return fail(&format!("cannot listen for SIGTERM/SIGINT: {e}")),
    };
    let running = match startup::start(config) {
        Ok(running) => running,
        Err(e) => return fail(&e),
    };
    signals.serving();
    let signal = signals.wait();
    // A second signal means "now": the operator does not want to wait for the grace.
    std::thread::spawn(move || {
        let signal = signals.wait();
        switcher_api::warn!("{signal} received again; exiting without waiting");
        std::process::exit(1);
    });
    running.shutdown(grace, &format!("{signal} received"));
    switcher_api::info!("stopped");
    ExitCode::SUCCESS
}

fn migrate() -> ExitCode {
    let config = match load_config() {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    match startup::migrate(&config) {
        Ok(applied) if applied.is_empty() => {
            println!("database is up to date");
            ExitCode::SUCCESS
        }
        Ok(applied) => {
            for name in applied {
                println!("applied {name}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// Asks the local server's `/healthz`; needs no keys, only `PORT` (or `--url`).
fn healthcheck(mut args: pico_args::Arguments) -> ExitCode {
    let url: Option<String> = match args.opt_value_from_str("--url") {
        Ok(u) => u,
        Err(e) => return fail(&e.to_string()),
    };
    if let Err(e) = no_more_args(args) {
        return fail(&e);
    }
    if let Err(e) = load_dotenv() {
        return fail(&e);
    }
    let url = url.unwrap_or_else(|| {
        let port = std::env::var("PORT")
            .ok()
            .filter(|p| !p.trim().is_empty())
            .unwrap_or_else(|| "8080".into());
        format!("http://127.0.0.1:{}", port.trim())
    });
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let target = format!("{}/healthz", url.trim_end_matches('/'));
    match agent.get(&target).call() {
        Ok(r) if r.status() == 200 => {
            println!("healthy");
            ExitCode::SUCCESS
        }
        Ok(r) => {
            eprintln!("unhealthy: /healthz answered {}", r.status().as_u16());
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("unhealthy: {e}");
            ExitCode::from(1)
        }
    }
}
