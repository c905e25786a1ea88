//! The HAProxy PROXY protocol, versions 1 (text) and 2 (binary), read at
//! the very start of a connection when `haproxy_incoming` is set: before
//! the greeting, and before the TLS handshake on the implicit-TLS port.
//!
//! Reads are exact: not one byte past the header is consumed, so what
//! follows (SMTP commands, a TLS ClientHello) is left in the socket for the
//! session. Memory is bounded: a v1 line is at most 107 bytes; a v2 header
//! keeps at most the 216-byte address block and discards any TLVs in small
//! pieces.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The 12-byte signature that starts a v2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 header, CRLF included (from the specification).
pub const V1_MAX: usize = 107;

/// Why a PROXY header was refused; the connection is then closed without
/// a reply.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Nothing (complete) arrived in time.
    #[error("timeout waiting for the PROXY header")]
    Timeout,
    /// The peer closed the connection before a full header.
    #[error("connection closed inside the PROXY header")]
    Eof,
    /// The connection does not start with a PROXY header.
    #[error("no PROXY header (connection starts with {0:?})")]
    Missing(String),
    /// A header that does not follow the specification.
    #[error("malformed PROXY header: {0}")]
    Malformed(&'static str),
    /// Socket error.
    #[error("reading the PROXY header: {0}")]
    Io(std::io::Error),
}

fn io_err(e: std::io::Error) -> ProxyError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        ProxyError::Eof
    } else {
        ProxyError::Io(e)
    }
}

/// Read a PROXY v1 or v2 header from the start of `stream`, within
/// `timeout`. Returns the original client's address, or `None` when the
/// header says the connection carries no client address (v1 `UNKNOWN`,
/// v2 `LOCAL` such as a health check, or an unspecified / Unix family): the
/// connection's own peer address is then used.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> Result<Option<SocketAddr>, ProxyError> {
    tokio::time::timeout(timeout, read_header_inner(stream))
        .await
        .map_err(|_| ProxyError::Timeout)?
}

async fn read_header_inner<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Option<SocketAddr>, ProxyError> {
    // Both versions are longer than 8 bytes ("PROXY UNKNOWN\r\n" is 15).
    let mut head = [0u8; 8];
    stream.read_exact(&mut head).await.map_err(io_err)?;
    if &head[..6] == b"PROXY " {
        let mut line = Vec::with_capacity(V1_MAX);
        line.extend_from_slice(&head);
        // Byte by byte, so nothing after the CRLF is consumed.
        loop {
            if line.len() >= V1_MAX {
                return Err(ProxyError::Malformed("v1 line longer than 107 bytes"));
            }
            let b = stream.read_u8().await.map_err(io_err)?;
            line.push(b);
            if b == b'\n' {
                break;
            }
        }
        return parse_v1(&line);
    }
    if head[..] == V2_SIGNATURE[..8] {
        let mut rest = [0u8; 8];
        stream.read_exact(&mut rest).await.map_err(io_err)?;
        if rest[..4] != V2_SIGNATURE[8..] {
            return Err(ProxyError::Malformed("bad v2 signature"));
        }
        let mut fixed = [0u8; 16];
        fixed[..8].copy_from_slice(&head);
        fixed[8..].copy_from_slice(&rest);
        let len = u16::from_be_bytes([fixed[14], fixed[15]]) as usize;
        // Keep the address block (at most 216 bytes, AF_UNIX), discard TLVs.
        let keep = len.min(216);
        let mut body = vec![0u8; keep];
        stream.read_exact(&mut body).await.map_err(io_err)?;
        let mut skip = len - keep;
        let mut scratch = [0u8; 256];
        while skip > 0 {
            let n = skip.min(scratch.len());
            stream.read_exact(&mut scratch[..n]).await.map_err(io_err)?;
            skip -= n;
        }
        return parse_v2(&fixed, &body, len);
    }
    Err(ProxyError::Missing(String::from_utf8_lossy(&head).into_owned()))
}

/// Parse a complete v1 line (ending in CRLF).
pub fn parse_v1(line: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
    let line = line
        .strip_suffix(b"\r\n")
        .ok_or(ProxyError::Malformed("v1 line does not end in CRLF"))?;
    let line = std::str::from_utf8(line).map_err(|_| ProxyError::Malformed("v1 line is not ASCII"))?;
    if !line.is_ascii() || line.contains(['\r', '\n']) {
        return Err(ProxyError::Malformed("v1 line is not ASCII"));
    }
    let mut words = line.split(' ');
    if words.next() != Some("PROXY") {
        return Err(ProxyError::Malformed("v1 line does not start with PROXY"));
    }
    let proto = words.next().ok_or(ProxyError::Malformed("v1 protocol missing"))?;
    if proto == "UNKNOWN" {
        // The rest of the line is to be ignored.
        return Ok(None);
    }
    let fields: Vec<&str> = words.collect();
    let [src, dst, sport, dport] = fields[..] else {
        return Err(ProxyError::Malformed("v1 line needs 4 address fields"));
    };
    let (src, dst): (IpAddr, IpAddr) = match proto {
        "TCP4" => (IpAddr::V4(parse_v4(src)?), IpAddr::V4(parse_v4(dst)?)),
        "TCP6" => (
            IpAddr::V6(
                src.parse::<Ipv6Addr>()
                    .map_err(|_| ProxyError::Malformed("bad v1 IPv6 address"))?,
            ),
            IpAddr::V6(
                dst.parse::<Ipv6Addr>()
                    .map_err(|_| ProxyError::Malformed("bad v1 IPv6 address"))?,
            ),
        ),
        _ => return Err(ProxyError::Malformed("v1 protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    let _ = dst;
    let sport = parse_port(sport)?;
    parse_port(dport)?;
    Ok(Some(SocketAddr::new(src, sport)))
}

fn parse_v4(s: &str) -> Result<Ipv4Addr, ProxyError> {
    s.parse::<Ipv4Addr>()
        .map_err(|_| ProxyError::Malformed("bad v1 IPv4 address"))
}

fn parse_port(s: &str) -> Result<u16, ProxyError> {
    let ok =
        !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if !ok {
        return Err(ProxyError::Malformed("bad v1 port"));
    }
    s.parse::<u16>().map_err(|_| ProxyError::Malformed("bad v1 port"))
}

/// Parse a v2 header: the 16 fixed bytes, the start of the address block
/// (at most 216 bytes kept) and the announced length.
pub fn parse_v2(fixed: &[u8; 16], body: &[u8], len: usize) -> Result<Option<SocketAddr>, ProxyError> {
    if fixed[..12] != V2_SIGNATURE {
        return Err(ProxyError::Malformed("bad v2 signature"));
    }
    let ver_cmd = fixed[12];
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::Malformed("v2 version is not 2"));
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(ProxyError::Malformed("v2 command is neither LOCAL nor PROXY")),
    };
    let fam = fixed[13];
    let (family, transport) = (fam >> 4, fam & 0x0f);
    if family > 3 || transport > 2 {
        return Err(ProxyError::Malformed("v2 unknown address family or transport"));
    }
    let need = match family {
        1 => 12,
        2 => 36,
        3 => 216,
        _ => 0,
    };
    if len < need {
        return Err(ProxyError::Malformed("v2 address block shorter than its family needs"));
    }
    if local {
        // Health checks and the like: the proxy speaks for itself.
        return Ok(None);
    }
    match family {
        1 | 2 if transport != 1 => Err(ProxyError::Malformed("v2 transport is not STREAM")),
        1 => {
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            let port = u16::from_be_bytes([body[8], body[9]]);
            Ok(Some(SocketAddr::new(IpAddr::V4(ip), port)))
        }
        2 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&body[..16]);
            let port = u16::from_be_bytes([body[32], body[33]]);
            Ok(Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a)), port)))
        }
        // AF_UNSPEC or AF_UNIX: no IP to use.
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Feed `input` and read a header; also return what is left unread.
    async fn read(input: &[u8]) -> (Result<Option<SocketAddr>, ProxyError>, Vec<u8>) {
        let (mut client, mut server) = tokio::io::duplex(1 << 17);
        client.write_all(input).await.unwrap();
        drop(client);
        let r = read_header(&mut server, Duration::from_secs(5)).await;
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        (r, rest)
    }

    fn v2(cmd: u8, fam: u8, addr: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(cmd);
        h.push(fam);
        h.extend_from_slice(&((addr.len() + tlvs.len()) as u16).to_be_bytes());
        h.extend_from_slice(addr);
        h.extend_from_slice(tlvs);
        h
    }

    #[tokio::test]
    async fn v1_tcp4_and_tcp6() {
        let (r, rest) = read(b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 25\r\nEHLO x\r\n").await;
        assert_eq!(r.unwrap(), Some("192.0.2.7:56324".parse().unwrap()));
        assert_eq!(rest, b"EHLO x\r\n", "nothing after the header is consumed");
        let (r, rest) = read(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n\x16\x03").await;
        assert_eq!(r.unwrap(), Some("[2001:db8::1]:1".parse().unwrap()));
        assert_eq!(rest, b"\x16\x03");
    }

    #[tokio::test]
    async fn v1_unknown() {
        let (r, rest) = read(b"PROXY UNKNOWN\r\nQUIT\r\n").await;
        assert_eq!(r.unwrap(), None);
        assert_eq!(rest, b"QUIT\r\n");
        let (r, _) = read(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n").await;
        assert_eq!(r.unwrap(), None);
    }

    #[tokio::test]
    async fn v1_malformed() {
        for bad in [
            &b"PROXY TCP4 192.0.2.7 198.51.100.1 56324\r\n"[..],
            b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 25 extra\r\n",
            b"PROXY TCP4 2001:db8::1 198.51.100.1 1 2\r\n",
            b"PROXY TCP6 192.0.2.7 2001:db8::2 1 2\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 65536 25\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 025 25\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 -1 25\r\n",
            b"PROXY TCP4  192.0.2.7 198.51.100.1 1 25\r\n",
            b"PROXY UDP4 192.0.2.7 198.51.100.1 1 25\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 1 25\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 1 25\r\r\n",
            b"PROXY TCP4 192.0.2.\xff 198.51.100.1 1 25\r\n",
        ] {
            let (r, _) = read(bad).await;
            assert!(
                matches!(r, Err(ProxyError::Malformed(_))),
                "{:?}: {r:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[tokio::test]
    async fn v1_too_long_is_bounded() {
        let mut line = b"PROXY UNKNOWN ".to_vec();
        line.extend(std::iter::repeat_n(b'a', 200));
        line.extend_from_slice(b"\r\n");
        let (r, rest) = read(&line).await;
        assert!(matches!(r, Err(ProxyError::Malformed(_))), "{r:?}");
        // It stopped reading at 107 bytes.
        assert_eq!(rest.len(), line.len() - V1_MAX);
    }

    #[tokio::test]
    async fn missing_truncated_and_timeout() {
        let (r, _) = read(b"EHLO client.example\r\n").await;
        assert!(matches!(r, Err(ProxyError::Missing(_))), "{r:?}");
        let (r, _) = read(b"PROXY TCP4 1.2.3.4").await;
        assert!(matches!(r, Err(ProxyError::Eof)), "{r:?}");
        let (r, _) = read(b"PRO").await;
        assert!(matches!(r, Err(ProxyError::Eof)), "{r:?}");
        // A client that waits for a greeting never gets one.
        let (_client, mut server) = tokio::io::duplex(64);
        let r = read_header(&mut server, Duration::from_millis(50)).await;
        assert!(matches!(r, Err(ProxyError::Timeout)), "{r:?}");
    }

    #[tokio::test]
    async fn v2_inet_inet6_with_tlvs() {
        let addr4 = [192, 0, 2, 9, 198, 51, 100, 1, 0x1f, 0x90, 0, 25];
        let tlvs = [0x04, 0x00, 0x03, b'a', b'b', b'c'];
        let mut input = v2(0x21, 0x11, &addr4, &tlvs);
        input.extend_from_slice(b"EHLO x\r\n");
        let (r, rest) = read(&input).await;
        assert_eq!(r.unwrap(), Some("192.0.2.9:8080".parse().unwrap()));
        assert_eq!(rest, b"EHLO x\r\n");

        let mut addr6 = Vec::new();
        addr6.extend_from_slice(&"2001:db8::5".parse::<Ipv6Addr>().unwrap().octets());
        addr6.extend_from_slice(&"2001:db8::6".parse::<Ipv6Addr>().unwrap().octets());
        addr6.extend_from_slice(&[0, 7, 0, 25]);
        let (r, rest) = read(&v2(0x21, 0x21, &addr6, &[])).await;
        assert_eq!(r.unwrap(), Some("[2001:db8::5]:7".parse().unwrap()));
        assert!(rest.is_empty());

        // A large TLV section (up to 64 KiB) is skipped, not stored.
        let big = vec![0xEEu8; 60_000];
        let mut input = v2(0x21, 0x11, &addr4, &big);
        input.extend_from_slice(b"after");
        let (r, rest) = read(&input).await;
        assert_eq!(r.unwrap(), Some("192.0.2.9:8080".parse().unwrap()));
        assert_eq!(rest, b"after");
    }

    #[tokio::test]
    async fn v2_local_unspec_unix() {
        // LOCAL (health check) with no address.
        let (r, rest) = read(&[v2(0x20, 0x00, &[], &[]), b"QUIT\r\n".to_vec()].concat()).await;
        assert_eq!(r.unwrap(), None);
        assert_eq!(rest, b"QUIT\r\n");
        // LOCAL even with an address block: the address is ignored.
        let (r, _) = read(&v2(0x20, 0x11, &[1; 12], &[])).await;
        assert_eq!(r.unwrap(), None);
        // PROXY over AF_UNSPEC and AF_UNIX: no IP.
        let (r, _) = read(&v2(0x21, 0x00, &[], &[])).await;
        assert_eq!(r.unwrap(), None);
        let (r, _) = read(&v2(0x21, 0x31, &[0; 216], &[])).await;
        assert_eq!(r.unwrap(), None);
    }

    #[tokio::test]
    async fn v2_malformed() {
        let addr4 = [192, 0, 2, 9, 198, 51, 100, 1, 0, 1, 0, 25];
        for (what, bad) in [
            ("version 1", v2(0x11, 0x11, &addr4, &[])),
            ("command 2", v2(0x22, 0x11, &addr4, &[])),
            ("family 4", v2(0x21, 0x41, &addr4, &[])),
            ("transport 3", v2(0x21, 0x13, &addr4, &[])),
            ("UDP", v2(0x21, 0x12, &addr4, &[])),
            ("short INET", v2(0x21, 0x11, &addr4[..8], &[])),
            ("short INET6", v2(0x21, 0x21, &[0; 20], &[])),
        ] {
            let (r, _) = read(&bad).await;
            assert!(matches!(r, Err(ProxyError::Malformed(_))), "{what}: {r:?}");
        }
        // A broken signature after a good start.
        let mut bad = v2(0x21, 0x11, &addr4, &[]);
        bad[10] = b'X';
        let (r, _) = read(&bad).await;
        assert!(matches!(r, Err(ProxyError::Malformed(_))), "{r:?}");
        // A length longer than what is sent.
        let mut bad = v2(0x21, 0x11, &addr4, &[]);
        bad[15] = 40;
        let (r, _) = read(&bad).await;
        assert!(matches!(r, Err(ProxyError::Eof)), "{r:?}");
    }
}
