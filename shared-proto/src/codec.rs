//! Byte cursor shared by the wire codecs: reads refuse to go past the end.

use crate::relay::frame::{FrameError, FrameType, HubId, HUB_ID_LEN, MAX_ROOM_MEMBERS};

/// A cursor over borrowed bytes that refuses to read past the end.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.buf.len() < n {
            return Err(FrameError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], FrameError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, FrameError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, FrameError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, FrameError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    pub(crate) fn hub(&mut self) -> Result<HubId, FrameError> {
        Ok(HubId(self.array()?))
    }

    /// One hub id or more, as many as the body holds whole (bytes left over are for
    /// [`Reader::finish`] to refuse), at most [`MAX_ROOM_MEMBERS`].
    pub(crate) fn hub_list(&mut self) -> Result<Vec<HubId>, FrameError> {
        let count = self.buf.len() / HUB_ID_LEN;
        if count > MAX_ROOM_MEMBERS {
            return Err(FrameError::TooLarge {
                what: "presence list",
                len: count,
                max: MAX_ROOM_MEMBERS,
            });
        }
        let hubs = (0..count.max(1))
            .map(|_| self.hub())
            .collect::<Result<_, _>>()?;
        Ok(hubs)
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn finish(&self, ty: FrameType) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Trailing(ty))
        }
    }

    /// A `u8`-length-prefixed UTF-8 string.
    pub(crate) fn short_str(&mut self) -> Result<&'a str, FrameError> {
        let len = usize::from(self.u8()?);
        std::str::from_utf8(self.take(len)?).map_err(|_| FrameError::Invalid("utf-8 string"))
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
