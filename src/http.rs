//! The request snapshot handlers see, and the reply they give back.

use std::borrow::Cow;
use std::io::{self, Read, Write};
use std::time::{Instant, SystemTime};

use serde_json::Value;

use crate::error::ApiError;

/// An owned snapshot of one request: everything a handler may look at.
#[derive(Debug, Clone)]
pub struct Req {
    pub path: String,
    pub query: Vec<(String, String)>,
    /// The query string as it came, without its `?` (forwarded to Anthropic upstreams).
    pub raw_query: String,
    /// Header names in lowercase.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// When the request arrived.
    pub received_at: SystemTime,
    pub started: Instant,
}

impl Default for Req {
    fn default() -> Req {
        Req {
            path: String::new(),
            query: Vec::new(),
            raw_query: String::new(),
            headers: Vec::new(),
            body: Vec::new(),
            received_at: SystemTime::now(),
            started: Instant::now(),
        }
    }
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as a JSON object; a clear 400 otherwise.
    pub fn json_object(&self) -> Result<serde_json::Map<String, Value>, ApiError> {
        match self.json()? {
            Value::Object(map) => Ok(map),
            _ => Err(ApiError::bad_request("request body must be a JSON object")),
        }
    }

    pub fn json(&self) -> Result<Value, ApiError> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::bad_request(
                "request body is empty; a JSON object is required",
            ));
        }
        serde_json::from_slice(&self.body)
            .map_err(|e| ApiError::bad_request(format!("request body is not valid JSON: {e}")))
    }
}

/// Splits a raw URL into its path, still percent-encoded (the router splits it into segments
/// before decoding them, so that an encoded `/` cannot make a route of its own), and its
/// decoded query pairs.
pub fn split_url(url: &str) -> (String, Vec<(String, String)>) {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let pairs = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (
                percent_decode(k).into_owned(),
                percent_decode(v).into_owned(),
            )
        })
        .collect();
    (path.to_string(), pairs)
}

/// Decodes `%XX` escapes in one path segment; `+` is a plus sign there (it only means a space
/// in a query string).
pub fn decode_segment(s: &str) -> Cow<'_, str> {
    decode(s, false)
}

/// Decodes `%XX` escapes and `+` (as a space), as in a query string; invalid escapes are
/// kept as they are.
pub fn percent_decode(s: &str) -> Cow<'_, str> {
    decode(s, true)
}

/// Borrows `s` when there is nothing to decode (the common case: no allocation).
fn decode(s: &str, plus_is_space: bool) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || (plus_is_space && b == b'+')) {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// Writes a streamed body: called once with the client's connection, after the head is sent.
pub type StreamFn = Box<dyn FnOnce(&mut dyn Write) -> io::Result<()> + Send>;

pub enum Body {
    Bytes {
        data: Vec<u8>,
        content_type: &'static str,
    },
    /// A `text/event-stream` written event by event as it is produced.
    Stream(StreamFn),
}

/// A stream's bytes gathered into one body (for an HTTP/1.0 client), refused past `limit`
/// with `FileTooLarge`.
pub struct Capped {
    pub data: Vec<u8>,
    limit: usize,
}

impl Capped {
    pub fn new(limit: usize) -> Capped {
        Capped {
            data: Vec::new(),
            limit,
        }
    }
}

impl Write for Capped {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.data.len() + buf.len() > self.limit {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                "the stream is over the bound of one body",
            ));
        }
        self.data.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What a handler answers.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

impl Reply {
    pub fn json(status: u16, value: &Value) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Body::Bytes {
                data: serde_json::to_vec(value).unwrap_or_default(),
                content_type: "application/json",
            },
        }
    }

    /// JSON that is already serialized (an upstream's answer passed on as it is).
    pub fn raw_json(status: u16, data: Vec<u8>) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Body::Bytes {
                data,
                content_type: "application/json",
            },
        }
    }

    pub fn ok(value: &Value) -> Reply {
        Reply::json(200, value)
    }

    pub fn created(value: &Value) -> Reply {
        Reply::json(201, value)
    }

    /// One of the service's own errors, in OpenAI's shape.
    pub fn error(e: &ApiError) -> Reply {
        Reply::json(e.status(), &e.body()).with_error_headers(e)
    }

    /// The headers every error the service produces itself carries: `x-switcher-error`
    /// (so a client can tell it from an upstream's error relayed as it came) and, for a
    /// 405, `Allow`.
    pub fn with_error_headers(mut self, e: &ApiError) -> Reply {
        self = self.with_header("x-switcher-error", e.code());
        if let ApiError::MethodNotAllowed { allow } = e {
            self = self.with_header("Allow", allow);
        }
        self
    }

    pub fn stream(status: u16, write: StreamFn) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Body::Stream(write),
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// The connection closes after this reply (`Connection: close`).
    pub fn closing(self) -> Reply {
        self.with_header("Connection", "close")
    }

    pub fn is_closing(&self) -> bool {
        self.headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close"))
    }
}

/// Reads a request body of at most `limit` bytes.
///
/// A read that fails with `TimedOut` (the connection's read deadline passed, see the server's
/// limits) is a 408 rather than a 400.
pub fn read_body(
    reader: &mut dyn Read,
    declared: Option<usize>,
    limit: usize,
) -> Result<Vec<u8>, ApiError> {
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let mut body = Vec::with_capacity(declared.unwrap_or(0).min(limit));
    let result = reader.take(limit as u64 + 1).read_to_end(&mut body);
    if let Err(e) = result {
        if e.kind() == io::ErrorKind::TimedOut {
            return Err(ApiError::RequestTimeout);
        }
        return Err(ApiError::bad_request(format!(
            "the request body could not be read: {e}"
        )));
    }
    if body.len() > limit {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    if declared.is_some_and(|len| body.len() < len) {
        return Err(ApiError::bad_request(
            "the request body is shorter than its Content-Length",
        ));
    }
    Ok(body)
}

/// Encodes everything but unreserved characters, for a query value.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_are_split_and_decoded() {
        let (path, q) = split_url("/api/models?profile=my%20prof&x=a+b&flag");
        assert_eq!(path, "/api/models");
        assert_eq!(
            q,
            vec![
                ("profile".into(), "my prof".into()),
                ("x".into(), "a b".into()),
                ("flag".into(), "".into())
            ]
        );
    }

    #[test]
    fn the_path_stays_encoded_and_plus_is_a_space_only_in_the_query() {
        let (path, q) = split_url("/admin/profiles/1%2Fsync-models?x=a+b%2B");
        assert_eq!(path, "/admin/profiles/1%2Fsync-models");
        assert_eq!(q, vec![("x".into(), "a b+".into())]);
        assert_eq!(decode_segment("a+b%20c"), "a+b c");
    }

    #[test]
    fn broken_percent_escapes_are_kept() {
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%41"), "A");
    }

    #[test]
    fn a_capped_body_refuses_the_write_that_would_pass_its_limit() {
        let mut capped = Capped::new(5);
        capped.write_all(b"abc").unwrap();
        let e = capped.write_all(b"def").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::FileTooLarge);
        assert_eq!(capped.data, b"abc");
        capped.write_all(b"de").unwrap();
        assert_eq!(capped.data, b"abcde");
    }

    #[test]
    fn a_body_over_the_limit_is_413() {
        let mut data: &[u8] = &[b'x'; 11];
        let e = read_body(&mut data, None, 10).unwrap_err();
        assert_eq!(e.status(), 413);
        let mut data: &[u8] = b"{}";
        let e = read_body(&mut data, Some(11), 10).unwrap_err();
        assert_eq!(e.status(), 413);
    }

    /// A reader that gives `data`, then fails with `kind`.
    struct ThenFail(&'static [u8], io::ErrorKind);

    impl Read for ThenFail {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Err(io::Error::new(self.1, "stop"));
            }
            let n = self.0.len().min(buf.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn a_body_cut_by_the_read_deadline_is_408_and_a_short_one_400() {
        let mut late = ThenFail(b"{", io::ErrorKind::TimedOut);
        assert_eq!(read_body(&mut late, Some(5), 10).unwrap_err().status(), 408);
        let mut data: &[u8] = b"{";
        assert_eq!(read_body(&mut data, Some(5), 10).unwrap_err().status(), 400);
        let mut broken = ThenFail(b"{", io::ErrorKind::ConnectionReset);
        assert_eq!(
            read_body(&mut broken, Some(5), 10).unwrap_err().status(),
            400
        );
    }

    #[test]
    fn malformed_json_is_a_400_naming_the_problem() {
        let req = Req {
            body: b"{not json".to_vec(),
            ..Req::default()
        };
        let e = req.json_object().unwrap_err();
        assert_eq!(e.status(), 400);
        assert!(e.message().contains("not valid JSON"));
    }
}
