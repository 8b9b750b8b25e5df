use ascii::AsciiString;

use std::io::Error as IoError;
use std::io::Result as IoResult;
use std::io::{BufReader, BufWriter, ErrorKind, Read};

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{HTTPVersion, Method};
use crate::limits::{Limits, ReadControl};
use crate::util::RefinedTcpStream;
use crate::util::{SequentialReader, SequentialReaderBuilder, SequentialWriterBuilder};
use crate::Request;

/// A ClientConnection is an object that will store a socket to a client
/// and return Request objects.
pub struct ClientConnection {
    // address of the client
    remote_addr: IoResult<Option<SocketAddr>>,

    // sequence of Readers to the stream, so that the data is not read in
    //  the wrong order
    source: SequentialReaderBuilder<BufReader<RefinedTcpStream>>,

    // sequence of Writers to the stream, to avoid writing response #2 before
    //  response #1
    sink: SequentialWriterBuilder<BufWriter<RefinedTcpStream>>,

    // Reader to read the next header from
    next_header_source: SequentialReader<BufReader<RefinedTcpStream>>,

    // set to true if we know that the previous request is the last one
    no_more_requests: bool,

    // true if the connection goes through SSL
    secure: bool,

    // switcher-api addition: size limits and read deadlines
    limits: Arc<Limits>,
    control: Arc<ReadControl>,
}

/// Error that can happen when reading a request.
#[derive(Debug)]
enum ReadError {
    WrongRequestLine,
    WrongHeader(HTTPVersion),
    /// the request line is longer than `Limits::max_request_line`
    RequestLineTooLong,
    /// the header block is over `Limits::max_header_bytes` or `max_header_fields`
    HeadersTooLarge(HTTPVersion),
    /// no request started within `Limits::idle_timeout`, or the client closed
    Idle,
    /// the client sent an unrecognized `Expect` header
    ExpectationFailed(HTTPVersion),
    ReadIoError(IoError),
}

impl ClientConnection {
    /// Creates a new `ClientConnection` that takes ownership of the `TcpStream`.
    pub fn new(write_socket: RefinedTcpStream, read_socket: RefinedTcpStream) -> ClientConnection {
        Self::with_limits(write_socket, read_socket, Arc::new(Limits::default()))
    }

    /// A connection bounded by `limits` (switcher-api addition).
    pub fn with_limits(
        write_socket: RefinedTcpStream,
        mut read_socket: RefinedTcpStream,
        limits: Arc<Limits>,
    ) -> ClientConnection {
        let remote_addr = read_socket.peer_addr();
        let secure = read_socket.secure();
        let control = read_socket.control().clone();

        let mut source = SequentialReaderBuilder::new(BufReader::with_capacity(1024, read_socket));
        let first_header = source.next().unwrap();

        ClientConnection {
            source,
            sink: SequentialWriterBuilder::new(BufWriter::with_capacity(1024, write_socket)),
            remote_addr,
            next_header_source: first_header,
            no_more_requests: false,
            secure,
            limits,
            control,
        }
    }

    /// true if the connection is HTTPS
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// Reads the next line from self.next_header_source.
    ///
    /// Reads until `CRLF` is reached. The next read will start
    ///  at the first byte of the new line.
    ///
    /// switcher-api: at most `limit` bytes before the CRLF are read (`Ok(None)` past it), so
    /// an endless line costs no memory; `buf` may hold bytes already read of the line.
    fn read_next_line(&mut self, mut buf: Vec<u8>, limit: usize) -> IoResult<Option<Vec<u8>>> {
        let mut prev_byte_was_cr = buf.last() == Some(&b'\r');

        loop {
            let byte = self.next_header_source.by_ref().bytes().next();

            let byte = match byte {
                Some(b) => b?,
                None => return Err(IoError::new(ErrorKind::ConnectionAborted, "Unexpected EOF")),
            };

            if byte == b'\n' && prev_byte_was_cr {
                buf.pop(); // removing the '\r'
                return Ok(Some(buf));
            }

            prev_byte_was_cr = byte == b'\r';

            // The line so far, without a CR that may be the start of its CRLF.
            if buf.len() + usize::from(!prev_byte_was_cr) > limit {
                return Ok(None);
            }
            buf.push(byte);
        }
    }

    /// Waits (at most `Limits::idle_timeout`) for the first byte of the next request, then
    /// starts that request's read deadline.
    fn read_first_byte(&mut self) -> Result<u8, ReadError> {
        // Only once the previous request's body is done with the socket: its deadline holds
        // until then.
        self.next_header_source.wait_turn();
        self.control.idle(self.limits.idle_timeout);
        loop {
            let mut byte = [0u8];
            match self.next_header_source.read(&mut byte) {
                Ok(0) => return Err(ReadError::Idle),
                // Empty lines before a request line are ignored (RFC 9112, section 2.2).
                Ok(_) if byte[0] == b'\r' || byte[0] == b'\n' => continue,
                Ok(_) => {
                    self.control.request_started(self.limits.request_timeout);
                    return Ok(byte[0]);
                }
                Err(e) if e.kind() == ErrorKind::TimedOut => return Err(ReadError::Idle),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(ReadError::ReadIoError(e)),
            }
        }
    }

    /// After refusing a request: the client may still be sending it, and closing a socket
    /// with unread data resets the connection, which can destroy the answer before the client
    /// reads it. So a bounded amount is read and thrown away first.
    fn linger(&mut self) {
        self.control
            .request_started(Some(Duration::from_millis(500)));
        let deadline = Instant::now() + Duration::from_millis(500);
        let mut left = 256 * 1024usize;
        let mut buf = [0u8; 8192];
        while left > 0 && Instant::now() < deadline {
            match self.next_header_source.read(&mut buf[..left.min(8192)]) {
                Ok(0) | Err(_) => break,
                Ok(n) => left -= n,
            }
        }
        self.control.close();
    }

    /// Writes the answer to a request refused before it reached the server's code, then
    /// lingers and closes.
    fn refuse(&mut self, status: u16, version: HTTPVersion) {
        let writer = self.sink.next().unwrap();
        let response = self.limits.error(status).with_connection_close();
        response.raw_print(writer, version, &[], false, None).ok();
        self.linger();
    }

    /// Reads a request from the stream.
    /// Blocks until the header has been read.
    fn read(&mut self) -> Result<Request, ReadError> {
        let (method, path, version, headers) = {
            // reading the request line
            let (method, path, version) = {
                let first = self.read_first_byte()?;
                let limit = self.limits.max_request_line;
                let line = self
                    .read_next_line(line_buffer(first), limit)
                    .map_err(ReadError::ReadIoError)?
                    .ok_or(ReadError::RequestLineTooLong)?;
                let line =
                    AsciiString::from_ascii(line).map_err(|_| ReadError::WrongRequestLine)?;

                parse_request_line(
                    line.as_str().trim(), // TODO: remove this conversion
                )?
            };

            // getting all headers
            let headers = {
                let mut headers = Vec::new();
                let mut budget = self.limits.max_header_bytes;
                loop {
                    let too_large = || ReadError::HeadersTooLarge(version.clone());
                    let line = self
                        .read_next_line(Vec::with_capacity(LINE_CAPACITY), budget.saturating_sub(2))
                        .map_err(ReadError::ReadIoError)?
                        .ok_or_else(too_large)?;

                    if line.is_empty() {
                        break;
                    };
                    budget = budget.saturating_sub(line.len() + 2);
                    if headers.len() >= self.limits.max_header_fields {
                        return Err(too_large());
                    }
                    let line = AsciiString::from_ascii(line)
                        .map_err(|_| ReadError::WrongHeader(version.clone()))?;
                    headers.push(match FromStr::from_str(line.as_str().trim()) {
                        // TODO: remove this conversion
                        Ok(h) => h,
                        _ => return Err(ReadError::WrongHeader(version)),
                    });
                }

                headers
            };

            (method, path, version, headers)
        };

        // building the writer for the request
        let writer = self.sink.next().unwrap();

        // follow-up for next potential request
        let mut data_source = self.source.next().unwrap();
        std::mem::swap(&mut self.next_header_source, &mut data_source);

        // building the next reader
        let request = crate::request::new_request(
            self.secure,
            method,
            path,
            version.clone(),
            headers,
            *self.remote_addr.as_ref().unwrap(),
            data_source,
            writer,
        )
        .map_err(|e| {
            use crate::request;
            match e {
                request::RequestCreationError::CreationIoError(e) => ReadError::ReadIoError(e),
                request::RequestCreationError::ExpectationFailed => {
                    ReadError::ExpectationFailed(version)
                }
            }
        })?;

        // return the request
        Ok(request.with_control(self.control.clone()))
    }
}

impl Iterator for ClientConnection {
    type Item = Request;

    /// Blocks until the next Request is available.
    /// Returns None when no new Requests will come from the client.
    fn next(&mut self) -> Option<Request> {
        use crate::{Response, StatusCode};

        // the client sent a "connection: close" header in this previous request
        //  or is using HTTP 1.0, meaning that no new request will come
        if self.no_more_requests {
            return None;
        }

        loop {
            // switcher-api: every refusal goes through `refuse`, which answers with
            // `Limits::error_response`, then lingers briefly and closes.
            let rq = match self.read() {
                Err(ReadError::WrongRequestLine) => {
                    self.refuse(400, HTTPVersion(1, 1));
                    return None; // we don't know where the next request would start,
                                 // se we have to close
                }

                Err(ReadError::WrongHeader(ver)) => {
                    self.refuse(400, ver);
                    return None; // we don't know where the next request would start,
                                 // se we have to close
                }

                Err(ReadError::RequestLineTooLong) => {
                    self.refuse(414, HTTPVersion(1, 1));
                    return None;
                }

                Err(ReadError::HeadersTooLarge(ver)) => {
                    self.refuse(431, ver);
                    return None;
                }

                Err(ReadError::ReadIoError(ref err)) if err.kind() == ErrorKind::TimedOut => {
                    // request timeout
                    self.refuse(408, HTTPVersion(1, 1));
                    return None; // closing the connection
                }

                Err(ReadError::ExpectationFailed(ver)) => {
                    self.refuse(417, ver);
                    return None; // TODO: should be recoverable, but needs handling in case of body
                }

                Err(ReadError::Idle) | Err(ReadError::ReadIoError(_)) => return None,

                Ok(rq) => rq,
            };

            // checking HTTP version
            if *rq.http_version() > (1, 1) {
                // The request was already built and holds its writer: answer through it.
                let _ = rq.respond(self.limits.error(505));
                continue;
            }

            // updating the status of the connection
            let connection_header = rq
                .headers()
                .iter()
                .find(|h| h.field.equiv("Connection"))
                .map(|h| h.value.as_str());

            let lowercase = connection_header.map(|h| h.to_ascii_lowercase());

            match lowercase {
                Some(ref val) if val.contains("close") => self.no_more_requests = true,
                Some(ref val) if val.contains("upgrade") => self.no_more_requests = true,
                Some(ref val)
                    if !val.contains("keep-alive") && *rq.http_version() == HTTPVersion(1, 0) =>
                {
                    self.no_more_requests = true
                }
                None if *rq.http_version() == HTTPVersion(1, 0) => self.no_more_requests = true,
                _ => (),
            };

            // returning the request
            return Some(rq);
        }
    }
}

/// Parses a "HTTP/1.1" string.
fn parse_http_version(version: &str) -> Result<HTTPVersion, ReadError> {
    let (major, minor) = match version {
        "HTTP/0.9" => (0, 9),
        "HTTP/1.0" => (1, 0),
        "HTTP/1.1" => (1, 1),
        "HTTP/2.0" => (2, 0),
        "HTTP/3.0" => (3, 0),
        _ => return Err(ReadError::WrongRequestLine),
    };

    Ok(HTTPVersion(major, minor))
}

/// Parses the request line of the request.
/// eg. GET / HTTP/1.1
fn parse_request_line(line: &str) -> Result<(Method, String, HTTPVersion), ReadError> {
    let mut parts = line.split(' ');

    let method = parts.next().and_then(|w| w.parse().ok());
    let path = parts.next().map(ToOwned::to_owned);
    let version = parts.next().and_then(|w| parse_http_version(w).ok());

    method
        .and_then(|method| Some((method, path?, version?)))
        .ok_or(ReadError::WrongRequestLine)
}

#[cfg(test)]
mod test {
    #[test]
    fn test_parse_request_line() {
        let (method, path, ver) = super::parse_request_line("GET /hello HTTP/1.1").unwrap();

        assert!(method == crate::Method::Get);
        assert!(path == "/hello");
        assert!(ver == crate::common::HTTPVersion(1, 1));

        assert!(super::parse_request_line("GET /hello").is_err());
        assert!(super::parse_request_line("qsd qsd qsd").is_err());
    }
}

/// switcher-api: a line starts with room for a typical request or header line, instead of
/// growing byte by byte through four reallocations.
const LINE_CAPACITY: usize = 128;

fn line_buffer(first: u8) -> Vec<u8> {
    let mut line = Vec::with_capacity(LINE_CAPACITY);
    line.push(first);
    line
}
