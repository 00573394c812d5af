//! The chunked transfer coding (RFC 9112 §7.1), decoded as bytes arrive and written out again: chunk data
//! untouched, each size line rewritten as bare hexadecimal (extensions dropped), trailers read and dropped (as the
//! hyper path does: `Trailer` is hop-by-hop there, so hyper sends none), then `0\r\n\r\n`.
//!
//! Invariants: a size line, a trailer line and the trailer section are bounded ([`MAX_LINE`], [`MAX_TRAILERS`]);
//! a size line without a hex digit, with anything but SP/HTAB before `;`, with a control byte (a bare LF or CR
//! included) or more than [`MAX_EXTENSIONS`] extension bytes per body (as hyper), a size that overflows, a missing
//! CRLF after chunk data, or a bare LF is an error, never a guess (the same rules for requests and responses); bytes after
//! the final CRLF are left in the input (the next pipelined message).

use bytes::{Buf as _, BytesMut};

/// The longest chunk-size line (extensions included) or trailer line.
pub const MAX_LINE: usize = 4096;
/// The largest trailer section.
pub const MAX_TRAILERS: usize = 16 * 1024;
/// The most chunk-extension bytes in one body (as hyper).
pub const MAX_EXTENSIONS: usize = 16 * 1024;

/// A chunk-size line without its CRLF (RFC 9112 §7.1, §7.1.1): `1*HEXDIG *(BWS ";" ext)`, where what follows the
/// size may only be SP/HTAB then `;`, and nothing in it is a control byte other than HTAB (a bare LF or CR is a
/// line end for some parsers: request smuggling). The size and the extension bytes.
fn size_line(line: &[u8]) -> Result<(u64, usize), ChunkError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(ChunkError::Size);
    }
    let mut size: u64 = 0;
    for b in &line[..digits] {
        let d = u64::from(char::from(*b).to_digit(16).ok_or(ChunkError::Size)?);
        size = size.checked_mul(16).and_then(|s| s.checked_add(d)).ok_or(ChunkError::Size)?;
    }
    let rest = &line[digits..];
    let blank = rest.iter().take_while(|b| **b == b' ' || **b == b'\t').count();
    let ext = &rest[blank..];
    if !ext.is_empty() && ext[0] != b';' {
        return Err(ChunkError::Size);
    }
    if ext.iter().any(|b| b.is_ascii_control() && *b != b'\t') {
        return Err(ChunkError::Size);
    }
    Ok((size, ext.len()))
}

/// Why a chunked body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("invalid chunk size line")]
    Size,
    #[error("chunk size line longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("chunk data not followed by CRLF")]
    MissingCrlf,
    #[error("invalid or too large trailer section")]
    Trailers,
    #[error("chunk extensions longer than {MAX_EXTENSIONS} bytes in one body")]
    Extensions,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Data(u64),
    DataEnd,
    Trailers(usize),
    Done,
}

/// A streaming decoder and re-encoder of one chunked body.
#[derive(Debug)]
pub struct Chunked {
    state: State,
    /// Chunk-extension bytes seen so far in this body.
    extensions: usize,
}

impl Default for Chunked {
    fn default() -> Self {
        Self { state: State::Size, extensions: 0 }
    }
}

impl Chunked {
    /// Consumes what it can of `input`, appending the re-encoded body to `out`; `Ok(true)` once the body ended.
    pub fn feed(&mut self, input: &mut BytesMut, out: &mut BytesMut) -> Result<bool, ChunkError> {
        self.run(input, Some(out))
    }

    /// [`Chunked::feed`] without the output: only the framing is checked (hyper's guard,
    /// [`crate::server::framing_guard`]).
    pub fn check(&mut self, input: &mut BytesMut) -> Result<bool, ChunkError> {
        self.run(input, None)
    }

    fn run(&mut self, input: &mut BytesMut, mut out: Option<&mut BytesMut>) -> Result<bool, ChunkError> {
        loop {
            match self.state {
                State::Done => return Ok(true),
                State::Size => {
                    let Some(lf) = input.iter().take(MAX_LINE + 1).position(|b| *b == b'\n') else {
                        if bare_cr(input) {
                            return Err(ChunkError::Size);
                        }
                        return match input.len() > MAX_LINE {
                            true => Err(ChunkError::LineTooLong),
                            false => Ok(false),
                        };
                    };
                    if lf == 0 || input[lf - 1] != b'\r' {
                        return Err(ChunkError::Size);
                    }
                    let (size, extensions) = size_line(&input[..lf - 1])?;
                    self.extensions += extensions;
                    if self.extensions > MAX_EXTENSIONS {
                        return Err(ChunkError::Extensions);
                    }
                    input.advance(lf + 1);
                    if size == 0 {
                        self.state = State::Trailers(0);
                    } else {
                        if let Some(out) = out.as_deref_mut() {
                            out.extend_from_slice(format!("{size:x}\r\n").as_bytes());
                        }
                        self.state = State::Data(size);
                    }
                }
                State::Data(left) => {
                    if input.is_empty() {
                        return Ok(false);
                    }
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(input.len());
                    match out.as_deref_mut() {
                        Some(out) => out.extend_from_slice(&input.split_to(take)),
                        None => input.advance(take),
                    }
                    let left = left - take as u64;
                    self.state = if left == 0 { State::DataEnd } else { State::Data(left) };
                }
                State::DataEnd => {
                    if input.len() < 2 {
                        return Ok(false);
                    }
                    if &input[..2] != b"\r\n" {
                        return Err(ChunkError::MissingCrlf);
                    }
                    input.advance(2);
                    if let Some(out) = out.as_deref_mut() {
                        out.extend_from_slice(b"\r\n");
                    }
                    self.state = State::Size;
                }
                State::Trailers(seen) => {
                    let Some(lf) = input.iter().position(|b| *b == b'\n') else {
                        if input.len() > MAX_LINE || seen + input.len() > MAX_TRAILERS || bare_cr(input) {
                            return Err(ChunkError::Trailers);
                        }
                        return Ok(false);
                    };
                    if lf == 0 || input[lf - 1] != b'\r' || lf > MAX_LINE || seen + lf > MAX_TRAILERS {
                        return Err(ChunkError::Trailers);
                    }
                    // A trailer field is read past, not forwarded; it must be one as hyper reads it (RFC 9110
                    // §5.1, §5.5): a token name before the colon, a value without control characters. Judged
                    // before it is taken, so that an error leaves the input at the line that caused it.
                    if lf > 1 && !is_field_line(&input[..lf - 1]) {
                        return Err(ChunkError::Trailers);
                    }
                    let line = input.split_to(lf + 1);
                    if line.len() == 2 {
                        if let Some(out) = out.as_deref_mut() {
                            out.extend_from_slice(b"0\r\n\r\n");
                        }
                        self.state = State::Done;
                    } else {
                        self.state = State::Trailers(seen + line.len());
                    }
                }
            }
        }
    }

    /// Passes over up to `n` bytes of chunk data without copying them; how many it took (none outside chunk data).
    pub fn skip_data(&mut self, n: usize) -> usize {
        let State::Data(left) = self.state else { return 0 };
        let take = usize::try_from(left).unwrap_or(usize::MAX).min(n);
        let left = left - take as u64;
        self.state = if left == 0 { State::DataEnd } else { State::Data(left) };
        take
    }

    /// Whether the body ended.
    pub fn done(&self) -> bool {
        self.state == State::Done
    }
}

/// Whether an incomplete line already holds a CR followed by something other than LF: a bare CR, refused at once
/// (as hyper does) rather than when the line's LF comes.
fn bare_cr(line: &[u8]) -> bool {
    line.windows(2).any(|w| w[0] == b'\r' && w[1] != b'\n')
}

/// `name ":" value` with a token name (RFC 9110 §5.1) and a value of visible characters, spaces, tabs and
/// obs-text (§5.5): a request line, a folded line or a control character is not a field line.
fn is_field_line(field: &[u8]) -> bool {
    let Some(colon) = field.iter().position(|b| *b == b':') else {
        return false;
    };
    let (name, value) = (&field[..colon], &field[colon + 1..]);
    let tchar = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
    !name.is_empty() && name.iter().all(tchar) && value.iter().all(|b| *b == b'\t' || (*b >= 0x20 && *b != 0x7f))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pieces: &[&[u8]]) -> (Result<bool, ChunkError>, Vec<u8>, Vec<u8>) {
        let mut c = Chunked::default();
        let (mut input, mut out) = (BytesMut::new(), BytesMut::new());
        let mut last = Ok(false);
        for p in pieces {
            input.extend_from_slice(p);
            last = c.feed(&mut input, &mut out);
            if last.is_err() {
                break;
            }
        }
        (last, out.to_vec(), input.to_vec())
    }

    #[test]
    fn chunks_pass_with_their_data_untouched_in_any_split() {
        let body = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\nGET / HTTP/1.1";
        for split in 0..body.len() {
            let (done, out, rest) = run(&[&body[..split], &body[split..]]);
            assert_eq!(done, Ok(true), "split {split}");
            assert_eq!(out, b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", "split {split}");
            assert_eq!(rest, b"GET / HTTP/1.1");
        }
    }

    #[test]
    fn malformed_bodies_are_errors() {
        assert_eq!(run(&[b"fffffffffffffffff1\r\n"]).0, Err(ChunkError::Size));
        assert_eq!(run(&[b"zz\r\n"]).0, Err(ChunkError::Size));
        assert_eq!(run(&[b"5\nhello\r\n"]).0, Err(ChunkError::Size));
        assert_eq!(run(&[b"5\r\nhelloXX0\r\n\r\n"]).0, Err(ChunkError::MissingCrlf));
        assert_eq!(run(&[b"0\r\nX: 1\n\r\n"]).0, Err(ChunkError::Trailers));
        // A bare CR is refused before the line's LF arrives.
        assert_eq!(run(&[b"2;a\rb"]).0, Err(ChunkError::Size));
        assert_eq!(run(&[b"0\r\nX: 1\rY"]).0, Err(ChunkError::Trailers));
        assert_eq!(run(&[b"0\r\n folded\r\n\r\n"]).0, Err(ChunkError::Trailers));
        assert_eq!(run(&[b"0\r\nGET http://x/ HTTP/1.1\r\n\r\n"]).0, Err(ChunkError::Trailers));
        assert_eq!(run(&[b"0\r\nX\x01Y: 1\r\n\r\n"]).0, Err(ChunkError::Trailers));
        assert_eq!(run(&[b"0\r\nX: a\x00b\r\n\r\n"]).0, Err(ChunkError::Trailers));
        assert_eq!(run(&[b"0\r\n: empty-name\r\n\r\n"]).0, Err(ChunkError::Trailers));
        let long = format!("5;{}", "e".repeat(MAX_LINE));
        assert_eq!(run(&[long.as_bytes()]).0, Err(ChunkError::LineTooLong));
        let long = format!("5;{}\r\nhello\r\n", "e".repeat(MAX_LINE));
        assert_eq!(run(&[long.as_bytes()]).0, Err(ChunkError::LineTooLong));
        for line in [&b"\r\n"[..], b";x\r\n", b" \r\n", b" 5\r\n", b"2;\nxx\r\n", b"2;a\x00\r\n", b"2 3\r\n", b"2x\r\n"]
        {
            assert_eq!(run(&[line]).0, Err(ChunkError::Size), "{:?}", String::from_utf8_lossy(line));
        }
        assert_eq!(run(&[b"2 \t;a=\"b\tc\"\r\nxx\r\n0\r\n\r\n"]).0, Ok(true));
        let ext = format!("1;{}\r\nx\r\n", "e".repeat(MAX_LINE - 8));
        assert_eq!(run(&[ext.repeat(5).as_bytes()]).0, Err(ChunkError::Extensions));
        let many = format!("0\r\n{}", "X-T: 1\r\n".repeat(MAX_TRAILERS / 8 + 1));
        assert_eq!(run(&[many.as_bytes()]).0, Err(ChunkError::Trailers));
    }
}
