//! The mesh handshake's framing: 3 bytes per frame, a tag then a `u16` server id, big-endian.
//!
//! | tag | frame | sent by |
//! |---|---|---|
//! | `0x01` | [`Frame::Identify`] | the dialler, first thing: "I am server `id`" (DarkRift's Identify command) |
//! | `0x02` | [`Frame::Welcome`] | the accepting side once it has accepted: "and I am server `id`" |
//!
//! The welcome is not in DarkRift: it tells the dialler that the link is identified (an
//! unannounced Identify is refused by closing the socket) and that it reached the server it
//! meant to, not a newer one that reuses the host and port.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes in one frame.
pub const FRAME_LEN: usize = 3;

const TAG_IDENTIFY: u8 = 0x01;
const TAG_WELCOME: u8 = 0x02;

/// One handshake frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// The dialler's id.
    Identify(u16),
    /// The acceptor's id, sent once the Identify is accepted.
    Welcome(u16),
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the connection before a whole frame.
    #[error("connection closed before a frame")]
    Closed,
    /// No frame within the bound.
    #[error("no frame within {0:?}")]
    Timeout(Duration),
    /// An unknown tag.
    #[error("unknown frame tag {0:#04x}")]
    UnknownTag(u8),
    /// A socket error.
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
}

impl Frame {
    /// The frame's bytes.
    #[must_use]
    pub fn encode(self) -> [u8; FRAME_LEN] {
        let (tag, id) = match self {
            Frame::Identify(id) => (TAG_IDENTIFY, id),
            Frame::Welcome(id) => (TAG_WELCOME, id),
        };
        let [hi, lo] = id.to_be_bytes();
        [tag, hi, lo]
    }

    /// Reads a frame from its bytes.
    ///
    /// # Errors
    /// [`FrameError::UnknownTag`].
    pub fn decode(bytes: [u8; FRAME_LEN]) -> Result<Self, FrameError> {
        let id = u16::from_be_bytes([bytes[1], bytes[2]]);
        match bytes[0] {
            TAG_IDENTIFY => Ok(Frame::Identify(id)),
            TAG_WELCOME => Ok(Frame::Welcome(id)),
            tag => Err(FrameError::UnknownTag(tag)),
        }
    }

    /// Writes the frame.
    ///
    /// # Errors
    /// A socket error.
    pub async fn write_to<W: AsyncWrite + Unpin>(self, w: &mut W) -> std::io::Result<()> {
        w.write_all(&self.encode()).await?;
        w.flush().await
    }

    /// Reads one frame, waiting at most `bound`.
    ///
    /// # Errors
    /// See [`FrameError`].
    pub async fn read_from<R: AsyncRead + Unpin>(
        r: &mut R,
        bound: Duration,
    ) -> Result<Self, FrameError> {
        let mut buf = [0u8; FRAME_LEN];
        match tokio::time::timeout(bound, r.read_exact(&mut buf)).await {
            Err(_) => Err(FrameError::Timeout(bound)),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(FrameError::Closed),
            Ok(Err(e)) => Err(FrameError::Io(e)),
            Ok(Ok(_)) => Self::decode(buf),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_is_tag_then_big_endian_id() {
        assert_eq!(Frame::Identify(0x1234).encode(), [0x01, 0x12, 0x34]);
        assert_eq!(Frame::Welcome(7).encode(), [0x02, 0x00, 0x07]);
        for f in [
            Frame::Identify(0),
            Frame::Identify(65535),
            Frame::Welcome(300),
        ] {
            assert_eq!(Frame::decode(f.encode()).unwrap(), f);
        }
        assert!(matches!(
            Frame::decode([0x09, 0, 1]),
            Err(FrameError::UnknownTag(0x09))
        ));
    }

    #[tokio::test]
    async fn reading_reports_eof_timeout_and_split_frames() {
        let (mut a, mut b) = tokio::io::duplex(16);
        // A frame split over two writes still reads as one.
        a.write_all(&[0x01, 0x00]).await.unwrap();
        let reader = tokio::spawn(async move {
            let f = Frame::read_from(&mut b, Duration::from_secs(5)).await;
            (f, b)
        });
        a.write_all(&[0x05]).await.unwrap();
        let (f, mut b) = reader.await.unwrap();
        assert_eq!(f.unwrap(), Frame::Identify(5));
        // Nothing written: the bound elapses.
        assert!(matches!(
            Frame::read_from(&mut b, Duration::from_millis(20)).await,
            Err(FrameError::Timeout(_))
        ));
        a.write_all(&[0x02]).await.unwrap();
        drop(a);
        assert!(matches!(
            Frame::read_from(&mut b, Duration::from_secs(5)).await,
            Err(FrameError::Closed)
        ));
    }
}
