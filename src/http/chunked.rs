//! A sans-IO decoder for the chunked transfer coding (RFC 9112 section 7.1).
//!
//! ```text
//! chunked-body   = *chunk last-chunk trailer-section CRLF
//! chunk          = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
//! last-chunk     = 1*("0") [ chunk-ext ] CRLF
//! ```
//!
//! The decoder walks the bytes and says which ranges are chunk data; the proxy either passes
//! the raw bytes on unchanged (both sides speak HTTP/1.1) or forwards only the data ranges.
//! Size lines and the trailer section are bounded so a peer cannot make us buffer without end.

use std::ops::Range;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    /// Whitespace after the size: only more whitespace, `;` or CR may follow (`5 6` is not
    /// a size).
    SizeWs,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// In a trailer field's name (a token), before its colon.
    TrailerName,
    /// In a trailer field's value.
    TrailerValue,
    TrailerLf,
    EndLf,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("invalid chunk size line")]
    BadSize,
    #[error("chunk size line too long")]
    LineTooLong,
    #[error("chunk size too large")]
    Overflow,
    #[error("missing CRLF after chunk data")]
    BadDataEnd,
    #[error("trailer section too large")]
    TrailerTooLarge,
    #[error("invalid trailer section")]
    BadTrailer,
}

/// What one call to [`ChunkedDecoder::advance`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the input that belong to the chunked body and were processed.
    pub consumed: usize,
    /// Chunk data within those bytes (at most one range per call).
    pub data: Option<Range<usize>>,
    /// The whole body, trailers included, has been seen.
    pub done: bool,
}

#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    size: u64,
    digits: u8,
    line: usize,
    trailer: usize,
    max_trailer: usize,
}

/// Longest chunk-size line (size plus extensions) accepted.
const MAX_SIZE_LINE: usize = 4096;

/// Most hex digits in a chunk size: 15 digits is just under 2^60 bytes, more than anyone
/// sends, and the 16th is where implementations start to disagree (overflow or wrap).
const MAX_SIZE_DIGITS: u8 = 15;

impl ChunkedDecoder {
    pub fn new(max_trailer: usize) -> Self {
        ChunkedDecoder {
            state: State::Size,
            size: 0,
            digits: 0,
            line: 0,
            trailer: 0,
            max_trailer,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Processes bytes from `buf` until a data range is found, the body ends, or `buf` runs out.
    pub fn advance(&mut self, buf: &[u8]) -> Result<Progress, ChunkError> {
        let mut i = 0;
        while i < buf.len() {
            let b = buf[i];
            match self.state {
                State::Done => break,
                State::Data => {
                    let take =
                        (buf.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                    self.size -= take as u64;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                    return Ok(Progress {
                        consumed: i + take,
                        data: Some(i..i + take),
                        done: false,
                    });
                }
                State::Size => {
                    self.bump_line()?;
                    if let Some(d) = hex(b) {
                        if self.digits >= MAX_SIZE_DIGITS {
                            return Err(ChunkError::Overflow);
                        }
                        self.size = (self.size << 4) | u64::from(d);
                        self.digits += 1;
                    } else if self.digits == 0 {
                        return Err(ChunkError::BadSize);
                    } else if b == b'\r' {
                        self.state = State::SizeLf;
                    } else if b == b';' {
                        self.state = State::Ext;
                    } else if b == b' ' || b == b'\t' {
                        self.state = State::SizeWs;
                    } else {
                        return Err(ChunkError::BadSize);
                    }
                }
                State::SizeWs => {
                    // RFC 9112 section 7.1.1: BWS may precede the `;` of an extension.
                    self.bump_line()?;
                    match b {
                        b' ' | b'\t' => {}
                        b';' => self.state = State::Ext,
                        b'\r' => self.state = State::SizeLf,
                        _ => return Err(ChunkError::BadSize),
                    }
                }
                State::Ext => {
                    self.bump_line()?;
                    if b == b'\r' {
                        self.state = State::SizeLf;
                    } else if b == b'\n' || (b < 0x20 && b != b'\t') || b == 0x7f {
                        return Err(ChunkError::BadSize);
                    }
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError::BadSize);
                    }
                    self.line = 0;
                    self.digits = 0;
                    self.state = if self.size == 0 {
                        State::TrailerStart
                    } else {
                        State::Data
                    };
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError::BadDataEnd);
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError::BadDataEnd);
                    }
                    self.state = State::Size;
                }
                State::TrailerStart => {
                    if b == b'\r' {
                        self.state = State::EndLf;
                    } else {
                        // A trailer line is a field line: `token ":" value`.
                        self.trailer_byte(b)?;
                        if !is_tchar(b) {
                            return Err(ChunkError::BadTrailer);
                        }
                        self.state = State::TrailerName;
                    }
                }
                State::TrailerName => {
                    self.trailer_byte(b)?;
                    if b == b':' {
                        self.state = State::TrailerValue;
                    } else if !is_tchar(b) {
                        return Err(ChunkError::BadTrailer);
                    }
                }
                State::TrailerValue => {
                    if b == b'\r' {
                        self.state = State::TrailerLf;
                    } else {
                        self.trailer_byte(b)?;
                    }
                }
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError::BadTrailer);
                    }
                    self.state = State::TrailerStart;
                }
                State::EndLf => {
                    if b != b'\n' {
                        return Err(ChunkError::BadTrailer);
                    }
                    self.state = State::Done;
                    return Ok(Progress {
                        consumed: i + 1,
                        data: None,
                        done: true,
                    });
                }
            }
            i += 1;
        }
        Ok(Progress {
            consumed: i,
            data: None,
            done: self.state == State::Done,
        })
    }

    fn bump_line(&mut self) -> Result<(), ChunkError> {
        self.line += 1;
        if self.line > MAX_SIZE_LINE {
            return Err(ChunkError::LineTooLong);
        }
        Ok(())
    }

    fn trailer_byte(&mut self, b: u8) -> Result<(), ChunkError> {
        self.trailer += 1;
        if self.trailer > self.max_trailer {
            return Err(ChunkError::TrailerTooLarge);
        }
        if b == b'\n' || b == 0 {
            return Err(ChunkError::BadTrailer);
        }
        Ok(())
    }
}

/// RFC 9110 section 5.6.2 `tchar`: the characters of a field name.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes; returns the data and how much was consumed.
    fn decode(input: &[u8], step: usize) -> Result<(Vec<u8>, usize, bool), ChunkError> {
        let mut d = ChunkedDecoder::new(1024);
        let mut data = Vec::new();
        let mut pos = 0;
        while pos < input.len() && !d.is_done() {
            let end = (pos + step).min(input.len());
            let mut piece = &input[pos..end];
            while !piece.is_empty() {
                let p = d.advance(piece)?;
                if let Some(r) = p.data {
                    data.extend_from_slice(&piece[r]);
                }
                pos += p.consumed;
                piece = &piece[p.consumed..];
                if p.done || p.consumed == 0 {
                    break;
                }
            }
        }
        Ok((data, pos, d.is_done()))
    }

    #[test]
    fn decodes_in_any_split() {
        let body = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for step in 1..body.len() {
            let (data, used, done) = decode(body, step).expect("valid");
            assert_eq!(data, b"hello world", "step {step}");
            assert!(done);
            assert_eq!(&body[used..], b"NEXT", "step {step}");
        }
    }

    #[test]
    fn rejects_bad_sizes() {
        assert_eq!(decode(b"x\r\n", 10).err(), Some(ChunkError::BadSize));
        assert_eq!(decode(b"\r\n", 10).err(), Some(ChunkError::BadSize));
        assert_eq!(decode(b"5\nhello", 10).err(), Some(ChunkError::BadSize));
        assert_eq!(
            decode(b"11111111111111111\r\n", 40).err(),
            Some(ChunkError::Overflow)
        );
        assert_eq!(
            decode(b"3\r\nabcX\r\n", 10).err(),
            Some(ChunkError::BadDataEnd)
        );
        let long = format!("1;{}\r\n", "a".repeat(5000));
        assert_eq!(
            decode(long.as_bytes(), 100).err(),
            Some(ChunkError::LineTooLong)
        );
    }

    /// Issue item 3: framing forms other parsers read differently are refused.
    #[test]
    fn rejects_ambiguous_framing() {
        // `5 6`: one parser sees 5, another 0x56.
        assert_eq!(
            decode(b"5 6\r\nhello\r\n", 64).err(),
            Some(ChunkError::BadSize)
        );
        // Bare LF ending a size line, an extension, or the data.
        assert_eq!(decode(b"5\nhello\r\n", 64).err(), Some(ChunkError::BadSize));
        assert_eq!(decode(b"5;a=b\nhello", 64).err(), Some(ChunkError::BadSize));
        assert_eq!(decode(b"5 \nhello", 64).err(), Some(ChunkError::BadSize));
        assert_eq!(
            decode(b"5\r\nhello\n0\r\n\r\n", 64).err(),
            Some(ChunkError::BadDataEnd)
        );
        assert_eq!(
            decode(b"0\r\nX: 1\n\r\n", 64).err(),
            Some(ChunkError::BadTrailer)
        );
        // 16 hex digits, even when the value is small.
        assert_eq!(
            decode(b"0000000000000005\r\nhello\r\n", 64).err(),
            Some(ChunkError::Overflow)
        );
        assert_eq!(
            decode(b"fffffffffffffff0\r\n", 64).err(),
            Some(ChunkError::Overflow)
        );
        // A trailer line that is not a field line.
        assert_eq!(
            decode(b"0\r\nnot a field\r\n\r\n", 64).err(),
            Some(ChunkError::BadTrailer)
        );
        assert_eq!(
            decode(b"0\r\nGET / HTTP/1.1\r\n\r\n", 64).err(),
            Some(ChunkError::BadTrailer)
        );
        assert_eq!(
            decode(b"0\r\n: empty name\r\n\r\n", 64).err(),
            Some(ChunkError::BadTrailer)
        );
        // Still fine: whitespace before an extension, 15 digits, a real trailer.
        let ok = b"5 ;a=b\r\nhello\r\n000000000000000\r\nX-T: 1\r\n\r\n";
        let (data, used, done) = decode(ok, 7).expect("valid");
        assert_eq!(
            (data.as_slice(), used, done),
            (&b"hello"[..], ok.len(), true)
        );
    }

    #[test]
    fn bounds_trailers() {
        let t = format!("0\r\nX: {}\r\n\r\n", "a".repeat(2000));
        assert_eq!(
            decode(t.as_bytes(), 64).err(),
            Some(ChunkError::TrailerTooLarge)
        );
    }

    #[test]
    fn incomplete_is_not_done() {
        let (data, _, done) = decode(b"5\r\nhel", 3).expect("valid so far");
        assert_eq!(data, b"hel");
        assert!(!done);
    }
}
