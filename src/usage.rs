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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_total_of_huge_counts_saturates() {
        let usage = Usage {
            prompt_tokens: i64::MAX,
            completion_tokens: 1,
        };
        assert_eq!(usage.total_tokens(), i64::MAX);
    }
}
