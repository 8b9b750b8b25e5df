//! `switcher-api wizard`: unattended, through a pseudo-terminal, and refusing bad input.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::*;

/// A `.env` that points the wizard at the test server's keys, with a comment and a
/// variable of the operator's own that must survive.
fn env_with_test_keys() -> String {
    format!(
        "# written by the operator\nROUTER_ADMIN_KEY={ADMIN_KEY}\n\nLOG_LEVEL=debug\nROUTER_AGENT_KEY={AGENT_KEY}\n"
    )
}

fn dir_with_env(text: &str) -> std::path::PathBuf {
    let dir = empty_dir();
    fs::write(dir.join(".env"), text).unwrap();
    dir
}

/// The variables the wizard takes from its environment (the server reads them there before
/// `.env`), removed so that the test process's own cannot leak in.
const WIZARD_ENV_VARS: &[&str] = &[
    "ROUTER_ADMIN_KEY",
    "ROUTER_AGENT_KEY",
    "ROUTER_KMS_KEY",
    "PORT",
    "SWITCHER_PUBLISH",
    "LOG_LEVEL",
];

/// Runs the wizard in `dir` with `stdin` as its input; waits at most two minutes.
fn wizard(dir: &Path, args: &[&str], stdin: &str) -> Exit {
    wizard_with_env(dir, args, stdin, &[])
}

/// [`wizard`] with `env` added to its environment.
fn wizard_with_env(dir: &Path, args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Exit {
    let mut command = Command::new(binary());
    for var in WIZARD_ENV_VARS {
        command.env_remove(var);
    }
    let mut child = command
        .arg("wizard")
        .args(args)
        .current_dir(dir)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start switcher-api wizard");
    {
        use std::io::Write;
        let mut input = child.stdin.take().unwrap();
        let _ = input.write_all(stdin.as_bytes());
    }
    let collect = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut out = String::new();
            let _ = pipe.read_to_string(&mut out);
            out
        })
    };
    let stdout = collect(Box::new(child.stdout.take().unwrap()));
    let stderr = collect(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + Duration::from_secs(120);
    let code = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    Exit {
        code,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// The lines of an env file that set one of the three keys.
fn key_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with("ROUTER_"))
        .map(str::to_string)
        .collect()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn active(app: &TestApp, agent_id: &str) -> Value {
    let r = app
        .agent("GET", &format!("/api/active?agent_id={agent_id}"))
        .send();
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[test]
fn the_wizard_run_unattended_sets_up_a_profile_and_an_active_model_and_keeps_existing_keys() {
    let app = TestApp::spawn();
    let original = env_with_test_keys();
    let dir = dir_with_env(&original);
    let env_file = dir.join(".env");
    fs::set_permissions(&env_file, fs::Permissions::from_mode(0o644)).unwrap();
    let secret = "sk-wizard-provider-secret";
    let args = [
        "--no-docker",
        "--yes",
        "--url",
        &app.url,
        "--profile-name",
        "p1",
        "--provider-type",
        "openai_compatible",
        "--base-url",
        "http://127.0.0.1:9/v1",
        "--api-key",
        secret,
        "--agent-id",
        "bot",
        "--model",
        "m1",
    ];

    let first = wizard(&dir, &args, "");
    assert_eq!(first.code, Some(0), "{first:?}");
    let state = active(&app, "bot");
    assert_eq!(state["profile_name"], "p1");
    assert_eq!(state["model_name"], "m1");
    assert_eq!(state["provider_type"], "openai_compatible");

    let written = fs::read_to_string(&env_file).unwrap();
    assert_eq!(mode(&env_file), 0o600);
    assert!(
        written.starts_with(&original),
        "existing lines changed:\n{written}"
    );
    let kms = written
        .lines()
        .find_map(|l| l.strip_prefix("ROUTER_KMS_KEY="))
        .expect("ROUTER_KMS_KEY was added");
    switcher_api::config::parse_kms_key(kms).expect("a valid KMS key");
    assert!(written.contains("\nPORT=8080\n"));

    let output = format!("{}{}", first.stdout, first.stderr);
    assert!(output.contains(AGENT_KEY), "{output}");
    assert!(output.contains(&format!("{}/v1", app.url)), "{output}");
    assert!(output.contains("default_headers={\"x-agent-id\": \"bot\"}"));
    assert!(!output.contains(secret), "{output}");
    assert!(!output.contains(ADMIN_KEY), "{output}");

    // Again, with the profile already there: it is updated, and no key line moves a byte.
    let second = wizard(&dir, &args, "");
    assert_eq!(second.code, Some(0), "{second:?}");
    let rewritten = fs::read_to_string(&env_file).unwrap();
    assert_eq!(key_lines(&rewritten), key_lines(&written));
    assert_eq!(rewritten, written);
    assert!(second.stdout.contains("already there"), "{second:?}");
    let profiles = app.admin("GET", "/admin/profiles").send().json();
    assert_eq!(profiles["data"].as_array().unwrap().len(), 1);
    assert_eq!(active(&app, "bot")["model_name"], "m1");
}

/// Keys exported in the shell, no `.env` (a host that sets them in its service manager, say).
/// The wizard must use the keys
/// the server uses (the environment's), generate none in their place, and not copy them into
/// `.env`: the file gets no `ROUTER_ADMIN_KEY` or `ROUTER_AGENT_KEY` line at all, only the
/// `ROUTER_KMS_KEY` the server already derived from the exported admin key.
#[test]
fn the_wizard_uses_keys_from_its_environment_and_writes_none_into_env() {
    use base64::Engine;
    use sha2::{Digest, Sha256};

    let app = TestApp::spawn();
    let dir = empty_dir();
    let env_file = dir.join(".env");
    let args = [
        "--no-docker",
        "--yes",
        "--url",
        &app.url,
        "--profile-name",
        "p-env",
        "--provider-type",
        "openai_compatible",
        "--base-url",
        "http://127.0.0.1:9/v1",
        "--api-key",
        "sk-env-provider-secret",
        "--agent-id",
        "env-bot",
        "--model",
        "m-env",
    ];
    let env = [
        ("ROUTER_ADMIN_KEY", ADMIN_KEY),
        ("ROUTER_AGENT_KEY", AGENT_KEY),
    ];

    let out = wizard_with_env(&dir, &args, "", &env);
    assert_eq!(out.code, Some(0), "{out:?}");
    let state = active(&app, "env-bot");
    assert_eq!(state["profile_name"], "p-env");
    assert_eq!(state["model_name"], "m-env");

    let written = fs::read_to_string(&env_file).unwrap();
    assert_eq!(mode(&env_file), 0o600);
    let pairs: Vec<(String, String)> = dotenvy::from_read_iter(written.as_bytes())
        .map(Result::unwrap)
        .collect();
    let names: Vec<&str> = pairs.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        !names.contains(&"ROUTER_ADMIN_KEY") && !names.contains(&"ROUTER_AGENT_KEY"),
        "{written}"
    );
    assert!(!written.contains(ADMIN_KEY) && !written.contains(AGENT_KEY));
    let kms = pairs
        .iter()
        .find(|(n, _)| n == "ROUTER_KMS_KEY")
        .map(|(_, v)| v.as_str())
        .expect("ROUTER_KMS_KEY was added");
    let derived =
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(ADMIN_KEY.as_bytes()));
    assert_eq!(kms, derived);

    let output = format!("{}{}", out.stdout, out.stderr);
    assert!(!output.contains(ADMIN_KEY), "{output}");
    assert!(!output.contains("Warning"), "{output}");
    assert!(output.contains("from the environment"), "{output}");

    // Again, now that .env exists: nothing changes, and a disagreeing file key is overruled
    // by the environment with one warning that names the variable and no value.
    let with_other_admin = format!("{written}ROUTER_ADMIN_KEY=some-other-admin-key\n");
    fs::write(&env_file, &with_other_admin).unwrap();
    let again = wizard_with_env(&dir, &args, "", &env);
    assert_eq!(again.code, Some(0), "{again:?}");
    assert_eq!(fs::read_to_string(&env_file).unwrap(), with_other_admin);
    let warnings: Vec<&str> = again
        .stdout
        .lines()
        .filter(|l| l.starts_with("Warning"))
        .collect();
    assert_eq!(warnings.len(), 1, "{again:?}");
    assert!(warnings[0].contains("ROUTER_ADMIN_KEY"), "{again:?}");
    assert!(!again.stdout.contains("some-other-admin-key"), "{again:?}");
}

/// Drives a program through a pseudo-terminal: `steps` are [expected text, answer or null];
/// prints {"code", "transcript"} as JSON.
const PTY_DRIVER: &str = r#"
import json, os, pty, select, sys, time

spec = json.loads(sys.argv[1])
pid, fd = pty.fork()
if pid == 0:
    os.chdir(spec["cwd"])
    os.execv(spec["argv"][0], spec["argv"])

transcript = b""
searched = 0
deadline = time.time() + 90

def pump(timeout):
    global transcript
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        return True
    try:
        chunk = os.read(fd, 4096)
    except OSError:
        return False
    if not chunk:
        return False
    transcript += chunk
    return True

def finish(code, missing=None):
    print(json.dumps({"code": code, "missing": missing,
                      "transcript": transcript.decode("utf-8", "replace")}))
    sys.exit(0)

for expected, answer in spec["steps"]:
    want = expected.encode()
    while want not in transcript[searched:]:
        if time.time() > deadline or not pump(0.2):
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            finish(None, expected)
    searched = transcript.index(want, searched) + len(want)
    if answer is not None:
        os.write(fd, (answer + "\n").encode())

while time.time() < deadline and pump(0.2):
    pass
_, status = os.waitpid(pid, 0)
finish(os.waitstatus_to_exitcode(status))
"#;

#[test]
fn the_wizard_driven_through_a_terminal_asks_again_after_a_wrong_answer() {
    let app = TestApp::spawn();
    let dir = dir_with_env(&env_with_test_keys());
    let script = dir.join("drive.py");
    fs::write(&script, PTY_DRIVER).unwrap();
    let secret = "sk-typed-in-secret";
    let spec = json!({
        "cwd": dir,
        "argv": [binary(), "wizard", "--no-docker", "--url", app.url],
        "steps": [
            ["Provider type", "bogus"],
            ["unknown provider type", null],
            ["Provider type", "openai_compatible"],
            ["Profile name", "p-pty"],
            ["Base URL", "http://127.0.0.1:9/v1"],
            ["API key", secret],
            ["model list", "n"],
            ["Model name", "m-pty"],
            // Enter takes the default agent id.
            ["Agent id [default]", ""],
            ["Ready.", null],
        ],
    });
    let mut python = Command::new("python3");
    for var in WIZARD_ENV_VARS {
        python.env_remove(var);
    }
    let out = python
        .arg(&script)
        .arg(spec.to_string())
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).expect("the driver's report");
    let transcript = result["transcript"].as_str().unwrap();
    assert_eq!(result["missing"], Value::Null, "{transcript}");
    assert_eq!(result["code"], 0, "{transcript}");
    assert_eq!(
        transcript.matches("Provider type (").count(),
        2,
        "{transcript}"
    );
    assert!(!transcript.contains(secret), "{transcript}");
    assert!(transcript.contains(AGENT_KEY));

    let state = active(&app, "default");
    assert_eq!(state["profile_name"], "p-pty");
    assert_eq!(state["model_name"], "m-pty");
    assert_eq!(mode(&dir.join(".env")), 0o600);
}

#[test]
fn a_wrong_flag_value_fails_with_one_line_and_writes_nothing() {
    let original = env_with_test_keys();
    let dir = dir_with_env(&original);
    let out = wizard(
        &dir,
        &[
            "--no-docker",
            "--yes",
            "--provider-type",
            "bogus",
            "--api-key",
            "sk-x",
        ],
        "",
    );
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(out.code.is_some(), "the wizard hung: {out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    assert!(out.stderr.contains("--provider-type"), "{out:?}");
    assert!(out.stderr.contains("bogus"), "{out:?}");
    assert_eq!(fs::read_to_string(dir.join(".env")).unwrap(), original);
    assert_eq!(
        fs::read_dir(&dir).unwrap().count(),
        1,
        "a stray file was left"
    );

    // Without a .env, none is created.
    let empty = empty_dir();
    let out = wizard(&empty, &["--yes", "--no-docker", "--model", "m"], "");
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("--api-key"), "{out:?}");
    assert_eq!(fs::read_dir(&empty).unwrap().count(), 0);
}

#[test]
fn a_placeholder_key_in_env_is_reported_and_left_alone() {
    let original = "ROUTER_ADMIN_KEY=change-me-admin-key\nROUTER_AGENT_KEY=change-me-agent-key\nROUTER_KMS_KEY=\n";
    let dir = dir_with_env(original);
    let out = wizard(&dir, &["--yes", "--no-docker", "--api-key", "sk-x"], "");
    assert_ne!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    assert!(
        out.stderr.contains("ROUTER_ADMIN_KEY") && out.stderr.contains("placeholder"),
        "{out:?}"
    );
    assert_eq!(fs::read_to_string(dir.join(".env")).unwrap(), original);
}

#[test]
fn stdin_that_ends_mid_question_is_a_clear_error_and_writes_nothing() {
    let dir = empty_dir();
    let out = wizard(&dir, &["--no-docker"], "openai\n");
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("stdin ended"), "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
}

/// `--api-key-file PATH`, `--api-key-file -` (standard input) and `--api-key-env NAME`: the
/// key reaches the profile (the provider gets it) and is never printed.
#[test]
fn the_wizard_reads_the_api_key_from_a_file_standard_input_or_the_environment() {
    let app = TestApp::spawn();
    let upstream = FakeUpstream::start(|_| Answer::Json(200, json!({"choices": []})));
    let dir = dir_with_env(&env_with_test_keys());
    let key_file = dir.join("provider.key");
    let args = |source: &[&'static str]| -> Vec<String> {
        let mut args: Vec<String> = [
            "--no-docker",
            "--yes",
            "--url",
            &app.url,
            "--profile-name",
            "p1",
            "--provider-type",
            "openai_compatible",
            "--base-url",
            &upstream.url,
            "--agent-id",
            "bot",
            "--model",
            "m1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(source.iter().map(|s| s.to_string()));
        args
    };
    let sent_key = || {
        let r = app
            .agent("POST", "/v1/chat/completions")
            .header("x-agent-id", "bot")
            .json(&json!({"messages": [{"role": "user", "content": "hi"}]}));
        assert_eq!(r.status, 200, "{}", r.text());
        upstream.last().header("authorization").unwrap().to_string()
    };

    let from_file = "sk-from-a-file-7c1e";
    fs::write(&key_file, format!("{from_file}\n")).unwrap();
    let path = key_file.to_str().unwrap();
    let mut run = args(&["--api-key-file"]);
    run.push(path.to_string());
    let run: Vec<&str> = run.iter().map(String::as_str).collect();
    let out = wizard(&dir, &run, "");
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(!format!("{out:?}").contains(from_file), "{out:?}");
    assert_eq!(sent_key(), format!("Bearer {from_file}"));

    let from_stdin = "sk-from-standard-input-2b9d";
    let run = args(&["--api-key-file", "-"]);
    let run: Vec<&str> = run.iter().map(String::as_str).collect();
    let out = wizard(&dir, &run, &format!("{from_stdin}\n"));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(!format!("{out:?}").contains(from_stdin), "{out:?}");
    assert_eq!(sent_key(), format!("Bearer {from_stdin}"));

    let from_env = "sk-from-the-environment-5a0f";
    let run = args(&["--api-key-env", "PROVIDER_KEY"]);
    let run: Vec<&str> = run.iter().map(String::as_str).collect();
    let out = wizard_with_env(&dir, &run, "", &[("PROVIDER_KEY", from_env)]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(!format!("{out:?}").contains(from_env), "{out:?}");
    assert_eq!(sent_key(), format!("Bearer {from_env}"));

    // Refusals name the flag, never a key.
    let run = args(&["--api-key-env", "NOT_SET_ANYWHERE"]);
    let run: Vec<&str> = run.iter().map(String::as_str).collect();
    let out = wizard(&dir, &run, "");
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("NOT_SET_ANYWHERE"), "{out:?}");
    let run = args(&["--api-key", "sk-two-ways", "--api-key-file", "-"]);
    let run: Vec<&str> = run.iter().map(String::as_str).collect();
    let out = wizard(&dir, &run, "sk-two-ways\n");
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("one way"), "{out:?}");
    assert!(!out.stderr.contains("sk-two-ways"), "{out:?}");
    let missing = dir.join("no-such.key");
    let mut run = args(&["--api-key-file"]);
    run.push(missing.to_str().unwrap().to_string());
    let run: Vec<&str> = run.iter().map(String::as_str).collect();
    let out = wizard(&dir, &run, "");
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("no-such.key"), "{out:?}");
}
