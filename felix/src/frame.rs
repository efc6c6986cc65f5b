//! Felix's dataplane-driver framing.
//!
//! Both directions of the pipe between Felix and its external dataplane
//! driver carry the same framing: an 8-byte little-endian `u64` length (not
//! counting the header itself), then exactly that many bytes of protobuf.
//! Felix writes `felix.ToDataplane` messages; the driver writes
//! `felix.FromDataplane` messages back.
//!
//! Felix puts no upper bound on a frame's length, so [`FrameReader`] applies
//! its own cap ([`DEFAULT_MAX_FRAME_LEN`] unless configured) and never
//! allocates the announced length up front: memory grows only as bytes
//! actually arrive, so a corrupt header followed by a short stream costs
//! nothing.
//!
//! Framing and decoding are separate steps. [`FrameReader`] yields raw
//! [`Frame`]s; [`decode_to_dataplane_v3_32`] and [`decode_to_dataplane_v3_31`]
//! decode one with the schema that matches the running Felix (see
//! [`schema_for_calico_version`]). Every error names the 0-based number of the
//! frame it concerns. Fields and oneof members the chosen schema does not know
//! are skipped, not reported: an unknown payload decodes as `payload: None`.
//!
//! Nothing here panics.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use capo_proto::felix::{v3_31, v3_32};
use prost::Message;

/// Default cap on one frame's body length: 64 MiB.
///
/// A full snapshot arrives as many small frames; the largest single messages
/// are IP-set updates, and a set at Felix's default `MaxIpsetSize` (about a
/// million members) is roughly 20-40 MB.
pub const DEFAULT_MAX_FRAME_LEN: u64 = 64 * 1024 * 1024;

/// Length of the frame header: one little-endian `u64`.
const HEADER_LEN: usize = 8;

/// Largest buffer reserved before any body bytes have arrived.
const INITIAL_BODY_CAPACITY: u64 = 64 * 1024;

/// Which `felixbackend.proto` the peer speaks.
///
/// The schema changed incompatibly in Calico v3.32 (`PolicyID`, `TierInfo`
/// policy lists, host metadata), so frames must be decoded with the one that
/// matches the running Felix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Schema {
    /// Calico v3.31.x and earlier ([`capo_proto::felix::v3_31`]).
    V3_31,
    /// Calico v3.32 and later, including master ([`capo_proto::felix::v3_32`]).
    V3_32,
}

impl Schema {
    /// The schema's name as accepted by [`FromStr`]: `"v3.31"` or `"v3.32"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Schema::V3_31 => "v3.31",
            Schema::V3_32 => "v3.32",
        }
    }
}

impl fmt::Display for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no known [`Schema`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown Felix schema {input:?}: expected \"v3.31\" or \"v3.32\"")]
pub struct ParseSchemaError {
    input: String,
}

impl ParseSchemaError {
    /// The string that failed to parse.
    pub fn input(&self) -> &str {
        &self.input
    }
}

impl FromStr for Schema {
    type Err = ParseSchemaError;

    /// Accepts `"v3.31"` and `"v3.32"`; the leading `v` is optional.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix('v').unwrap_or(s) {
            "3.31" => Ok(Schema::V3_31),
            "3.32" => Ok(Schema::V3_32),
            _ => Err(ParseSchemaError {
                input: s.to_owned(),
            }),
        }
    }
}

/// Picks the schema for a Calico version string such as Felix reports in
/// `ConfigUpdate.config["CalicoVersion"]`.
///
/// `"v3.31.7"` gives [`Schema::V3_31`], as does anything older; `"v3.32.1"`,
/// `"v3.33.0"` and `"v3.34.0-0.dev"` give [`Schema::V3_32`], as does anything
/// newer. The leading `v` is optional and only major and minor are read.
/// Returns `None` if the string does not start with `major.minor`.
pub fn schema_for_calico_version(v: &str) -> Option<Schema> {
    let v = v.trim();
    let v = v.strip_prefix('v').unwrap_or(v);
    let mut parts = v.splitn(3, '.');
    let major = leading_number(parts.next()?)?;
    let minor = leading_number(parts.next()?)?;
    if (major, minor) >= (3, 32) {
        Some(Schema::V3_32)
    } else {
        Some(Schema::V3_31)
    }
}

/// The decimal number at the start of `s` (`"34"` in `"34-0"`), if any.
fn leading_number(s: &str) -> Option<u64> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s[..end].parse().ok()
}

/// One frame's body, as read off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// 0-based number of this frame in its stream.
    pub index: u64,
    /// The protobuf bytes, without the length header.
    pub bytes: Vec<u8>,
}

impl Frame {
    /// The frame as it was on the wire: length header, then body (to pass it on
    /// unchanged).
    pub fn wire_bytes(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(HEADER_LEN + self.bytes.len());
        buf.extend_from_slice(&(self.bytes.len() as u64).to_le_bytes());
        buf.extend_from_slice(&self.bytes);
        buf
    }
}

/// Why a frame could not be read, written or decoded.
///
/// After any error other than [`FrameError::DecodeError`] the stream's
/// position is unknown, so the stream is unusable.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream ended inside a frame.
    #[error("frame {frame}: stream ended after {got} of {wanted} {} bytes", part_name(*.in_header))]
    Truncated {
        /// The frame being read.
        frame: u64,
        /// Bytes the header or body should have had.
        wanted: u64,
        /// Bytes that arrived before end of stream.
        got: u64,
        /// Whether the stream ended in the 8-byte header rather than the body.
        in_header: bool,
    },
    /// The header announced a body longer than the configured cap.
    #[error("frame {frame}: length {len} exceeds the limit of {max} bytes")]
    Oversize {
        /// The frame being read.
        frame: u64,
        /// Length from the header.
        len: u64,
        /// The reader's cap.
        max: u64,
    },
    /// The stream's read timeout passed inside a frame: the peer stopped mid-frame.
    /// (At a frame boundary a timeout is only idleness and reading goes on.)
    #[error("frame {frame}: the peer stalled after {got} of {wanted} {} bytes", part_name(*.in_header))]
    Stalled {
        /// The frame being read.
        frame: u64,
        /// Bytes the header or body should have had.
        wanted: u64,
        /// Bytes that arrived before the timeout.
        got: u64,
        /// Whether it stalled in the 8-byte header rather than the body.
        in_header: bool,
    },
    /// Reading or writing the underlying stream failed.
    #[error("frame {frame}: I/O error: {source}")]
    Io {
        /// The frame being read or written.
        frame: u64,
        /// The underlying error.
        source: io::Error,
    },
    /// The frame's bytes are not a valid message of the expected schema.
    #[error("frame {frame}: not a valid {schema} ToDataplane message: {source}")]
    DecodeError {
        /// The frame being decoded.
        frame: u64,
        /// The schema it was decoded with.
        schema: Schema,
        /// What prost objected to.
        source: prost::DecodeError,
    },
}

impl FrameError {
    /// The 0-based number of the frame the error concerns.
    pub fn frame(&self) -> u64 {
        match self {
            FrameError::Truncated { frame, .. }
            | FrameError::Stalled { frame, .. }
            | FrameError::Oversize { frame, .. }
            | FrameError::Io { frame, .. }
            | FrameError::DecodeError { frame, .. } => *frame,
        }
    }
}

fn part_name(in_header: bool) -> &'static str {
    if in_header {
        "header"
    } else {
        "body"
    }
}

/// Reads length-prefixed frames from a byte stream.
///
/// The reader does no buffering of its own; wrap a raw pipe in a
/// [`std::io::BufReader`] if frames are small and many.
#[derive(Debug)]
pub struct FrameReader<R: Read> {
    inner: R,
    max_len: u64,
    next_index: u64,
    /// Set once the iterator has yielded an error or end of stream.
    fused: bool,
    /// A read timeout between frames is idleness, not an error.
    idle_between_frames: bool,
}

impl<R: Read> FrameReader<R> {
    /// A reader with the [`DEFAULT_MAX_FRAME_LEN`] cap.
    pub fn new(inner: R) -> Self {
        Self::with_max_frame_len(inner, DEFAULT_MAX_FRAME_LEN)
    }

    /// A reader that rejects bodies longer than `max_len` bytes.
    pub fn with_max_frame_len(inner: R, max_len: u64) -> Self {
        FrameReader {
            inner,
            max_len,
            next_index: 0,
            fused: false,
            idle_between_frames: false,
        }
    }

    /// Makes the stream's read timeout bound only the time inside a frame: a timeout
    /// before a frame's first byte is idleness and reading goes on, one after it is
    /// [`FrameError::Stalled`]. For a peer that may be silent for long between
    /// messages but must not stop mid-message (Felix).
    pub fn idle_between_frames(mut self) -> Self {
        self.idle_between_frames = true;
        self
    }

    /// The cap on a frame's body length.
    pub fn max_frame_len(&self) -> u64 {
        self.max_len
    }

    /// How many frames have been read so far; also the index the next frame
    /// will get.
    pub fn frames_read(&self) -> u64 {
        self.next_index
    }

    /// Reads the next frame.
    ///
    /// Returns `Ok(None)` when the stream ends cleanly between frames.
    ///
    /// # Errors
    ///
    /// [`FrameError::Truncated`] if the stream ends inside a header or body,
    /// [`FrameError::Oversize`] if the header exceeds the cap (nothing of the
    /// body is read), [`FrameError::Io`] if the stream fails. After an error
    /// the stream is out of step and should not be read further.
    pub fn read_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let frame = self.next_index;
        let mut header = [0u8; HEADER_LEN];
        let got = match read_header(&mut self.inner, &mut header, self.idle_between_frames) {
            Ok(n) => n,
            Err((got, source)) if is_timeout(&source) => {
                return Err(FrameError::Stalled {
                    frame,
                    wanted: HEADER_LEN as u64,
                    got: got as u64,
                    in_header: true,
                })
            }
            Err((_, source)) => return Err(FrameError::Io { frame, source }),
        };
        match got {
            0 => return Ok(None),
            HEADER_LEN => {}
            short => {
                return Err(FrameError::Truncated {
                    frame,
                    wanted: HEADER_LEN as u64,
                    got: short as u64,
                    in_header: true,
                })
            }
        }

        let len = u64::from_le_bytes(header);
        if len > self.max_len {
            return Err(FrameError::Oversize {
                frame,
                len,
                max: self.max_len,
            });
        }

        // Grow with the data rather than trusting the header: `take` stops at
        // `len`, and `read_to_end` extends the buffer only as bytes arrive.
        let initial = usize::try_from(len.min(INITIAL_BODY_CAPACITY)).unwrap_or(0);
        let mut bytes = Vec::with_capacity(initial);
        if let Err(source) = (&mut self.inner).take(len).read_to_end(&mut bytes) {
            return Err(if is_timeout(&source) {
                FrameError::Stalled {
                    frame,
                    wanted: len,
                    got: bytes.len() as u64,
                    in_header: false,
                }
            } else {
                FrameError::Io { frame, source }
            });
        }
        let got = bytes.len() as u64;
        if got < len {
            return Err(FrameError::Truncated {
                frame,
                wanted: len,
                got,
                in_header: false,
            });
        }

        self.next_index += 1;
        Ok(Some(Frame {
            index: frame,
            bytes,
        }))
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The underlying stream, mutably. Reading from it directly will
    /// desynchronise the framing.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Gives back the underlying stream.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

/// Yields frames until end of stream or the first error, then only `None`.
impl<R: Read> Iterator for FrameReader<R> {
    type Item = Result<Frame, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.fused {
            return None;
        }
        let item = self.read_frame().transpose();
        if !matches!(item, Some(Ok(_))) {
            self.fused = true;
        }
        item
    }
}

/// Fills `buf` from `r` until it is full or the stream ends; returns how many
/// bytes were read. Unlike `read_exact`, this tells a clean end of stream
/// (0 bytes) from a short read.
/// A read timeout (`WouldBlock` or `TimedOut`, as a socket's read timeout reports it).
fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Reads a frame header. With `idle`, a read timeout before its first byte is
/// idleness between frames and reading goes on. Errors come with the bytes read so
/// far.
fn read_header(r: &mut impl Read, buf: &mut [u8], idle: bool) -> Result<usize, (usize, io::Error)> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if idle && filled == 0 && is_timeout(&e) => {}
            Err(e) => return Err((filled, e)),
        }
    }
    Ok(filled)
}

/// Encodes `msg` as one complete frame: header then body.
pub fn encode_frame<M: Message>(msg: &M) -> Vec<u8> {
    let body_len = msg.encoded_len();
    let mut buf = Vec::with_capacity(HEADER_LEN + body_len);
    buf.extend_from_slice(&(body_len as u64).to_le_bytes());
    // Encoding into a Vec only fails for lack of capacity, and the Vec grows.
    msg.encode_raw(&mut buf);
    buf
}

/// Encodes messages as one frame stream (what Felix writes to fd 3).
pub fn encode_frames<M: Message>(msgs: &[M]) -> Vec<u8> {
    msgs.iter().flat_map(encode_frame).collect()
}

/// Writes length-prefixed frames to a byte stream.
///
/// Used for `FromDataplane` messages to Felix, and for `ToDataplane` streams
/// in tests and recordings. The caller sets each message's
/// `sequence_number`.
#[derive(Debug)]
pub struct FrameWriter<W: Write> {
    inner: W,
    next_index: u64,
}

impl<W: Write> FrameWriter<W> {
    /// A writer whose first frame gets index 0.
    pub fn new(inner: W) -> Self {
        FrameWriter {
            inner,
            next_index: 0,
        }
    }

    /// How many frames have been written so far; also the index the next
    /// frame will get.
    pub fn frames_written(&self) -> u64 {
        self.next_index
    }

    /// Writes `msg` as one frame and flushes; returns the frame's index.
    ///
    /// The header and body go out in a single `write_all`, so Felix never
    /// sees a header without its body unless the stream itself fails.
    ///
    /// # Errors
    ///
    /// [`FrameError::Io`] if writing or flushing fails. The frame may then be
    /// partly written, and the stream must be abandoned.
    pub fn write_message<M: Message>(&mut self, msg: &M) -> Result<u64, FrameError> {
        self.write_encoded(&encode_frame(msg))
    }

    /// Writes `body` (already-encoded protobuf) as one frame and flushes;
    /// returns the frame's index.
    ///
    /// # Errors
    ///
    /// As for [`FrameWriter::write_message`].
    pub fn write_body(&mut self, body: &[u8]) -> Result<u64, FrameError> {
        let mut buf = Vec::with_capacity(HEADER_LEN + body.len());
        buf.extend_from_slice(&(body.len() as u64).to_le_bytes());
        buf.extend_from_slice(body);
        self.write_encoded(&buf)
    }

    fn write_encoded(&mut self, frame_bytes: &[u8]) -> Result<u64, FrameError> {
        let frame = self.next_index;
        self.inner
            .write_all(frame_bytes)
            .and_then(|()| self.inner.flush())
            .map_err(|source| FrameError::Io { frame, source })?;
        self.next_index += 1;
        Ok(frame)
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// The underlying stream, mutably. Writing to it directly will corrupt
    /// the framing.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// Gives back the underlying stream.
    pub fn into_inner(self) -> W {
        self.inner
    }
}

/// Decodes a frame as a v3.32+ `ToDataplane`.
///
/// # Errors
///
/// [`FrameError::DecodeError`] naming the frame if the bytes are not a valid
/// message. Unknown fields and payload members are skipped, not errors.
pub fn decode_to_dataplane_v3_32(frame: &Frame) -> Result<v3_32::ToDataplane, FrameError> {
    decode(frame, Schema::V3_32)
}

/// Decodes a frame as a v3.31 `ToDataplane`.
///
/// # Errors
///
/// As for [`decode_to_dataplane_v3_32`].
pub fn decode_to_dataplane_v3_31(frame: &Frame) -> Result<v3_31::ToDataplane, FrameError> {
    decode(frame, Schema::V3_31)
}

fn decode<M: Message + Default>(frame: &Frame, schema: Schema) -> Result<M, FrameError> {
    M::decode(frame.bytes.as_slice()).map_err(|source| FrameError::DecodeError {
        frame: frame.index,
        schema,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use capo_proto::felix::v3_32::{from_dataplane, to_dataplane, FromDataplane, ToDataplane};

    const IN_SYNC_SEQ5: [u8; 12] = [
        0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // length 4, little-endian
        0x0a, 0x00, // field 1 (in_sync), empty message
        0x78, 0x05, // field 15 (sequence_number) = 5
    ];

    fn in_sync(seq: u64) -> ToDataplane {
        ToDataplane {
            sequence_number: seq,
            payload: Some(to_dataplane::Payload::InSync(Default::default())),
        }
    }

    fn reader(bytes: &[u8]) -> FrameReader<&[u8]> {
        FrameReader::new(bytes)
    }

    #[test]
    fn test_emit_in_sync_golden() {
        assert_eq!(encode_frame(&in_sync(5)), IN_SYNC_SEQ5);

        let mut w = FrameWriter::new(Vec::new());
        assert_eq!(w.write_message(&in_sync(5)).unwrap(), 0);
        assert_eq!(w.into_inner(), IN_SYNC_SEQ5);
    }

    #[test]
    fn test_parse_in_sync_golden() {
        let mut r = reader(&IN_SYNC_SEQ5);
        let frame = r.read_frame().unwrap().unwrap();
        assert_eq!(frame.index, 0);
        assert_eq!(frame.bytes, [0x0a, 0x00, 0x78, 0x05]);
        assert_eq!(decode_to_dataplane_v3_32(&frame).unwrap(), in_sync(5));
        assert!(r.read_frame().unwrap().is_none());
    }

    #[test]
    fn first_frame_seq_0_omits_field_15() {
        // proto3 leaves zero values out, so seq 0 is just the payload.
        let bytes = encode_frame(&in_sync(0));
        assert_eq!(bytes, [2, 0, 0, 0, 0, 0, 0, 0, 0x0a, 0x00]);
        let frame = reader(&bytes).read_frame().unwrap().unwrap();
        assert_eq!(
            decode_to_dataplane_v3_32(&frame).unwrap().sequence_number,
            0
        );
    }

    #[test]
    fn empty_stream_is_clean_eof() {
        let mut r = reader(&[]);
        assert!(r.read_frame().unwrap().is_none());
        assert_eq!(r.frames_read(), 0);
    }

    #[test]
    fn zero_length_frame_is_an_empty_message() {
        let frame = reader(&[0; 8]).read_frame().unwrap().unwrap();
        assert!(frame.bytes.is_empty());
        let msg = decode_to_dataplane_v3_32(&frame).unwrap();
        assert_eq!(msg.sequence_number, 0);
        assert!(msg.payload.is_none());
    }

    #[test]
    fn truncated_header() {
        // One whole frame, then 3 bytes of the next header.
        let mut bytes = IN_SYNC_SEQ5.to_vec();
        bytes.extend_from_slice(&[4, 0, 0]);
        let mut r = reader(&bytes);
        r.read_frame().unwrap().unwrap();
        let err = r.read_frame().unwrap_err();
        assert!(
            matches!(
                err,
                FrameError::Truncated {
                    frame: 1,
                    wanted: 8,
                    got: 3,
                    in_header: true
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "frame 1: stream ended after 3 of 8 header bytes"
        );
    }

    #[test]
    fn truncated_body() {
        let bytes = &IN_SYNC_SEQ5[..10];
        let err = reader(bytes).read_frame().unwrap_err();
        assert!(
            matches!(
                err,
                FrameError::Truncated {
                    frame: 0,
                    wanted: 4,
                    got: 2,
                    in_header: false
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "frame 0: stream ended after 2 of 4 body bytes"
        );
    }

    #[test]
    fn lying_length_under_cap_is_truncated_not_fatal() {
        // Claims 60 MiB (under the default cap) but carries 3 bytes: the reader
        // must report the short body rather than wait for or reserve 60 MiB.
        let mut bytes = (60u64 * 1024 * 1024).to_le_bytes().to_vec();
        bytes.extend_from_slice(&[1, 2, 3]);
        let err = reader(&bytes).read_frame().unwrap_err();
        assert!(
            matches!(
                err,
                FrameError::Truncated {
                    frame: 0,
                    wanted: 62_914_560,
                    got: 3,
                    in_header: false
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn oversize() {
        let mut bytes = 1025u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0; 1025]);
        let mut r = FrameReader::with_max_frame_len(bytes.as_slice(), 1024);
        let err = r.read_frame().unwrap_err();
        assert!(
            matches!(
                err,
                FrameError::Oversize {
                    frame: 0,
                    len: 1025,
                    max: 1024
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "frame 0: length 1025 exceeds the limit of 1024 bytes"
        );
        // Exactly at the cap is fine.
        let mut bytes = 1024u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0; 1024]);
        let mut r = FrameReader::with_max_frame_len(bytes.as_slice(), 1024);
        assert_eq!(r.read_frame().unwrap().unwrap().bytes.len(), 1024);
    }

    #[test]
    fn oversize_u64_max_with_default_cap() {
        let err = reader(&u64::MAX.to_le_bytes()).read_frame().unwrap_err();
        assert!(
            matches!(
                err,
                FrameError::Oversize {
                    frame: 0,
                    len: u64::MAX,
                    max: DEFAULT_MAX_FRAME_LEN
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn garbage_body_is_decode_error() {
        // Field 1 (in_sync) as length-delimited with length 5, but only 1 byte.
        let frame = Frame {
            index: 7,
            bytes: vec![0x0a, 0x05, 0x00],
        };
        let err = decode_to_dataplane_v3_32(&frame).unwrap_err();
        assert!(
            matches!(
                err,
                FrameError::DecodeError {
                    frame: 7,
                    schema: Schema::V3_32,
                    ..
                }
            ),
            "{err:?}"
        );
        // The message names the frame and what prost could not read.
        assert_eq!(
            err.to_string(),
            "frame 7: not a valid v3.32 ToDataplane message: failed to decode Protobuf message: ToDataplane.payload: buffer underflow"
        );
        assert_eq!(err.frame(), 7);
        assert!(std::error::Error::source(&err).is_some());

        let err = decode_to_dataplane_v3_31(&frame).unwrap_err();
        assert!(
            matches!(
                err,
                FrameError::DecodeError {
                    schema: Schema::V3_31,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn unknown_payload_field_is_ignored() {
        // Field 99 as a varint (tag 99 << 3 = 792 = 0x98 0x06), value 1, then
        // sequence number 5.
        let frame = Frame {
            index: 0,
            bytes: vec![0x98, 0x06, 0x01, 0x78, 0x05],
        };
        let msg = decode_to_dataplane_v3_32(&frame).unwrap();
        assert_eq!(msg.sequence_number, 5);
        assert!(msg.payload.is_none());
        let msg = decode_to_dataplane_v3_31(&frame).unwrap();
        assert!(msg.payload.is_none());
    }

    #[test]
    fn v3_32_x_host_metadata_decodes_under_v3_32() {
        // Field 37 (HostMetadataV4V6Update) is reserved on master but sent by v3.32.x:
        // the v3.32 schema reads it with the same layout.
        use capo_proto::felix::v3_31;
        let old = v3_31::ToDataplane {
            sequence_number: 3,
            payload: Some(v3_31::to_dataplane::Payload::HostMetadataV4v6Update(
                v3_31::HostMetadataV4v6Update {
                    hostname: "node-a".to_owned(),
                    ..Default::default()
                },
            )),
        };
        let frame = Frame {
            index: 0,
            bytes: old.encode_to_vec(),
        };
        let msg = decode_to_dataplane_v3_32(&frame).unwrap();
        assert_eq!(msg.sequence_number, 3);
        match msg.payload {
            Some(to_dataplane::Payload::HostMetadataV4v6Update(u)) => {
                assert_eq!(u.hostname, "node-a")
            }
            other => panic!("field 37 not read: {other:?}"),
        }
        assert_eq!(decode_to_dataplane_v3_31(&frame).unwrap(), old);
    }

    #[test]
    fn stream_round_trip() {
        let msgs: Vec<ToDataplane> = (0..5)
            .map(|seq| ToDataplane {
                sequence_number: seq,
                payload: Some(to_dataplane::Payload::IpsetRemove(
                    capo_proto::felix::v3_32::IpSetRemove {
                        id: format!("s:set-{seq}"),
                    },
                )),
            })
            .chain(std::iter::once(in_sync(5)))
            .collect();

        let mut w = FrameWriter::new(Vec::new());
        for (i, m) in msgs.iter().enumerate() {
            assert_eq!(w.write_message(m).unwrap(), i as u64);
        }
        assert_eq!(w.frames_written(), 6);
        let bytes = w.into_inner();

        let mut r = reader(&bytes);
        let mut decoded = Vec::new();
        while let Some(frame) = r.read_frame().unwrap() {
            assert_eq!(frame.index, decoded.len() as u64);
            decoded.push(decode_to_dataplane_v3_32(&frame).unwrap());
        }
        assert_eq!(decoded, msgs);
        assert_eq!(r.frames_read(), 6);

        // The iterator sees the same frames.
        let via_iter: Vec<Frame> = reader(&bytes).collect::<Result<_, _>>().unwrap();
        assert_eq!(via_iter.len(), 6);
    }

    #[test]
    fn iterator_stops_after_first_error() {
        let mut bytes = IN_SYNC_SEQ5.to_vec();
        bytes.extend_from_slice(&[9]);
        let mut it = reader(&bytes);
        assert!(matches!(it.next(), Some(Ok(Frame { index: 0, .. }))));
        assert!(matches!(
            it.next(),
            Some(Err(FrameError::Truncated { frame: 1, .. }))
        ));
        assert!(it.next().is_none());
    }

    #[test]
    fn from_dataplane_round_trip() {
        let msg = FromDataplane {
            sequence_number: 1,
            payload: Some(from_dataplane::Payload::ProcessStatusUpdate(
                capo_proto::felix::v3_32::ProcessStatusUpdate {
                    iso_timestamp: "2026-01-01T00:00:00Z".to_owned(),
                    uptime: 12.5,
                },
            )),
        };
        let mut w = FrameWriter::new(Vec::new());
        w.write_message(&msg).unwrap();
        w.write_body(&msg.encode_to_vec()).unwrap();
        let bytes = w.into_inner();
        for frame in reader(&bytes) {
            let frame = frame.unwrap();
            assert_eq!(FromDataplane::decode(frame.bytes.as_slice()).unwrap(), msg);
        }
    }

    #[test]
    fn write_error_names_the_frame() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::from(io::ErrorKind::BrokenPipe))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let err = FrameWriter::new(Broken)
            .write_message(&in_sync(0))
            .unwrap_err();
        assert!(matches!(err, FrameError::Io { frame: 0, .. }), "{err:?}");
        assert_eq!(err.to_string(), "frame 0: I/O error: broken pipe");
    }

    #[test]
    fn read_error_names_the_frame() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::from(io::ErrorKind::ConnectionReset))
            }
        }
        let err = FrameReader::new(Failing).read_frame().unwrap_err();
        assert!(matches!(err, FrameError::Io { frame: 0, .. }), "{err:?}");
    }

    #[test]
    fn interrupted_reads_are_retried() {
        // Yields EINTR before every byte.
        struct Stuttering<'a> {
            data: &'a [u8],
            interrupt: bool,
        }
        impl Read for Stuttering<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.interrupt = !self.interrupt;
                if self.interrupt {
                    return Err(io::Error::from(io::ErrorKind::Interrupted));
                }
                let Some((first, rest)) = self.data.split_first() else {
                    return Ok(0);
                };
                match buf.first_mut() {
                    Some(b) => *b = *first,
                    None => return Ok(0),
                }
                self.data = rest;
                Ok(1)
            }
        }
        let mut r = FrameReader::new(Stuttering {
            data: &IN_SYNC_SEQ5,
            interrupt: false,
        });
        let frame = r.read_frame().unwrap().unwrap();
        assert_eq!(decode_to_dataplane_v3_32(&frame).unwrap(), in_sync(5));
        assert!(r.read_frame().unwrap().is_none());
    }

    #[test]
    fn schema_names() {
        assert_eq!("v3.31".parse::<Schema>().unwrap(), Schema::V3_31);
        assert_eq!("v3.32".parse::<Schema>().unwrap(), Schema::V3_32);
        assert_eq!("3.32".parse::<Schema>().unwrap(), Schema::V3_32);
        let err = "v3.33".parse::<Schema>().unwrap_err();
        assert_eq!(err.input(), "v3.33");
        for s in [Schema::V3_31, Schema::V3_32] {
            assert_eq!(s.to_string().parse::<Schema>().unwrap(), s);
        }
    }

    #[test]
    fn schema_from_calico_version() {
        let cases = [
            ("v3.31.7", Some(Schema::V3_31)),
            ("v3.31.0", Some(Schema::V3_31)),
            ("v3.30.0", Some(Schema::V3_31)),
            ("v3.20.1", Some(Schema::V3_31)),
            ("v2.6.0", Some(Schema::V3_31)),
            ("v3.32.0", Some(Schema::V3_32)),
            ("v3.32.1", Some(Schema::V3_32)),
            ("v3.33.0", Some(Schema::V3_32)),
            ("v3.34.0-0.dev", Some(Schema::V3_32)),
            ("v3.32", Some(Schema::V3_32)),
            ("3.31.2", Some(Schema::V3_31)),
            ("v4.0.0", Some(Schema::V3_32)),
            (" v3.33.0\n", Some(Schema::V3_32)),
            ("", None),
            ("v3", None),
            ("master", None),
            ("v.32.1", None),
            ("v3.x", None),
        ];
        for (input, want) in cases {
            assert_eq!(schema_for_calico_version(input), want, "{input:?}");
        }
    }
}

#[cfg(test)]
mod stall_tests {
    use super::*;
    use std::collections::VecDeque;

    /// Reads from a script: bytes, or a read timeout.
    struct Script(VecDeque<Option<Vec<u8>>>);

    impl Read for Script {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.0.pop_front() {
                None => Ok(0),
                Some(None) => Err(io::Error::new(io::ErrorKind::WouldBlock, "timeout")),
                Some(Some(mut b)) => {
                    let n = b.len().min(buf.len());
                    buf[..n].copy_from_slice(&b[..n]);
                    if n < b.len() {
                        self.0.push_front(Some(b.split_off(n)));
                    }
                    Ok(n)
                }
            }
        }
    }

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut f = (body.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(body);
        f
    }

    #[test]
    fn timeouts_between_frames_are_idleness_inside_a_frame_a_stall() {
        let f = frame(b"abc");
        // Idle twice, then a whole frame: read.
        let script = Script(VecDeque::from([None, None, Some(f.clone())]));
        let mut r = FrameReader::new(script).idle_between_frames();
        assert_eq!(r.read_frame().unwrap().unwrap().bytes, b"abc");
        // Stalled in the header.
        let script = Script(VecDeque::from([Some(f[..3].to_vec()), None]));
        let mut r = FrameReader::new(script).idle_between_frames();
        match r.read_frame() {
            Err(FrameError::Stalled {
                got: 3,
                in_header: true,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        // Stalled in the body.
        let script = Script(VecDeque::from([Some(f[..9].to_vec()), None]));
        let mut r = FrameReader::new(script).idle_between_frames();
        let e = r.read_frame().unwrap_err();
        assert!(
            matches!(
                e,
                FrameError::Stalled {
                    got: 1,
                    wanted: 3,
                    in_header: false,
                    ..
                }
            ),
            "{e}"
        );
        assert!(
            e.to_string().contains("stalled after 1 of 3 body bytes"),
            "{e}"
        );
        // Without the option, a timeout at a boundary is an error too.
        let script = Script(VecDeque::from([None, Some(f)]));
        let mut r = FrameReader::new(script);
        assert!(matches!(
            r.read_frame(),
            Err(FrameError::Stalled { got: 0, .. })
        ));
    }
}
