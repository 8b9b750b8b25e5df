//! The `switcher-api` command: serve (the default), migrate, wizard, healthcheck.

use std::process::ExitCode;

use switcher_api::config::Config;
use switcher_api::{log, startup};

const HELP: &str = "\
switcher-api: one OpenAI-compatible endpoint; the operator switches, per agent, which
provider account and model it reaches.

USAGE:
    switcher-api [serve]     run the server (applies migrations first)
    switcher-api migrate     apply pending database migrations and exit

OPTIONS:
    -h, --help       print this help
    -V, --version    print the version

Configuration comes from the environment and from a .env file in the working directory;
see README.md. ROUTER_ADMIN_KEY and ROUTER_AGENT_KEY are required.
";

fn main() -> ExitCode {
    let mut args = pico_args::Arguments::from_env();
    if args.contains(["-h", "--help"]) {
        print!("{HELP}");
        return ExitCode::SUCCESS;
    }
    if args.contains(["-V", "--version"]) {
        println!("switcher-api {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let command = match args.subcommand() {
        Ok(c) => c.unwrap_or_else(|| "serve".to_string()),
        Err(e) => return fail(&format!("{e}")),
    };
    let rest = args.finish();
    if !rest.is_empty() {
        return fail(&format!(
            "unexpected argument {:?}; see --help",
            rest[0].to_string_lossy()
        ));
    }
    match command.as_str() {
        "serve" => serve(),
        "migrate" => migrate(),
        other => fail(&format!("unknown command '{other}'; see --help")),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("switcher-api: error: {message}");
    ExitCode::from(2)
}

/// Loads `.env` (the environment wins over it) and validates the configuration.
fn load_config() -> Result<Config, String> {
    match dotenvy::dotenv() {
        Ok(_) => {}
        Err(e) if e.not_found() => {}
        Err(e) => return Err(format!(".env could not be read: {e}")),
    }
    let config = Config::from_env().map_err(|e| e.to_string())?;
    log::set_level(config.log_level);
    Ok(config)
}

fn serve() -> ExitCode {
    let config = match load_config() {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    match startup::start(config) {
        Ok(running) => {
            running.wait();
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
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
