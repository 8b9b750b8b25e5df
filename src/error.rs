//! The one error type of the service, and how each error looks to a client.

use std::fmt;

use postgres::error::SqlState;
use serde_json::json;

/// Every way a request can fail. The client sees `message()`; the log also sees `Display`,
/// which may carry internal detail (never a secret).
#[derive(Debug)]
pub enum ApiError {
    /// 400: malformed JSON, wrong types, missing fields. The message names the field.
    BadRequest(String),
    /// 401: no bearer key, or one we do not know.
    Unauthorized,
    /// 403: the agent key on an admin route.
    Forbidden,
    /// 403: an agent's own key used for another agent; the message names both.
    WrongAgent(String),
    /// 404: unknown route or unknown resource.
    NotFound(String),
    /// 405: the route exists but not with this method; `allow` lists the methods it takes.
    MethodNotAllowed { allow: &'static str },
    /// 408: the headers or body did not arrive within the read deadline.
    RequestTimeout,
    /// 409: the request conflicts with the stored state.
    Conflict(String),
    /// 413: the body is larger than `MAX_BODY_BYTES`.
    PayloadTooLarge { limit: usize },
    /// 414: the request line is longer than `limit` bytes.
    RequestLineTooLong { limit: usize },
    /// 431: the header block is over `bytes` or has more than `fields` fields.
    HeadersTooLarge { bytes: usize, fields: usize },
    /// 417 or 505: HTTP the server does not speak (an unknown `Expect`, HTTP/2 over TCP).
    Unsupported { status: u16, message: &'static str },
    /// 502: the upstream was unreachable or answered something unusable.
    BadGateway(String),
    /// 503: the database cannot be reached; the detail goes to the log only.
    DbUnavailable(String),
    /// 503 with a reason the client may see: the audit journal is full or cannot be written,
    /// or the routing state is not loaded yet. `code` names which.
    Unavailable { code: &'static str, message: String },
    /// 504: the upstream did not answer in time.
    GatewayTimeout(String),
    /// 500 with a message the client may see (a misconfiguration it can act on).
    Misconfigured(String),
    /// 500: a bug or an unexpected database error; the detail goes to the log only.
    Internal(String),
    /// Any of the above and the lower-level error behind it (a driver's error and its I/O
    /// cause). The client sees the outer error only; the log shows the whole chain.
    Caused(
        Box<ApiError>,
        Box<dyn std::error::Error + Send + Sync + 'static>,
    ),
}

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::Unauthorized => 401,
            ApiError::Forbidden | ApiError::WrongAgent(_) => 403,
            ApiError::NotFound(_) => 404,
            ApiError::MethodNotAllowed { .. } => 405,
            ApiError::RequestTimeout => 408,
            ApiError::Conflict(_) => 409,
            ApiError::PayloadTooLarge { .. } => 413,
            ApiError::RequestLineTooLong { .. } => 414,
            ApiError::HeadersTooLarge { .. } => 431,
            ApiError::Unsupported { status, .. } => *status,
            ApiError::Misconfigured(_) | ApiError::Internal(_) => 500,
            ApiError::BadGateway(_) => 502,
            ApiError::DbUnavailable(_) | ApiError::Unavailable { .. } => 503,
            ApiError::GatewayTimeout(_) => 504,
            ApiError::Caused(outer, _) => outer.status(),
        }
    }

    /// The OpenAI-style `type` of the error.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_)
            | ApiError::PayloadTooLarge { .. }
            | ApiError::RequestLineTooLong { .. }
            | ApiError::HeadersTooLarge { .. }
            | ApiError::Unsupported { .. } => "invalid_request_error",
            ApiError::Unauthorized => "authentication_error",
            ApiError::Forbidden | ApiError::WrongAgent(_) => "permission_error",
            ApiError::NotFound(_) => "not_found_error",
            ApiError::MethodNotAllowed { .. } => "invalid_request_error",
            ApiError::RequestTimeout => "invalid_request_error",
            ApiError::Conflict(_) => "conflict_error",
            ApiError::BadGateway(_) | ApiError::GatewayTimeout(_) => "upstream_error",
            ApiError::DbUnavailable(_) | ApiError::Unavailable { .. } => "service_unavailable",
            ApiError::Misconfigured(_) | ApiError::Internal(_) => "server_error",
            ApiError::Caused(outer, _) => outer.kind(),
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "invalid_request",
            ApiError::Unauthorized => "invalid_api_key",
            ApiError::Forbidden => "admin_key_required",
            ApiError::WrongAgent(_) => "wrong_agent",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::RequestTimeout => "request_timeout",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge { .. } => "body_too_large",
            ApiError::RequestLineTooLong { .. } => "request_line_too_long",
            ApiError::HeadersTooLarge { .. } => "headers_too_large",
            ApiError::Unsupported { .. } => "unsupported_http",
            ApiError::BadGateway(_) => "upstream_unavailable",
            ApiError::GatewayTimeout(_) => "upstream_timeout",
            ApiError::DbUnavailable(_) => "database_unavailable",
            ApiError::Unavailable { code, .. } => code,
            ApiError::Misconfigured(_) => "misconfigured",
            ApiError::Internal(_) => "internal_error",
            ApiError::Caused(outer, _) => outer.code(),
        }
    }

    /// What the client is told. Internal detail stays out.
    pub fn message(&self) -> String {
        match self {
            ApiError::BadRequest(m)
            | ApiError::NotFound(m)
            | ApiError::Conflict(m)
            | ApiError::WrongAgent(m)
            | ApiError::BadGateway(m)
            | ApiError::GatewayTimeout(m)
            | ApiError::Misconfigured(m)
            | ApiError::Unavailable { message: m, .. } => m.clone(),
            ApiError::Unauthorized => {
                "missing or unknown API key: send it as the header `Authorization: Bearer <key>`"
                    .into()
            }
            ApiError::Forbidden => "this route needs the admin key".into(),
            ApiError::MethodNotAllowed { allow } => {
                format!("method not allowed; this route accepts {allow}")
            }
            ApiError::RequestTimeout => {
                "the request did not arrive in time (REQUEST_READ_TIMEOUT_MS)".into()
            }
            ApiError::RequestLineTooLong { limit } => {
                format!("the request line (method, path and query) is longer than {limit} bytes")
            }
            ApiError::HeadersTooLarge { bytes, fields } => {
                format!("the request headers are larger than {bytes} bytes or {fields} fields")
            }
            ApiError::Unsupported { message, .. } => (*message).into(),
            ApiError::PayloadTooLarge { limit } => {
                format!("request body is larger than {limit} bytes (MAX_BODY_BYTES)")
            }
            ApiError::DbUnavailable(_) => "database unavailable".into(),
            ApiError::Internal(_) => "internal server error".into(),
            ApiError::Caused(outer, _) => outer.message(),
        }
    }

    /// The body of the error response, in OpenAI's error shape.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"message": self.message(), "type": self.kind(), "code": self.code()}})
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::BadRequest(message.into())
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::NotFound(message.into())
    }

    /// This error, caused by `source` (kept for the log, never shown to the client).
    pub fn caused_by(self, source: impl std::error::Error + Send + Sync + 'static) -> ApiError {
        ApiError::Caused(Box::new(self), Box::new(source))
    }

    /// `Display` and then each cause in turn, for the log: "a: b: c". A cause whose text
    /// the previous one already holds (drivers often repeat their cause) is not repeated.
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            let next = c.to_string();
            if !text.contains(&next) {
                text.push_str(": ");
                text.push_str(&next);
            }
            cause = c.source();
        }
        text
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::DbUnavailable(detail) => write!(f, "database unavailable: {detail}"),
            ApiError::Internal(detail) => write!(f, "internal error: {detail}"),
            ApiError::Caused(outer, _) => write!(f, "{outer}"),
            other => write!(f, "{}", other.message()),
        }
    }
}

impl std::error::Error for ApiError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ApiError::Caused(_, source) => Some(&**source),
            _ => None,
        }
    }
}

impl From<postgres::Error> for ApiError {
    fn from(e: postgres::Error) -> ApiError {
        // A conflict is the whole story; an outage or a bug keeps the driver's error for the log.
        match classify(&e) {
            conflict @ ApiError::Conflict(_) => conflict,
            other => other.caused_by(e),
        }
    }
}

/// What a database error means for the request; the error itself becomes the cause.
fn classify(e: &postgres::Error) -> ApiError {
    if let Some(db) = e.as_db_error() {
        let code = db.code();
        if *code == SqlState::UNIQUE_VIOLATION {
            return ApiError::Conflict("already exists".into());
        }
        // Which record is missing or still referenced depends on the operation, so each
        // store function that can meet one words it; this is only the fallback.
        if *code == SqlState::FOREIGN_KEY_VIOLATION || *code == SqlState::RESTRICT_VIOLATION {
            return ApiError::Conflict(
                "the request conflicts with a concurrent change to a related record".into(),
            );
        }
        let class = &code.code()[..2];
        // 08: connection exceptions, 57: operator intervention (shutdown), 53: resources.
        if matches!(class, "08" | "57" | "53") {
            return ApiError::DbUnavailable("the server refused the work".into());
        }
        return ApiError::Internal("database error".into());
    }
    if is_connection_failure(e) {
        return ApiError::DbUnavailable("the connection failed".into());
    }
    // A client-side error that is not about the connection (a query that returned an
    // unexpected number of rows, a type mismatch) is a bug of ours, not an outage.
    ApiError::Internal("database client error".into())
}

/// Whether a client-side database error means the connection is gone: closed, or an I/O
/// failure somewhere in its cause chain.
fn is_connection_failure(e: &postgres::Error) -> bool {
    e.is_closed() || caused_by_io(e)
}

fn caused_by_io(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.is::<std::io::Error>() {
            return true;
        }
        cause = c.source();
    }
    false
}

impl From<r2d2::Error> for ApiError {
    fn from(e: r2d2::Error) -> ApiError {
        ApiError::DbUnavailable("no connection from the pool".into()).caused_by(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_detail_never_reaches_the_client_message() {
        let e = ApiError::Internal("relation secret_table does not exist".into());
        assert_eq!(e.status(), 500);
        assert!(!e.body().to_string().contains("secret_table"));
        assert!(e.to_string().contains("secret_table"));
    }

    /// An error whose cause is another error, as drivers wrap the I/O errors they meet.
    #[derive(Debug)]
    struct Wrapped(Box<dyn std::error::Error + Send + Sync>);

    impl fmt::Display for Wrapped {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "wrapped: {}", self.0)
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&*self.0)
        }
    }

    #[test]
    fn an_io_error_anywhere_in_the_cause_chain_is_a_connection_failure() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(caused_by_io(&io));
        assert!(caused_by_io(&Wrapped(Box::new(Wrapped(Box::new(io))))));
        let not_io = std::fmt::Error;
        assert!(!caused_by_io(&Wrapped(Box::new(not_io))));
    }

    #[test]
    fn a_client_side_error_that_is_not_about_the_connection_is_a_500() {
        // The driver's only public constructor: a timeout with no I/O cause behind it, like
        // "query returned an unexpected number of rows".
        let e = ApiError::from(postgres::Error::__private_api_timeout());
        assert_eq!(e.status(), 500, "{e}");
        assert_eq!(e.message(), "internal server error");
    }

    #[test]
    fn a_cause_reaches_the_log_chain_but_never_the_client() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let e = ApiError::DbUnavailable("the connection failed".into())
            .caused_by(Wrapped(Box::new(io)));
        assert_eq!(e.status(), 503);
        assert_eq!(e.code(), "database_unavailable");
        assert_eq!(e.message(), "database unavailable");
        assert!(!e.body().to_string().contains("reset"));
        assert!(std::error::Error::source(&e).is_some());
        assert_eq!(
            e.chain(),
            "database unavailable: the connection failed: wrapped: reset by peer"
        );
    }

    #[test]
    fn error_bodies_have_the_openai_shape() {
        let body = ApiError::bad_request("field `profile_name` is required").body();
        assert_eq!(
            body,
            json!({"error": {"message": "field `profile_name` is required",
                             "type": "invalid_request_error", "code": "invalid_request"}})
        );
    }
}
