//! Reading fields out of a JSON request body, with 400s that name the field.

use serde_json::{Map, Value};

use crate::error::ApiError;

/// A JSON object under validation.
pub struct Fields<'a>(pub &'a Map<String, Value>);

fn wrong_type(name: &str, expected: &str) -> ApiError {
    ApiError::bad_request(format!("field `{name}` must be {expected}"))
}

/// Postgres text cannot hold U+0000: such a string would fail in the database (a 500), so it
/// is refused here, naming the field.
fn storable<'s>(name: &str, s: &'s str) -> Result<&'s str, ApiError> {
    if s.contains('\0') {
        return Err(ApiError::bad_request(format!(
            "field `{name}` must not contain NUL characters"
        )));
    }
    Ok(s)
}

/// A field's value unless it is absent or `null`: clients send explicit nulls for "not set"
/// all the time, in control-plane and proxied bodies alike.
pub fn present<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

impl<'a> Fields<'a> {
    fn present(&self, name: &str) -> Option<&'a Value> {
        present(self.0, name)
    }

    /// A 400 naming the first field that is not one of `known`.
    pub fn only(&self, known: &[&str]) -> Result<(), ApiError> {
        match self.0.keys().find(|k| !known.contains(&k.as_str())) {
            Some(unknown) => Err(ApiError::bad_request(format!(
                "unknown field `{unknown}`; this route accepts {}",
                known
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
            None => Ok(()),
        }
    }

    /// A whole number from 1 up (an id).
    pub fn opt_id(&self, name: &str) -> Result<Option<i64>, ApiError> {
        match self.present(name) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .filter(|n| *n >= 1)
                .map(Some)
                .ok_or_else(|| wrong_type(name, "a positive whole number")),
        }
    }

    pub fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    pub fn str(&self, name: &str) -> Result<&'a str, ApiError> {
        self.opt_str(name)?
            .ok_or_else(|| ApiError::bad_request(format!("field `{name}` is required")))
    }

    pub fn opt_str(&self, name: &str) -> Result<Option<&'a str>, ApiError> {
        match self.present(name) {
            None => Ok(None),
            Some(Value::String(s)) => storable(name, s).map(Some),
            Some(_) => Err(wrong_type(name, "a string")),
        }
    }

    pub fn opt_bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.present(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(wrong_type(name, "true or false")),
        }
    }

    /// A whole number from 1 to `i32::MAX`.
    pub fn opt_positive_int(&self, name: &str) -> Result<Option<i32>, ApiError> {
        match self.present(name) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .filter(|n| (1..=i32::MAX as i64).contains(n))
                .map(|n| Some(n as i32))
                .ok_or_else(|| wrong_type(name, "a positive whole number")),
        }
    }

    pub fn opt_str_list(&self, name: &str) -> Result<Option<Vec<String>>, ApiError> {
        match self.present(name) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| match i.as_str() {
                    Some(s) => storable(name, s).map(str::to_string),
                    None => Err(wrong_type(name, "a list of strings")),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(wrong_type(name, "a list of strings")),
        }
    }

    /// A whole number from 0 up.
    pub fn opt_whole(&self, name: &str) -> Result<Option<u64>, ApiError> {
        match self.present(name) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| wrong_type(name, "a whole number")),
        }
    }

    pub fn opt_number(&self, name: &str) -> Result<Option<f64>, ApiError> {
        match self.present(name) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| wrong_type(name, "a number")),
        }
    }

    /// A list of anything; `what` names its items in the message ("a list of messages").
    pub fn opt_list(&self, name: &str, what: &str) -> Result<Option<&'a Vec<Value>>, ApiError> {
        match self.present(name) {
            None => Ok(None),
            Some(Value::Array(items)) => Ok(Some(items)),
            Some(_) => Err(wrong_type(name, what)),
        }
    }

    pub fn opt_object(&self, name: &str) -> Result<Option<Fields<'a>>, ApiError> {
        match self.present(name) {
            None => Ok(None),
            Some(Value::Object(m)) => Ok(Some(Fields(m))),
            Some(_) => Err(wrong_type(name, "an object")),
        }
    }
}

/// A `limit` query parameter: 1 to `max`, `default` when absent.
pub fn query_limit(raw: Option<&str>, default: i64, max: i64) -> Result<i64, ApiError> {
    match raw {
        None => Ok(default),
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "query parameter `limit` must be a whole number from 1 to {max}"
                ))
            }),
    }
}

/// An id query parameter (`before_id`): a whole number from 1 up.
pub fn query_id(name: &str, raw: Option<&str>) -> Result<Option<i64>, ApiError> {
    match raw {
        None => Ok(None),
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 1)
            .map(Some)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "query parameter `{name}` must be a positive whole number"
                ))
            }),
    }
}

/// `profile_name`: 1–64 of `[A-Za-z0-9._-]`.
pub fn valid_profile_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `agent_id`: 1–128 characters, none of them control characters.
pub fn check_agent_id(agent_id: &str) -> Result<(), ApiError> {
    if agent_id.is_empty() || agent_id.chars().count() > 128 {
        return Err(ApiError::bad_request(
            "`agent_id` must be 1 to 128 characters long",
        ));
    }
    if agent_id.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "`agent_id` must not contain control characters",
        ));
    }
    Ok(())
}

/// `model_name`: 1–256 characters, none of them control characters.
pub fn check_model_name(model_name: &str) -> Result<(), ApiError> {
    if model_name.is_empty()
        || model_name.chars().count() > 256
        || model_name.chars().any(char::is_control)
    {
        return Err(ApiError::bad_request(
            "field `model_name` must be 1 to 256 characters with no control characters",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn profile_names_follow_the_contract() {
        assert!(valid_profile_name("openai-main_2.v1"));
        assert!(valid_profile_name(&"a".repeat(64)));
        assert!(!valid_profile_name(&"a".repeat(65)));
        assert!(!valid_profile_name(""));
        assert!(!valid_profile_name("has space"));
        assert!(!valid_profile_name("slash/y"));
        assert!(!valid_profile_name("ünï"));
    }

    #[test]
    fn wrong_types_name_the_field() {
        let body = json!({"enabled": "yes", "tags": [1], "max_tokens": 0});
        let f = Fields(body.as_object().unwrap());
        assert!(f
            .opt_bool("enabled")
            .unwrap_err()
            .message()
            .contains("`enabled`"));
        assert!(f
            .opt_str_list("tags")
            .unwrap_err()
            .message()
            .contains("`tags`"));
        assert!(f
            .opt_positive_int("max_tokens")
            .unwrap_err()
            .message()
            .contains("`max_tokens`"));
        let nul = json!({"name": "a\u{0}b", "tags": ["ok", "a\u{0}b"]});
        let f = Fields(nul.as_object().unwrap());
        assert!(f.str("name").unwrap_err().message().contains("`name`"));
        assert!(f
            .opt_str_list("tags")
            .unwrap_err()
            .message()
            .contains("`tags`"));
        let f = Fields(body.as_object().unwrap());
        assert!(f
            .str("missing")
            .unwrap_err()
            .message()
            .contains("`missing` is required"));
    }

    #[test]
    fn unknown_fields_and_bad_query_numbers_are_named() {
        let body = json!({"agent_id": "a", "extra": 1});
        let f = Fields(body.as_object().unwrap());
        assert!(f.only(&["agent_id", "extra"]).is_ok());
        let e = f.only(&["agent_id"]).unwrap_err();
        assert!(e.message().contains("`extra`"), "{e}");
        assert_eq!(query_limit(None, 50, 1000).unwrap(), 50);
        assert_eq!(query_limit(Some("1000"), 50, 1000).unwrap(), 1000);
        for bad in ["0", "1001", "-1", "x", ""] {
            let e = query_limit(Some(bad), 50, 1000).unwrap_err();
            assert!(e.message().contains("`limit`"), "{bad}: {e}");
        }
        assert_eq!(query_id("before_id", Some("7")).unwrap(), Some(7));
        assert!(query_id("before_id", Some("0")).is_err());
    }

    #[test]
    fn null_counts_as_absent() {
        let body = json!({"base_url": null});
        let f = Fields(body.as_object().unwrap());
        assert_eq!(f.opt_str("base_url").unwrap(), None);
        assert!(f.has("base_url"));
    }
}
