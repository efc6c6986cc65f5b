//! A minimal client of VPP's binary API over its unix socket (`socksvr`), enough to
//! configure a plugin the way its control plane does: connect (`sockclnt_create`, whose
//! reply carries the message table), then request/reply by message name and CRC.
//!
//! Wire format (vlibmemory's socket transport, 26.06): every message is a 16-byte
//! header (`u64` queue pointer, unused on the socket; `u32` length, big-endian; `u32`
//! timestamp) and the message itself, whose fields are packed and big-endian:
//! `u16 _vl_msg_id`, then for requests `u32 client_index`, and `u32 context`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// `sockclnt_create` and its reply have fixed ids on the socket transport.
const SOCKCLNT_CREATE: u16 = 15;
const SOCKCLNT_CREATE_REPLY: u16 = 16;

/// Why an API exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The socket failed.
    #[error("VPP API socket: {0}")]
    Io(#[from] std::io::Error),
    /// VPP does not know the message (plugin not loaded, or another version).
    #[error("VPP does not know the API message {0}")]
    UnknownMessage(String),
    /// A reply that cannot be read.
    #[error("malformed reply to {0}")]
    Malformed(String),
    /// The handler refused the request.
    #[error("{message} returned {retval}")]
    Refused {
        /// The request.
        message: String,
        /// Its `retval`.
        retval: i32,
    },
}

/// A connected client.
#[derive(Debug)]
pub struct ApiClient {
    sock: UnixStream,
    client_index: u32,
    context: u32,
    /// `name_crc` → message id.
    table: HashMap<String, u16>,
}

/// A message body under construction (packed, big-endian).
#[derive(Debug, Default, Clone)]
pub struct Body(pub Vec<u8>);

impl Body {
    /// Appends a byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    /// Appends a big-endian `u16`.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    /// Appends a big-endian `u32`.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    /// Appends raw bytes.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
    /// Appends `n` zero bytes (the unused tail of a union).
    pub fn zeros(&mut self, n: usize) -> &mut Self {
        self.0.resize(self.0.len() + n, 0);
        self
    }
    /// Appends `vl_api_address_t` (17 bytes: family, 16-byte union).
    pub fn address(&mut self, a: std::net::IpAddr) -> &mut Self {
        match a {
            std::net::IpAddr::V4(a) => self.u8(0).bytes(&a.octets()).zeros(12),
            std::net::IpAddr::V6(a) => self.u8(1).bytes(&a.octets()),
        }
    }
    /// Appends `vl_api_prefix_t` (18 bytes).
    pub fn prefix(&mut self, c: &capo_policy::Cidr) -> &mut Self {
        self.address(c.net().addr()).u8(c.prefix_len())
    }
}

fn frame(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + msg.len());
    out.extend_from_slice(&0u64.to_be_bytes());
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(msg);
    out
}

impl ApiClient {
    /// Connects to VPP's API socket as `name`.
    pub fn connect(path: &Path, name: &str) -> Result<Self, ApiError> {
        let sock = UnixStream::connect(path)?;
        sock.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut c = ApiClient {
            sock,
            client_index: 0,
            context: 1,
            table: HashMap::new(),
        };
        let mut msg = Body::default();
        let mut n = [0u8; 64];
        for (d, s) in n.iter_mut().zip(name.bytes().take(63)) {
            *d = s;
        }
        msg.u16(SOCKCLNT_CREATE).u32(c.context).bytes(&n);
        c.sock.write_all(&frame(&msg.0))?;
        let reply = c.read()?;
        let bad = || ApiError::Malformed("sockclnt_create".into());
        let mut r = Reader(&reply);
        if r.u16().ok_or_else(bad)? != SOCKCLNT_CREATE_REPLY {
            return Err(bad());
        }
        let _client_index = r.u32().ok_or_else(bad)?;
        let _context = r.u32().ok_or_else(bad)?;
        let response = r.u32().ok_or_else(bad)? as i32;
        if response != 0 {
            return Err(ApiError::Refused {
                message: "sockclnt_create".into(),
                retval: response,
            });
        }
        c.client_index = r.u32().ok_or_else(bad)?;
        let count = r.u16().ok_or_else(bad)?;
        for _ in 0..count {
            let id = r.u16().ok_or_else(bad)?;
            let name = r.take(64).ok_or_else(bad)?;
            let end = name.iter().position(|&b| b == 0).unwrap_or(64);
            c.table
                .insert(String::from_utf8_lossy(&name[..end]).into_owned(), id);
        }
        Ok(c)
    }

    fn read(&mut self) -> Result<Vec<u8>, ApiError> {
        let mut hdr = [0u8; 16];
        self.sock.read_exact(&mut hdr)?;
        let len = u32::from_be_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]) as usize;
        let mut msg = vec![0u8; len];
        self.sock.read_exact(&mut msg)?;
        Ok(msg)
    }

    /// Whether VPP knows `name_crc`.
    pub fn knows(&self, name_crc: &str) -> bool {
        self.table.contains_key(name_crc)
    }

    /// Sends `name_crc` with `body` and returns the reply's fields after its context,
    /// once its leading `i32 retval` is checked to be 0.
    pub fn request(&mut self, name_crc: &str, body: &Body) -> Result<Vec<u8>, ApiError> {
        let reply = self.request_raw(name_crc, body)?;
        let mut r = Reader(&reply);
        let retval = r
            .u32()
            .ok_or_else(|| ApiError::Malformed(name_crc.into()))? as i32;
        if retval != 0 {
            return Err(ApiError::Refused {
                message: name_crc.into(),
                retval,
            });
        }
        Ok(r.0.to_vec())
    }

    /// Sends `name_crc` with `body` and returns all of the reply's fields after its
    /// context (for replies whose `retval` is not first).
    pub fn request_raw(&mut self, name_crc: &str, body: &Body) -> Result<Vec<u8>, ApiError> {
        let id = *self
            .table
            .get(name_crc)
            .ok_or_else(|| ApiError::UnknownMessage(name_crc.into()))?;
        self.context = self.context.wrapping_add(1);
        let mut msg = Body::default();
        msg.u16(id)
            .u32(self.client_index)
            .u32(self.context)
            .bytes(&body.0);
        self.sock.write_all(&frame(&msg.0))?;
        loop {
            let reply = self.read()?;
            let mut r = Reader(&reply);
            let bad = || ApiError::Malformed(name_crc.into());
            let _id = r.u16().ok_or_else(bad)?;
            if r.u32().ok_or_else(bad)? != self.context {
                continue; // an event or a stale reply
            }
            return Ok(r.0.to_vec());
        }
    }

    /// [`ApiClient::request`] for a reply that carries one `u32` (a created id).
    pub fn request_id(&mut self, name_crc: &str, body: &Body) -> Result<u32, ApiError> {
        let rest = self.request(name_crc, body)?;
        Reader(&rest)
            .u32()
            .ok_or_else(|| ApiError::Malformed(name_crc.into()))
    }
}

/// Reads big-endian fields off a reply.
pub(crate) struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    /// Reads over `bytes`.
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader(bytes)
    }
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    /// The next big-endian `u32`.
    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_packed_big_endian() {
        let mut b = Body::default();
        b.u8(1).u16(0x0203).u32(0x0405_0607);
        assert_eq!(b.0, [1, 2, 3, 4, 5, 6, 7]);
        let mut a = Body::default();
        a.prefix(&"10.1.2.0/24".parse().unwrap());
        assert_eq!(a.0.len(), 18);
        assert_eq!(&a.0[..5], &[0, 10, 1, 2, 0]);
        assert_eq!(a.0[17], 24);
        let mut a6 = Body::default();
        a6.address("fd00::1".parse().unwrap());
        assert_eq!((a6.0.len(), a6.0[0], a6.0[1], a6.0[16]), (17, 1, 0xfd, 1));
        let f = frame(&[9, 9, 9]);
        assert_eq!(f.len(), 19);
        assert_eq!(&f[8..12], &[0, 0, 0, 3]);
    }

    #[test]
    fn reader_stops_at_the_end() {
        let mut r = Reader(&[0, 1, 0, 0, 0, 2, 7]);
        assert_eq!(r.u16(), Some(1));
        assert_eq!(r.u32(), Some(2));
        assert_eq!(r.u16(), None);
    }
}
