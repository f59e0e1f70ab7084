//! The byte cursor every wire codec of the crate reads with (relay frames, session messages,
//! signed documents, envelopes, logins): reads refuse to go past the end, strings must be UTF-8,
//! and [`Reader::finish`] refuses bytes left over. Its errors are its own ([`CodecError`]); each
//! codec maps them to the errors of its layer.

use crate::id::HubId;

/// Why bytes did not read as what was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum CodecError {
    /// Fewer bytes than the layout needs.
    #[error("truncated")]
    Truncated,
    /// A string that is not UTF-8.
    #[error("not UTF-8")]
    Utf8,
    /// Bytes after the layout's end.
    #[error("trailing bytes")]
    Trailing,
}

/// A cursor over borrowed bytes that refuses to read past the end.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.buf.len() < n {
            return Err(CodecError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, CodecError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, CodecError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    pub(crate) fn hub(&mut self) -> Result<HubId, CodecError> {
        Ok(HubId(self.array()?))
    }

    /// Bytes left to read.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The end of a layout: [`CodecError::Trailing`] if bytes are left.
    pub(crate) fn finish(&self) -> Result<(), CodecError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(CodecError::Trailing)
        }
    }

    /// A `u8`-length-prefixed UTF-8 string.
    pub(crate) fn short_str(&mut self) -> Result<&'a str, CodecError> {
        let len = usize::from(self.u8()?);
        std::str::from_utf8(self.take(len)?).map_err(|_| CodecError::Utf8)
    }
}

/// A string longer than a `u8` length prefix can say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooLong;

/// Appends a `u8`-length-prefixed string; a string over 255 bytes is an error (nothing is
/// written), never a string cut short.
pub(crate) fn put_short_str(out: &mut Vec<u8>, s: &str) -> Result<(), TooLong> {
    let len = u8::try_from(s.len()).map_err(|_| TooLong)?;
    out.push(len);
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_stop_at_the_end_and_say_why() {
        let mut r = Reader::new(&[0, 1, 2, b'h', b'i', 0xff]);
        assert_eq!(r.u16(), Ok(1));
        assert_eq!(r.short_str(), Ok("hi"));
        assert_eq!(r.finish(), Err(CodecError::Trailing));
        assert_eq!(r.u16(), Err(CodecError::Truncated));
        assert_eq!(r.remaining(), 1, "a failed read takes nothing");
        assert_eq!(Reader::new(&[1, 0xff]).short_str(), Err(CodecError::Utf8));
        let mut out = Vec::new();
        assert_eq!(put_short_str(&mut out, &"x".repeat(256)), Err(TooLong));
        assert!(out.is_empty());
    }
}
