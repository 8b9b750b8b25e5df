//! Token usage of one answer, as recorded in `audit_requests`.

/// Token counts in OpenAI's terms, whatever the provider reported them as.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
}

impl Usage {
    /// The sum, saturating: the counts come from the upstream and may be absurd.
    pub fn total_tokens(&self) -> i64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }

    /// Reads an OpenAI `usage` object (`prompt_tokens`, `completion_tokens`).
    pub fn from_openai(usage: &serde_json::Value) -> Option<Usage> {
        let prompt_tokens = usage.get("prompt_tokens")?.as_i64()?;
        let completion_tokens = usage.get("completion_tokens")?.as_i64()?;
        Some(Usage {
            prompt_tokens,
            completion_tokens,
        })
    }
}

/// The top-level `usage` object of a JSON answer, read without building the rest: every other
/// field is skipped as it is scanned, so a large answer costs no more memory than its bytes.
/// An error when the body is not JSON (JSON that is not an object has no usage).
pub fn usage_field(body: &[u8]) -> Result<Option<serde_json::Value>, serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct Top {
        usage: Option<serde_json::Value>,
    }
    // A derived struct also reads from an array (`[1]` would be `usage: 1`).
    let is_object = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if !is_object {
        return serde_json::from_slice::<serde::de::IgnoredAny>(body).map(|_| None);
    }
    match serde_json::from_slice::<Top>(body) {
        Ok(top) => Ok(top.usage),
        Err(e) if e.is_data() => {
            serde_json::from_slice::<serde::de::IgnoredAny>(body).map(|_| None)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_read_from_the_top_level_only() {
        let body = br#"{"choices":[{"usage":1,"message":{"content":"x"}}],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#;
        let usage = usage_field(body).unwrap().unwrap();
        assert_eq!(
            Usage::from_openai(&usage),
            Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 4
            })
        );
        assert_eq!(usage_field(br#"{"id":"x"}"#).unwrap(), None);
        assert!(usage_field(b"<html>").is_err());
        assert_eq!(usage_field(b"[1]").unwrap(), None);
    }

    #[test]
    fn the_total_of_huge_counts_saturates() {
        let usage = Usage {
            prompt_tokens: i64::MAX,
            completion_tokens: 1,
        };
        assert_eq!(usage.total_tokens(), i64::MAX);
    }
}
