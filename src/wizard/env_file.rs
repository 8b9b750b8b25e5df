//! Planning and writing the env file: existing lines stay, missing keys are generated.

use super::*;

/// What the wizard will do to the env file.
#[derive(Debug)]
pub(super) struct EnvPlan {
    /// The new contents, or `None` when nothing needs to change.
    pub(super) text: Option<String>,
    /// One line per variable added or filled in; never a key's value.
    pub(super) notes: Vec<String>,
    /// One line per variable whose environment value overrides (or hides) the file's, or
    /// that the Docker service will not see; never a value.
    pub(super) warnings: Vec<String>,
    /// The variables of [`SHELL_VARS`] whose value comes from the environment, not the file.
    pub(super) from_env: Vec<&'static str>,
    /// The effective values after the change, read the way the server reads them.
    pub(super) values: HashMap<String, String>,
}

/// The process environment as the wizard sees it, and whether the server shares it.
pub(super) struct Shell<'a> {
    /// A variable of the environment (`std::env::var` in use; a map in the tests).
    pub(super) lookup: &'a dyn Fn(&str) -> Option<String>,
    /// True with `--no-docker`: the server is started from this environment, which wins over
    /// the env file (dotenvy never overrides a variable that is already set). The Docker
    /// service sees only the env file (`env_file: .env`; compose passes no `ROUTER_*`
    /// variable of the shell), so there the environment is ignored.
    pub(super) seen_by_server: bool,
}

/// The variables whose environment value the wizard itself uses: the keys for its API calls
/// (and the KMS key's derivation), `PORT` for the default URL.
pub(super) const SHELL_VARS: [&str; 4] = [ADMIN_KEY, AGENT_KEY, KMS_KEY, "PORT"];

pub(super) fn is_blank(value: &str) -> bool {
    value.trim().is_empty()
}

/// The variables of an env file in order, parsed as the server parses them (dotenvy).
pub(super) fn parse_env(text: &str) -> Result<Vec<(String, String)>, String> {
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

/// Whether `line` on its own sets `name` to nothing (`NAME=`, `NAME=""`, `NAME='' # note`),
/// as dotenvy, the server's parser, reads it. A line that refers to another variable (`$`)
/// is left alone: what it means depends on more than the line.
pub(super) fn is_empty_assignment(line: &str, name: &str) -> bool {
    !line.contains('$')
        && matches!(
            dotenvy::from_read_iter(line.as_bytes()).next(),
            Some(Ok((n, value))) if n == name && value.is_empty()
        )
}

/// Plans the env file: existing lines stay as they are; missing keys are generated with
/// `random` and appended (or written into a line that sets them to nothing); missing
/// defaults are appended. A key the server takes from the environment (`shell`) exists
/// already: it is used, never generated, and never copied into the file. The result is
/// checked as the server would check it. `file` names the env file in messages.
pub(super) fn plan_env(
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

pub(super) fn read_env_file(path: &Path) -> Result<Option<String>, String> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// The server's URL when `--url` is not given: the host port Docker publishes, or `PORT`.
pub(super) fn default_server_url(values: &HashMap<String, String>, docker: bool) -> String {
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

pub(super) fn apply_env_plan(path: &Path, existed: bool, plan: &EnvPlan) -> Result<(), String> {
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
