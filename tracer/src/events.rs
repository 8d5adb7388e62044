//! Decoding ring-buffer records into typed events.
//!
//! Every record is length-checked and read with `read_unaligned`: ring-buffer
//! samples are only 8-byte aligned, and a truncated or unknown record must be
//! an error, never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tracer_common::{
    ConnRecord, ErrorRecord, Header, HttpRecord, ResetRecord, SockState, Tuple, AF_INET6, COMM_LEN,
    KIND_CLOSE, KIND_ERROR, KIND_HTTP5XX, KIND_OBSERVE, KIND_RESET,
};

/// Why a record could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("empty record")]
    Empty,
    #[error("unknown record kind {kind}")]
    UnknownKind { kind: u8 },
    #[error("record of kind {kind} is {got} bytes, expected at least {want}")]
    Truncated { kind: u8, got: usize, want: usize },
}

/// The task and time a record was made in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub ts_ns: u64,
    pub tid: u32,
    pub tgid: u32,
    pub sk: u64,
}

/// Both ends of a connection, from the local socket's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ends {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

impl Ends {
    /// The same connection seen from the other end.
    pub fn reversed(self) -> Self {
        Self {
            local: self.remote,
            remote: self.local,
        }
    }
}

/// A socket's life at its close, or at the moment a thread touched it after
/// it failed (`observe`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conn {
    pub meta: Meta,
    pub observe: bool,
    pub ends: Ends,
    pub state: SockState,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub sk_err: i32,
    /// Comm of the acting task, when the record was made in its context.
    pub actor_comm: Option<String>,
}

/// An RST sent after the socket was reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reset {
    pub meta: Meta,
    pub ends: Ends,
    pub reason: Option<u32>,
    pub state: u32,
}

/// The error an application was told (`inet_sk_error_report`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SockError {
    pub meta: Meta,
    pub ends: Ends,
    pub error: i32,
}

/// A task wrote an HTTP/1.x 5xx status line on a TCP socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Http5xx {
    pub meta: Meta,
    /// local = the writer (proxy), remote = its client.
    pub ends: Ends,
    pub status: u16,
    pub sk_state: u8,
    pub netns: u32,
    pub sock_flags: u32,
    pub comm: String,
}

/// One decoded kernel event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Conn(Conn),
    Reset(Reset),
    Error(SockError),
    Http5xx(Http5xx),
}

fn read<T: Copy>(kind: u8, bytes: &[u8]) -> Result<T, DecodeError> {
    let want = std::mem::size_of::<T>();
    if bytes.len() < want {
        return Err(DecodeError::Truncated {
            kind,
            got: bytes.len(),
            want,
        });
    }
    // SAFETY: length checked above; T is a plain-old-data wire type; the
    // read does not assume alignment.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let kind = *bytes.first().ok_or(DecodeError::Empty)?;
    match kind {
        KIND_CLOSE | KIND_OBSERVE => {
            let r: ConnRecord = read(kind, bytes)?;
            let actor = r.state.flags & tracer_common::F_TASK_CTX != 0;
            Ok(Event::Conn(Conn {
                meta: meta(&r.hdr),
                observe: kind == KIND_OBSERVE,
                ends: ends(&r.tuple),
                state: r.state,
                bytes_sent: r.bytes_sent,
                bytes_received: r.bytes_received,
                sk_err: r.sk_err,
                actor_comm: actor.then(|| comm(&r.cur_comm)),
            }))
        }
        KIND_RESET => {
            let r: ResetRecord = read(kind, bytes)?;
            Ok(Event::Reset(Reset {
                meta: meta(&r.hdr),
                ends: ends(&r.tuple),
                reason: r.reason_plus1.checked_sub(1),
                state: r.state,
            }))
        }
        KIND_ERROR => {
            let r: ErrorRecord = read(kind, bytes)?;
            Ok(Event::Error(SockError {
                meta: meta(&r.hdr),
                ends: ends(&r.tuple),
                error: r.error,
            }))
        }
        KIND_HTTP5XX => {
            let r: HttpRecord = read(kind, bytes)?;
            Ok(Event::Http5xx(Http5xx {
                meta: meta(&r.hdr),
                ends: ends(&r.tuple),
                status: r.status,
                sk_state: r.sk_state,
                netns: r.netns,
                sock_flags: r.sock_flags,
                comm: comm(&r.comm),
            }))
        }
        kind => Err(DecodeError::UnknownKind { kind }),
    }
}

fn meta(h: &Header) -> Meta {
    Meta {
        ts_ns: h.ts_ns,
        tid: h.tid,
        tgid: h.tgid,
        sk: h.skaddr,
    }
}

fn addr(family: u16, raw: &[u8; 16], port: u16) -> SocketAddr {
    let ip = match family {
        AF_INET6 => {
            let v6 = Ipv6Addr::from(*raw);
            // IPv4-mapped addresses print as IPv4: that is what a proxy log shows.
            v6.to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6))
        }
        _ => IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3])),
    };
    SocketAddr::new(ip, port)
}

fn ends(t: &Tuple) -> Ends {
    Ends {
        local: addr(t.family, &t.saddr, t.sport),
        remote: addr(t.family, &t.daddr, t.dport),
    }
}

/// A kernel `comm` (NUL-padded) as a string.
pub fn comm(raw: &[u8; COMM_LEN]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tracer_common::AF_INET;

    pub fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: wire types are plain old data without implicit padding.
        unsafe {
            std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>())
        }
        .to_vec()
    }

    pub fn tuple4(s: [u8; 4], sp: u16, d: [u8; 4], dp: u16) -> Tuple {
        let mut t = Tuple {
            saddr: [0; 16],
            daddr: [0; 16],
            sport: sp,
            dport: dp,
            family: AF_INET,
            _pad: 0,
        };
        t.saddr[..4].copy_from_slice(&s);
        t.daddr[..4].copy_from_slice(&d);
        t
    }

    fn reset_record() -> ResetRecord {
        ResetRecord {
            hdr: Header {
                kind: KIND_RESET,
                _pad: [0; 3],
                tid: 7,
                tgid: 7,
                cpu: 0,
                ts_ns: 42,
                skaddr: 0xffff,
            },
            tuple: tuple4([10, 0, 0, 2], 8080, [10, 0, 0, 1], 40000),
            reason_plus1: 3,
            state: 4,
        }
    }

    #[test]
    fn decodes_reset_with_reason() {
        let ev = decode(&bytes_of(&reset_record())).unwrap();
        let Event::Reset(r) = ev else {
            panic!("not a reset: {ev:?}")
        };
        assert_eq!(r.reason, Some(2));
        assert_eq!(r.ends.local.to_string(), "10.0.0.2:8080");
        assert_eq!(r.ends.remote.to_string(), "10.0.0.1:40000");
        assert_eq!(r.meta.ts_ns, 42);
    }

    #[test]
    fn reason_zero_means_absent() {
        let mut rec = reset_record();
        rec.reason_plus1 = 0;
        let Event::Reset(r) = decode(&bytes_of(&rec)).unwrap() else {
            panic!()
        };
        assert_eq!(r.reason, None);
    }

    #[test]
    fn truncated_record_is_an_error() {
        let b = bytes_of(&reset_record());
        assert_eq!(
            decode(&b[..b.len() - 1]),
            Err(DecodeError::Truncated {
                kind: KIND_RESET,
                got: b.len() - 1,
                want: b.len()
            })
        );
        assert_eq!(decode(&[]), Err(DecodeError::Empty));
    }

    #[test]
    fn unknown_kind_is_an_error() {
        let mut b = bytes_of(&reset_record());
        b[0] = 200;
        assert_eq!(decode(&b), Err(DecodeError::UnknownKind { kind: 200 }));
    }

    #[test]
    fn misaligned_record_decodes() {
        let b = bytes_of(&reset_record());
        let mut shifted = vec![0u8; b.len() + 1];
        shifted[1..].copy_from_slice(&b);
        assert!(matches!(decode(&shifted[1..]), Ok(Event::Reset(_))));
    }

    #[test]
    fn ipv6_and_mapped_addresses() {
        let mut t = tuple4([0; 4], 443, [0; 4], 5000);
        t.family = AF_INET6;
        t.saddr = "::ffff:10.1.2.3".parse::<Ipv6Addr>().unwrap().octets();
        t.daddr = "fd00::1".parse::<Ipv6Addr>().unwrap().octets();
        let e = ends(&t);
        assert_eq!(e.local.to_string(), "10.1.2.3:443");
        assert_eq!(e.remote.to_string(), "[fd00::1]:5000");
    }

    #[test]
    fn comm_stops_at_nul() {
        let mut c = [0u8; COMM_LEN];
        c[..5].copy_from_slice(b"nginx");
        assert_eq!(comm(&c), "nginx");
        assert_eq!(comm(&[b'x'; COMM_LEN]), "x".repeat(COMM_LEN));
    }
}
