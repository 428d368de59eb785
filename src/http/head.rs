//! Offsets into a parsed HTTP/1 head, shared by the server's reader (`server::h1`) and
//! the upstream exchange (`upstream::h1`). httparse borrows the read buffer; the head
//! is then split off and frozen, and each field becomes a slice of it (no copy), found
//! again by these offsets.

use std::ops::Range;

/// Where a part of a head lies in its buffer. `u32`: a head is at most
/// `max_header_bytes` (1 MiB at most) on the client side and `MAX_HEAD_BYTES` plus one
/// read on the upstream side, and half the size keeps the per-parse offset arrays small.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct Span {
    start: u32,
    end: u32,
}

impl Span {
    /// The span of `part`, a slice of `base`.
    pub fn of(base: &[u8], part: &[u8]) -> Span {
        let start = part.as_ptr() as usize - base.as_ptr() as usize;
        debug_assert!(start + part.len() <= u32::MAX as usize);
        Span {
            start: start as u32,
            end: (start + part.len()) as u32,
        }
    }

    pub fn range(self) -> Range<usize> {
        self.start as usize..self.end as usize
    }
}

/// One header field's name and value in the head.
#[derive(Clone, Copy, Default)]
pub struct FieldAt {
    pub name: Span,
    pub value: Span,
}

/// `1*DIGIT`, at most 19 digits (fits a u64): a `Content-Length` value.
pub fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_find_their_part_again() {
        let head = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
        let part = &head[4..6];
        assert_eq!(&head[Span::of(head, part).range()], b"/a");
        assert_eq!(Span::of(head, &head[..0]).range(), 0..0);
    }

    #[test]
    fn lengths_are_digits_only() {
        assert_eq!(parse_length(b"0"), Some(0));
        assert_eq!(parse_length(b"1234"), Some(1234));
        assert_eq!(
            parse_length(b"9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
        for bad in [
            &b""[..],
            b"-1",
            b"+1",
            b" 1",
            b"1a",
            b"0x10",
            b"99999999999999999999",
        ] {
            assert_eq!(parse_length(bad), None, "{bad:?}");
        }
    }
}
