//! The Sender Rewriting Scheme (SRS) for forwarded mail.
//!
//! When an alias forwards a message from a remote sender to a remote
//! address, the envelope sender is rewritten to an address of the
//! forwarding (local) domain, so that SPF passes at the next hop and a
//! bounce comes back to us:
//!
//! ```text
//! SRS0=HHHHHHHH=TT=orig-domain=orig-local@forwarding-domain
//! ```
//!
//! `TT` is the day count (days since the Unix epoch, modulo 1024) in two
//! base32 characters, and `HHHHHHHH` the first 40 bits of
//! HMAC-SHA256(secret, TT, domain, local) in base32 — lower case, so that
//! the address survives the case folding of local parts. A sender that is
//! already an SRS address of another forwarder becomes an `SRS1` address
//! (`SRS1=HHHHHHHH=first-forwarder==HHH=TT=domain=local@us`), which
//! resolves back to the first forwarder's `SRS0` address.
//!
//! A bounce to one of our `SRS0`/`SRS1` addresses is accepted only with a
//! valid hash and, for `SRS0`, a timestamp at most [`MAX_AGE_DAYS`] old.
//!
//! The secret is 32 random bytes in `data_dir/srs/secret` (mode 0600),
//! created by queued on its first start; queued alone reads it.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ring::hmac;

/// How long a rewritten address stays valid for bounces.
pub const MAX_AGE_DAYS: u64 = 21;
/// Length of the secret file in bytes.
pub const SECRET_LEN: usize = 32;
/// Base32 characters of the hash (40 bits).
const HASH_CHARS: usize = 8;
/// RFC 4648 base32 alphabet, lower case.
const B32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// Errors loading or creating the secret.
#[derive(Debug, thiserror::Error)]
pub enum SrsError {
    /// The file could not be read or written.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// The file exists but does not hold a usable secret.
    #[error("{0}: {1}")]
    Bad(PathBuf, String),
}

/// Why an address that looks like ours does not reverse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReverseError {
    /// Not of the `SRS0=H=TT=domain=local` / `SRS1=H=host==…` form.
    #[error("malformed SRS address")]
    Malformed,
    /// The hash does not match our secret.
    #[error("bad SRS hash")]
    BadHash,
    /// Older than [`MAX_AGE_DAYS`] (or from the future).
    #[error("expired SRS address")]
    Expired,
}

/// An SRS signer and verifier.
pub struct Srs {
    key: hmac::Key,
}

/// Days since the Unix epoch for a Unix time.
pub fn day_number(unix: u64) -> u64 {
    unix / 86_400
}

fn timestamp(days: u64) -> String {
    let t = (days % 1024) as usize;
    let mut s = String::with_capacity(2);
    s.push(B32[t >> 5] as char);
    s.push(B32[t & 31] as char);
    s
}

fn parse_timestamp(tt: &str) -> Option<u64> {
    let b = tt.as_bytes();
    if b.len() != 2 {
        return None;
    }
    let val = |c: u8| B32.iter().position(|&x| x == c.to_ascii_lowercase()).map(|p| p as u64);
    Some(val(b[0])? << 5 | val(b[1])?)
}

fn base32(bytes: &[u8], chars: usize) -> String {
    let mut out = String::with_capacity(chars);
    let mut acc: u64 = 0;
    let mut bits = 0;
    for &b in bytes {
        acc = acc << 8 | b as u64;
        bits += 8;
        while bits >= 5 && out.len() < chars {
            bits -= 5;
            out.push(B32[((acc >> bits) & 31) as usize] as char);
        }
        if out.len() == chars {
            break;
        }
    }
    out
}

/// Whether `user` is an SRS local part (`SRS0=` or `SRS1=`, any case).
pub fn is_srs(user: &str) -> bool {
    let u = user.as_bytes();
    u.len() > 5 && u[..3].eq_ignore_ascii_case(b"srs") && (u[3] == b'0' || u[3] == b'1') && u[4] == b'='
}

fn eq_ct(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Srs {
    /// A signer with this secret.
    pub fn from_secret(secret: &[u8]) -> Srs {
        Srs {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// Read `dir/secret`, creating it (32 random bytes, mode 0600) when it
    /// does not exist.
    pub fn load_or_create(dir: &Path) -> Result<Srs, SrsError> {
        let path = dir.join("secret");
        match std::fs::read(&path) {
            Ok(bytes) if bytes.len() >= 16 => return Ok(Srs::from_secret(&bytes)),
            Ok(bytes) => {
                return Err(SrsError::Bad(
                    path,
                    format!("holds {} bytes; at least 16 are needed", bytes.len()),
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(SrsError::Io(path, e)),
        }
        let io = |e| SrsError::Io(path.clone(), e);
        std::fs::create_dir_all(dir).map_err(|e| SrsError::Io(dir.to_path_buf(), e))?;
        let mut secret = [0u8; SECRET_LEN];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
            .map_err(|_| SrsError::Bad(path.clone(), "no randomness available".into()))?;
        // Written under a temporary name and renamed: a crash never leaves
        // a short secret behind.
        let tmp = dir.join(format!("secret.tmp.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| SrsError::Io(tmp.clone(), e))?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        f.write_all(&secret).and_then(|_| f.sync_all()).map_err(io)?;
        drop(f);
        // Another process may have won the race: keep its secret.
        if std::fs::hard_link(&tmp, &path).is_err() {
            let _ = std::fs::remove_file(&tmp);
            let bytes = std::fs::read(&path).map_err(io)?;
            return Ok(Srs::from_secret(&bytes));
        }
        let _ = std::fs::remove_file(&tmp);
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        tracing::info!("{}: new SRS secret created", path.display());
        Ok(Srs::from_secret(&secret))
    }

    fn hash(&self, parts: &[&str]) -> String {
        let mut ctx = hmac::Context::with_key(&self.key);
        for p in parts {
            ctx.update(p.to_lowercase().as_bytes());
            ctx.update(&[0]);
        }
        base32(ctx.sign().as_ref(), HASH_CHARS)
    }

    /// The rewritten envelope sender for `sender` (`local@domain`, not
    /// empty) forwarded by `forwarding_domain` on day `days`.
    pub fn forward(&self, sender: &str, forwarding_domain: &str, days: u64) -> String {
        let (local, domain) = sender.rsplit_once('@').unwrap_or((sender, ""));
        if is_srs(local) {
            // SRS1: keep the first forwarder and its opaque part.
            let (host, rest) = if local.as_bytes()[3] == b'0' {
                // SRS0=opaque@host → host, "=opaque"
                (domain, &local[4..])
            } else {
                // SRS1=HHH=host==opaque@x → host, "=opaque"
                match local[5..].split_once('=').and_then(|(_, r)| r.split_once('=')) {
                    Some((h, rest)) if !h.is_empty() && rest.starts_with('=') => (h, rest),
                    _ => return self.srs0(local, domain, forwarding_domain, days),
                }
            };
            let h = self.hash(&[host, rest]);
            return format!("SRS1={h}={host}={rest}@{forwarding_domain}");
        }
        self.srs0(local, domain, forwarding_domain, days)
    }

    fn srs0(&self, local: &str, domain: &str, forwarding_domain: &str, days: u64) -> String {
        let tt = timestamp(days);
        let h = self.hash(&[&tt, domain, local]);
        format!("SRS0={h}={tt}={domain}={local}@{forwarding_domain}")
    }

    /// The address an SRS local part of ours stands for, checked on day
    /// `days`. `Ok(None)`: not an SRS address at all.
    pub fn reverse(&self, user: &str, days: u64) -> Result<Option<String>, ReverseError> {
        if !is_srs(user) {
            return Ok(None);
        }
        if user.as_bytes()[3] == b'0' {
            let mut it = user[5..].splitn(4, '=');
            let (Some(h), Some(tt), Some(domain), Some(local)) = (it.next(), it.next(), it.next(), it.next()) else {
                return Err(ReverseError::Malformed);
            };
            if domain.is_empty() || local.is_empty() {
                return Err(ReverseError::Malformed);
            }
            let then = parse_timestamp(tt).ok_or(ReverseError::Malformed)?;
            if !eq_ct(
                h.to_ascii_lowercase().as_bytes(),
                self.hash(&[tt, domain, local]).as_bytes(),
            ) {
                return Err(ReverseError::BadHash);
            }
            let age = (days % 1024 + 1024 - then) % 1024;
            if age > MAX_AGE_DAYS {
                return Err(ReverseError::Expired);
            }
            Ok(Some(format!("{local}@{domain}")))
        } else {
            let mut it = user[5..].splitn(3, '=');
            let (Some(h), Some(host), Some(rest)) = (it.next(), it.next(), it.next()) else {
                return Err(ReverseError::Malformed);
            };
            // `rest` is "=opaque" (the separator that followed SRS0).
            if host.is_empty() || !rest.starts_with('=') || rest.len() < 2 || rest[1..].starts_with('=') {
                return Err(ReverseError::Malformed);
            }
            if !eq_ct(h.to_ascii_lowercase().as_bytes(), self.hash(&[host, rest]).as_bytes()) {
                return Err(ReverseError::BadHash);
            }
            Ok(Some(format!("SRS0{rest}@{host}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 20_000;

    #[test]
    fn round_trip_srs0() {
        let s = Srs::from_secret(b"0123456789abcdef0123456789abcdef");
        let f = s.forward("joe+x@far.test", "fwd.test", DAY);
        let (user, dom) = f.rsplit_once('@').unwrap();
        assert_eq!(dom, "fwd.test");
        assert!(user.starts_with("SRS0="), "{f}");
        assert!(user.ends_with("=far.test=joe+x"), "{f}");
        assert_eq!(user.split('=').nth(1).unwrap().len(), HASH_CHARS);
        assert_eq!(s.reverse(user, DAY), Ok(Some("joe+x@far.test".into())));
        // Case folding of the local part does not matter.
        assert_eq!(
            s.reverse(&user.to_lowercase(), DAY + 21),
            Ok(Some("joe+x@far.test".into()))
        );
        assert_eq!(s.reverse(user, DAY + 22), Err(ReverseError::Expired));
        assert_eq!(s.reverse(user, DAY - 1), Err(ReverseError::Expired));
        // Another secret, a changed address, a changed timestamp.
        let other = Srs::from_secret(b"another secret, another hash....");
        assert_eq!(other.reverse(user, DAY), Err(ReverseError::BadHash));
        let forged = user.replace("joe+x", "admin");
        assert_eq!(s.reverse(&forged, DAY), Err(ReverseError::BadHash));
        let tt = timestamp(DAY);
        let shifted = user.replace(&format!("={tt}="), &format!("={}=", timestamp(DAY + 1)));
        assert_eq!(s.reverse(&shifted, DAY + 1), Err(ReverseError::BadHash));
        // A local part with '=' in it survives.
        let f = s.forward("a=b@far.test", "fwd.test", DAY);
        assert_eq!(
            s.reverse(f.rsplit_once('@').unwrap().0, DAY),
            Ok(Some("a=b@far.test".into()))
        );
    }

    #[test]
    fn timestamps_wrap() {
        assert_eq!(parse_timestamp(&timestamp(1023)), Some(1023));
        assert_eq!(parse_timestamp(&timestamp(1024)), Some(0));
        let s = Srs::from_secret(b"k");
        let f = s.forward("a@b.test", "f.test", 1020);
        assert!(s.reverse(f.rsplit_once('@').unwrap().0, 1030).unwrap().is_some());
    }

    #[test]
    fn srs1_chain() {
        let first = Srs::from_secret(b"first forwarder secret..........");
        let us = Srs::from_secret(b"our secret......................");
        let srs0 = first.forward("joe@far.test", "one.test", DAY);
        let srs1 = us.forward(&srs0, "two.test", DAY);
        let opaque = &srs0.rsplit_once('@').unwrap().0[4..];
        assert!(srs1.starts_with("SRS1="), "{srs1}");
        assert!(srs1.ends_with(&format!("=one.test={opaque}@two.test")), "{srs1}");
        let user = srs1.rsplit_once('@').unwrap().0;
        assert_eq!(us.reverse(user, DAY), Ok(Some(srs0.clone())));
        assert_eq!(first.reverse(user, DAY), Err(ReverseError::BadHash));
        // Forwarding an SRS1 address again keeps the first forwarder.
        let third = Srs::from_secret(b"third");
        let again = third.forward(&srs1, "three.test", DAY);
        assert!(again.ends_with(&format!("=one.test={opaque}@three.test")), "{again}");
        assert_eq!(third.reverse(again.rsplit_once('@').unwrap().0, DAY), Ok(Some(srs0)));
    }

    #[test]
    fn malformed_and_not_srs() {
        let s = Srs::from_secret(b"k");
        assert_eq!(s.reverse("alice", DAY), Ok(None));
        assert_eq!(s.reverse("srs0", DAY), Ok(None));
        assert_eq!(s.reverse("SRS2=x", DAY), Ok(None));
        for bad in [
            "SRS0=x",
            "SRS0=hash=tt=dom",
            "SRS0=hash=t=dom=loc",
            "SRS0=hash=!!=dom=loc",
            "SRS0=hash=aa==loc",
            "SRS1=hash",
            "SRS1=hash=host",
            "SRS1=hash==x",
        ] {
            assert!(s.reverse(bad, DAY).is_err(), "{bad}");
        }
    }

    #[test]
    fn secret_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("srs");
        let a = Srs::load_or_create(&d).unwrap();
        let meta = std::fs::metadata(d.join("secret")).unwrap();
        assert_eq!(meta.len(), SECRET_LEN as u64);
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let b = Srs::load_or_create(&d).unwrap();
        let f = a.forward("x@y.test", "z.test", DAY);
        assert!(b.reverse(f.rsplit_once('@').unwrap().0, DAY).unwrap().is_some());
        std::fs::write(d.join("secret"), b"short").unwrap();
        let e = Srs::load_or_create(&d).err().unwrap().to_string();
        assert!(e.contains("secret: holds 5 bytes"), "{e}");
    }

    #[test]
    fn base32_bits() {
        assert_eq!(base32(&[0xff, 0xff, 0xff, 0xff, 0xff], 8), "77777777");
        assert_eq!(base32(&[0, 0, 0, 0, 0], 8), "aaaaaaaa");
        assert_eq!(base32(b"f", 1), "m");
    }
}
