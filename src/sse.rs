//! Incremental server-sent-events parsing (WHATWG rules) and encoding of `data:` events.
//!
//! The parser is pure: bytes in, events out. Upstream bodies arrive in arbitrary pieces, so
//! every piece of state that can straddle two reads (a partial line, a `\r` whose `\n` has not
//! arrived yet, the fields of an event not yet ended by a blank line) lives in [`Parser`].

use std::fmt;

/// The longest line, and the largest joined `data` of one event, the parser will buffer.
///
/// A well-behaved upstream never comes near it; the bound exists so that a broken or hostile
/// one cannot make us buffer without end.
pub const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// One dispatched event: its `event:` type (when one was given) and its joined `data:` lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub event: Option<String>,
    pub data: String,
}

/// A line (or one event's joined data) grew past [`MAX_LINE_BYTES`].
///
/// `completed` holds the events that ended before the offending line within the same
/// [`Parser::feed`] call, so a caller sees the same events whatever the split of the input.
/// The parser is failed from then on: every later `feed` returns this error with no events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineTooLong {
    pub completed: Vec<Event>,
}

impl fmt::Display for LineTooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "server-sent event line longer than {MAX_LINE_BYTES} bytes"
        )
    }
}

impl std::error::Error for LineTooLong {}

/// Incremental parser: feed it the body as it arrives, in pieces of any size.
#[derive(Default)]
pub struct Parser {
    /// Bytes of the current, unterminated line. Kept as bytes, not text, because a piece may
    /// end inside a multi-byte UTF-8 character; `\r` and `\n` never occur inside one, so
    /// splitting lines on bytes is safe and decoding waits for the whole line.
    line: Vec<u8>,
    /// The previous piece ended with `\r`: a `\n` starting the next piece belongs to it.
    after_cr: bool,
    /// At least one line was processed (a byte-order mark is only stripped from the first).
    started: bool,
    event_type: String,
    data: String,
    failed: bool,
}

impl Parser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; returns the events completed by them, in order.
    ///
    /// Fails with [`LineTooLong`] once a line or an event's data exceeds [`MAX_LINE_BYTES`];
    /// the buffers are then dropped and the parser stays failed.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Event>, LineTooLong> {
        if self.failed {
            return Err(LineTooLong {
                completed: Vec::new(),
            });
        }
        let mut events = Vec::new();
        match self.feed_into(bytes, &mut events) {
            Ok(()) => Ok(events),
            Err(Overflow) => {
                self.failed = true;
                self.line = Vec::new();
                self.data = String::new();
                self.event_type = String::new();
                Err(LineTooLong { completed: events })
            }
        }
    }

    fn feed_into(&mut self, bytes: &[u8], events: &mut Vec<Event>) -> Result<(), Overflow> {
        let mut rest = bytes;
        if self.after_cr && !rest.is_empty() {
            self.after_cr = false;
            if rest[0] == b'\n' {
                rest = &rest[1..];
            }
        }
        while let Some(end) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.append(&rest[..end])?;
            let line = std::mem::take(&mut self.line);
            self.process_line(&line, events)?;
            let terminator = rest[end];
            rest = &rest[end + 1..];
            if terminator == b'\r' {
                match rest.first() {
                    Some(b'\n') => rest = &rest[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
        self.append(rest)
    }

    fn append(&mut self, bytes: &[u8]) -> Result<(), Overflow> {
        if self.line.len() + bytes.len() > MAX_LINE_BYTES {
            return Err(Overflow);
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn process_line(&mut self, line: &[u8], events: &mut Vec<Event>) -> Result<(), Overflow> {
        let mut line = line;
        if !self.started {
            self.started = true;
            line = line.strip_prefix("\u{feff}".as_bytes()).unwrap_or(line);
        }
        if line.is_empty() {
            self.dispatch(events);
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(());
        }
        let line = String::from_utf8_lossy(line);
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (&*line, ""),
        };
        match field {
            "event" => value.clone_into(&mut self.event_type),
            "data" => {
                if self.data.len() + value.len() + 1 > MAX_LINE_BYTES {
                    return Err(Overflow);
                }
                self.data.push_str(value);
                self.data.push('\n');
            }
            // `id` and `retry` only matter to a reconnecting client, which the proxy is not;
            // unknown fields are ignored by the standard.
            _ => {}
        }
        Ok(())
    }

    fn dispatch(&mut self, events: &mut Vec<Event>) {
        let event_type = std::mem::take(&mut self.event_type);
        if self.data.is_empty() {
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        data.pop();
        events.push(Event {
            event: (!event_type.is_empty()).then_some(event_type),
            data,
        });
    }
}

/// Internal marker: the line or data buffer would exceed the limit.
struct Overflow;

/// Encodes one `data:` event carrying `payload`: `"data: {payload}\n\n"`.
///
/// The payload must not contain line breaks; compact JSON never does.
pub fn data_event(payload: &str) -> String {
    format!("data: {payload}\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: Option<&str>, data: &str) -> Event {
        Event {
            event: event.map(str::to_owned),
            data: data.to_owned(),
        }
    }

    fn parse_whole(input: &[u8]) -> Vec<Event> {
        Parser::new().feed(input).unwrap()
    }

    fn parse_in_pieces(pieces: &[&[u8]]) -> Vec<Event> {
        let mut parser = Parser::new();
        pieces
            .iter()
            .flat_map(|piece| parser.feed(piece).unwrap())
            .collect()
    }

    const RECORDED: &str = "event: message_start\n\
data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\"}}\n\
\n\
event: ping\n\
data: {\"type\": \"ping\"}\n\
\n\
: a comment\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"h\u{e9}llo \u{1f600}\"}}\n\
\n";

    #[test]
    fn an_event_line_and_a_data_line_make_one_event_at_the_blank_line() {
        let events = parse_whole(b"event: ping\ndata: {}\n\n");
        assert_eq!(events, vec![ev(Some("ping"), "{}")]);
    }

    #[test]
    fn multiple_data_lines_are_joined_with_newlines() {
        let events = parse_whole(b"data: a\ndata:b\ndata:  c\ndata\n\n");
        assert_eq!(events, vec![ev(None, "a\nb\n c\n")]);
    }

    #[test]
    fn only_one_space_after_the_colon_is_removed() {
        let events = parse_whole(b"data:   x\n\n");
        assert_eq!(events, vec![ev(None, "  x")]);
    }

    #[test]
    fn comments_and_unknown_fields_are_ignored() {
        let events = parse_whole(b": keepalive\nid: 7\nretry: 10\nfoo: bar\ndata: x\n\n");
        assert_eq!(events, vec![ev(None, "x")]);
    }

    #[test]
    fn a_blank_line_without_data_dispatches_nothing_and_forgets_the_event_type() {
        let events = parse_whole(b"event: ping\n\ndata: x\n\n");
        assert_eq!(events, vec![ev(None, "x")]);
    }

    #[test]
    fn an_unterminated_event_is_not_dispatched() {
        let mut parser = Parser::new();
        assert_eq!(parser.feed(b"data: x\n").unwrap(), vec![]);
        assert_eq!(parser.feed(b"\n").unwrap(), vec![ev(None, "x")]);
    }

    #[test]
    fn crlf_cr_and_lf_line_endings_are_all_accepted() {
        let events = parse_whole(b"data: a\r\n\r\ndata: b\r\rdata: c\n\n");
        assert_eq!(events, vec![ev(None, "a"), ev(None, "b"), ev(None, "c")]);
    }

    #[test]
    fn a_crlf_split_between_the_cr_and_the_lf_counts_as_one_line_ending() {
        let events = parse_in_pieces(&[b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]);
        assert_eq!(events, vec![ev(None, "a\nb")]);
    }

    #[test]
    fn an_empty_piece_after_a_cr_does_not_lose_the_pending_lf() {
        let events = parse_in_pieces(&[b"data: a\r", b"", b"\ndata: b\n\n"]);
        assert_eq!(events, vec![ev(None, "a\nb")]);
    }

    #[test]
    fn a_leading_byte_order_mark_is_stripped() {
        let events = parse_whole(b"\xef\xbb\xbfdata: x\n\n");
        assert_eq!(events, vec![ev(None, "x")]);
    }

    #[test]
    fn a_recorded_stream_parses_the_same_whole_byte_by_byte_and_split_anywhere_in_two() {
        let input = RECORDED.as_bytes();
        let whole = parse_whole(input);
        assert_eq!(whole.len(), 3);
        assert_eq!(whole[1], ev(Some("ping"), "{\"type\": \"ping\"}"));
        assert!(whole[2].data.contains("h\u{e9}llo \u{1f600}"));

        let singles: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(parse_in_pieces(&singles), whole);

        for split in 0..=input.len() {
            let (a, b) = input.split_at(split);
            assert_eq!(parse_in_pieces(&[a, b]), whole, "split at {split}");
        }
    }

    #[test]
    fn a_recorded_stream_with_crlf_endings_parses_like_the_lf_one() {
        let crlf = RECORDED.replace('\n', "\r\n");
        let input = crlf.as_bytes();
        let expected = parse_whole(RECORDED.as_bytes());
        assert_eq!(parse_whole(input), expected);
        for split in 0..=input.len() {
            let (a, b) = input.split_at(split);
            assert_eq!(parse_in_pieces(&[a, b]), expected, "split at {split}");
        }
    }

    #[test]
    fn invalid_utf8_is_replaced_rather_than_rejected() {
        let events = parse_whole(b"data: a\xffb\n\n");
        assert_eq!(events, vec![ev(None, "a\u{fffd}b")]);
    }

    #[test]
    fn a_line_longer_than_the_limit_fails_the_parser_keeping_earlier_events() {
        let mut parser = Parser::new();
        let mut input = b"data: ok\n\ndata: ".to_vec();
        input.resize(input.len() + MAX_LINE_BYTES, b'x');
        let err = parser.feed(&input).unwrap_err();
        assert_eq!(err.completed, vec![ev(None, "ok")]);
        assert_eq!(
            parser.feed(b"\n\n").unwrap_err(),
            LineTooLong { completed: vec![] }
        );
    }

    #[test]
    fn a_line_reaching_the_limit_in_small_pieces_fails_too() {
        let mut parser = Parser::new();
        let piece = vec![b'x'; 1024 * 1024];
        for _ in 0..16 {
            assert_eq!(parser.feed(&piece).unwrap(), vec![]);
        }
        assert!(parser.feed(b"x").is_err());
    }

    #[test]
    fn an_event_whose_data_lines_together_exceed_the_limit_fails_the_parser() {
        let mut parser = Parser::new();
        let mut line = b"data: ".to_vec();
        line.resize(6 + MAX_LINE_BYTES / 2, b'x');
        line.push(b'\n');
        assert!(parser.feed(&line).is_ok());
        assert!(parser.feed(&line).is_err());
    }

    #[test]
    fn data_event_encodes_one_data_line_and_a_blank_line() {
        assert_eq!(data_event("{\"a\":1}"), "data: {\"a\":1}\n\n");
        assert_eq!(data_event("[DONE]"), "data: [DONE]\n\n");
    }
}
