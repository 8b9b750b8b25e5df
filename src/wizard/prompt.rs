//! The questions no flag answered: asked on a terminal (or a pipe), or refused with --yes.

use super::*;

/// Everything the wizard was told, by flag, by answer or by default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Answers {
    pub(super) provider_type: String,
    pub(super) profile_name: String,
    pub(super) base_url: String,
    pub(super) api_key: String,
    pub(super) model: String,
    pub(super) agent_id: String,
    pub(super) sync_models: bool,
}

/// One question and the flag that answers it in advance.
pub(super) struct Question<'a> {
    pub(super) flag: &'static str,
    pub(super) text: &'a str,
    pub(super) default: Option<&'a str>,
}

/// Where answers that no flag gave come from: the operator, or the defaults under `--yes`.
pub(super) trait Ask {
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
pub(super) struct Unattended;

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
pub(super) struct Prompter<R, W> {
    pub(super) input: R,
    pub(super) output: W,
    /// Whether the input is a terminal, whose echo is turned off while a secret is typed.
    pub(super) terminal: bool,
}

impl<R: BufRead, W: Write> Prompter<R, W> {
    pub(super) fn prompt(&mut self, q: &Question) {
        let _ = match q.default {
            Some(d) => write!(self.output, "{} [{d}]: ", q.text),
            None => write!(self.output, "{}: ", q.text),
        };
        let _ = self.output.flush();
    }

    pub(super) fn read_answer(&mut self, q: &Question) -> Result<String, String> {
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
    pub(super) fn judge(
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

    pub(super) fn refuse(&mut self, message: &str) {
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
pub(super) struct EchoOff(bool);

impl EchoOff {
    pub(super) fn new(terminal: bool) -> EchoOff {
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

pub(super) fn stty(setting: &str) -> bool {
    Command::new("stty")
        .arg(setting)
        .stdin(Stdio::inherit())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Fills every answer: the flag when given, else the question (or its default).
pub(super) fn resolve_answers(flags: &Flags, ask: &mut dyn Ask) -> Result<Answers, String> {
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
