//! The wizard's steps, one by one, without a server.

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
    let e =
        try_plan("ROUTER_ADMIN_KEY=change-me-admin-key\nROUTER_AGENT_KEY=change-me-agent-key\n")
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
    let e = try_plan("ROUTER_ADMIN_KEY=a1\nROUTER_AGENT_KEY=\"unterminated-secret\n").unwrap_err();
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

#[test]
fn an_empty_assignment_is_recognised_as_the_server_reads_it() {
    for line in [
        "ROUTER_ADMIN_KEY=",
        "ROUTER_ADMIN_KEY=\"\"",
        "ROUTER_ADMIN_KEY='' # set me",
        "export ROUTER_ADMIN_KEY=",
    ] {
        assert!(is_empty_assignment(line, ADMIN_KEY), "{line}");
    }
    for line in [
        "ROUTER_ADMIN_KEY=x",
        "ROUTER_AGENT_KEY=",
        "# ROUTER_ADMIN_KEY=",
        "ROUTER_ADMIN_KEY=${UNSET_ELSEWHERE}",
    ] {
        assert!(!is_empty_assignment(line, ADMIN_KEY), "{line}");
    }
}
