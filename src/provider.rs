//! Provider types: what each speaks, and the base URL a profile of it points at.

use crate::error::ApiError;

/// What a profile's API speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderType {
    OpenAi,
    Anthropic,
    OpenAiCompatible,
}

impl ProviderType {
    pub fn parse(raw: &str) -> Option<ProviderType> {
        match raw {
            "openai" => Some(ProviderType::OpenAi),
            "anthropic" => Some(ProviderType::Anthropic),
            "openai_compatible" => Some(ProviderType::OpenAiCompatible),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderType::OpenAi => "openai",
            ProviderType::Anthropic => "anthropic",
            ProviderType::OpenAiCompatible => "openai_compatible",
        }
    }
}

pub const PROVIDER_TYPES: [&str; 3] = ["openai", "anthropic", "openai_compatible"];

/// The base URL a provider type gets when none is given.
pub fn default_base_url(provider_type: &str) -> Option<&'static str> {
    match provider_type {
        "openai" => Some("https://api.openai.com/v1"),
        "anthropic" => Some("https://api.anthropic.com"),
        _ => None,
    }
}

/// An `http(s)://host...` URL without a trailing slash, or a 400 naming `base_url`.
pub fn normalize_base_url(raw: &str) -> Result<String, ApiError> {
    let url = raw.trim().trim_end_matches('/');
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    let valid = rest.is_some_and(|r| {
        let host = r.split(['/', '?', '#']).next().unwrap_or("");
        !host.is_empty() && !host.contains(char::is_whitespace)
    }) && !url.contains(char::is_whitespace)
        && !url.contains(['?', '#']);
    if !valid {
        return Err(ApiError::bad_request(
            "field `base_url` must be an http:// or https:// URL with a host (no query string)",
        ));
    }
    // `user:pass@host` would be stored, listed and logged in plain text (and the message
    // must not repeat it either).
    let authority = rest.unwrap_or_default().split('/').next().unwrap_or("");
    if authority.contains('@') {
        return Err(ApiError::bad_request(
            "field `base_url` must not hold credentials (user:password@): they would be stored \
             and listed in plain text; the key goes in `credentials.api_key`",
        ));
    }
    Ok(url.to_string())
}
