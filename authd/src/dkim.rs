//! DKIM signing (RFC 6376, RFC 8463). authd is the only process that
//! reads the private keys (`domains/<domain>/dkim:<selector>.pem`); queued
//! sends the header section of a message and the hash of its body, and
//! gets back one `DKIM-Signature` header per key of the domain.
//!
//! Every signature is relaxed/relaxed with SHA-256, signs the headers in
//! [`SIGNED_HEADERS`] (From twice, so that no second From can be added
//! without breaking the signature; any listed header the message lacks is
//! signed as absent, so it cannot be added either) and carries `t=`.

use std::collections::HashMap;

use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256, SigningKey};
use mail_auth::common::headers::{HeaderStream, HeaderWriter, Writable, Writer};
use mail_auth::dkim::canonicalize::CanonicalHeaders;
use mail_auth::dkim::{Canonicalization, Signature};
use rustls_pki_types::PrivateKeyDer;
use tambo_common::dkimkey::{self, KeyAlgo};
use tambo_ipc::secrets::{SecretKind, SecretSet};

/// The header fields signed, in this order.
pub const SIGNED_HEADERS: &[&str] = &[
    "From",
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
];

/// Largest header section authd accepts to sign.
pub const MAX_HEADERS: usize = 256 * 1024;

/// Why a message could not be signed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignError {
    /// The body hash is not a SHA-256 value.
    #[error("body hash must be 32 bytes")]
    BadBodyHash,
    /// Header section too large.
    #[error("header section larger than {MAX_HEADERS} bytes")]
    TooLarge,
    /// Two From headers or more: which one the signature vouches for
    /// would be ambiguous (RFC 6376 §5.4, and DMARC refuses such mail).
    #[error("the message has more than one From header")]
    From,
    /// The crypto library failed.
    #[error("signing failed: {0}")]
    Crypto(String),
}

pub(crate) enum Key {
    Rsa(RsaKey<Sha256>),
    Ed25519(Ed25519Key),
}

impl Key {
    /// Sign `input` (hashed with SHA-256).
    pub(crate) fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        match self {
            Key::Rsa(r) => r.sign(input),
            Key::Ed25519(e) => e.sign(input),
        }
    }
}

struct DomainKey {
    selector: String,
    key: Key,
}

/// The keys of every local domain.
#[derive(Default)]
pub struct DkimKeys {
    by_domain: HashMap<String, Vec<DomainKey>>,
}

impl DkimKeys {
    /// Load every `dkim:*.pem` the supervisor opened (sorted by selector
    /// within each domain); a key that does not load is an error naming
    /// its file.
    pub fn load(secrets: &SecretSet) -> anyhow::Result<DkimKeys> {
        let mut by_domain: HashMap<String, Vec<DomainKey>> = HashMap::new();
        for f in secrets.files() {
            let SecretKind::DkimKey { domain, selector } = &f.kind else {
                continue;
            };
            let (path, pem) = secrets.read(&f.kind).expect("listed")?;
            let parsed = dkimkey::parse_key(&path, &pem)?;
            let (domain, selector) = (domain.clone(), selector.clone());
            let fail = |e: mail_auth::Error| anyhow::anyhow!("{}: {e}", path.display());
            let key = match (parsed.algo, parsed.der) {
                (KeyAlgo::Ed25519, PrivateKeyDer::Pkcs8(p8)) => {
                    Key::Ed25519(Ed25519Key::from_pkcs8_maybe_unchecked_der(p8.secret_pkcs8_der()).map_err(fail)?)
                }
                (KeyAlgo::Rsa, der) => Key::Rsa(RsaKey::<Sha256>::from_key_der(der).map_err(fail)?),
                (KeyAlgo::Ed25519, _) => anyhow::bail!("{}: Ed25519 keys must be PKCS#8", path.display()),
            };
            by_domain.entry(domain).or_default().push(DomainKey { selector, key });
        }
        Ok(DkimKeys { by_domain })
    }

    /// The first RSA key of `domain` (by selector) and its selector: the
    /// key ARC seals with (RFC 8617 allows only rsa-sha256).
    pub(crate) fn rsa_key(&self, domain: &str) -> Option<(&str, &Key)> {
        self.by_domain
            .get(domain)?
            .iter()
            .find(|k| matches!(k.key, Key::Rsa(_)))
            .map(|k| (k.selector.as_str(), &k.key))
    }

    /// Number of keys loaded.
    pub fn len(&self) -> usize {
        self.by_domain.values().map(Vec::len).sum()
    }

    /// Sign: one header per key of `domain` (none when it has no key).
    pub fn sign(&self, domain: &str, headers: &[u8], body_hash: &[u8], now: u64) -> Result<Vec<String>, SignError> {
        let Some(keys) = self.by_domain.get(domain) else {
            return Ok(Vec::new());
        };
        if body_hash.len() != 32 {
            return Err(SignError::BadBodyHash);
        }
        if headers.len() > MAX_HEADERS {
            return Err(SignError::TooLarge);
        }
        let froms = HeaderBlock::new(headers)
            .filter(|(n, _)| n.eq_ignore_ascii_case(b"from"))
            .count();
        // Without a From, it is signed as absent (as chasquid signs such
        // mail): adding one later breaks the signature.
        if froms > 1 {
            return Err(SignError::From);
        }
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            let template = Signature {
                v: 1,
                a: match &k.key {
                    Key::Rsa(r) => r.algorithm(),
                    Key::Ed25519(e) => e.algorithm(),
                },
                d: domain.to_string(),
                s: k.selector.clone(),
                h: SIGNED_HEADERS.iter().map(|h| h.to_string()).collect(),
                ch: Canonicalization::Relaxed,
                cb: Canonicalization::Relaxed,
                ..Default::default()
            };
            let (_, canonical, signed, _) = template.canonicalize(HeaderBlock::new(headers));
            let mut sig = template.clone();
            sig.bh = body_hash.to_vec();
            sig.t = now;
            sig.h = signed;
            let input = Signable {
                headers: canonical,
                signature: &sig,
            };
            let b = match &k.key {
                Key::Rsa(r) => r.sign(input),
                Key::Ed25519(e) => e.sign(input),
            }
            .map_err(|e| SignError::Crypto(e.to_string()))?;
            sig.b = b;
            let mut h = sig.to_header();
            if !h.ends_with("\r\n") {
                h.push_str("\r\n");
            }
            out.push(h);
        }
        Ok(out)
    }
}

/// What the signature covers: the selected headers, then the
/// DKIM-Signature header itself with an empty `b=`.
struct Signable<'a> {
    headers: CanonicalHeaders<'a>,
    signature: &'a Signature,
}

impl Writable for Signable<'_> {
    fn write(self, writer: &mut impl Writer) {
        self.headers.write(writer);
        self.signature.write(writer, false);
    }
}

/// The header fields of a header section: (name, value) where the value
/// runs from after the colon to the end of the field's last line,
/// including its CRLF (what DKIM canonicalization expects). A line without
/// a colon ends the section.
pub struct HeaderBlock<'x> {
    data: &'x [u8],
    pos: usize,
}

impl<'x> HeaderBlock<'x> {
    /// Iterate over `data`.
    pub fn new(data: &'x [u8]) -> HeaderBlock<'x> {
        HeaderBlock { data, pos: 0 }
    }
}

impl<'x> Iterator for HeaderBlock<'x> {
    type Item = (&'x [u8], &'x [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.data.get(self.pos..)?;
        if rest.is_empty() || rest.starts_with(b"\r\n") || rest[0] == b' ' || rest[0] == b'\t' {
            return None;
        }
        let line_end = |from: usize| {
            rest[from..]
                .windows(2)
                .position(|w| w == b"\r\n")
                .map(|p| from + p + 2)
                .unwrap_or(rest.len())
        };
        let mut end = line_end(0);
        let colon = rest[..end].iter().position(|&b| b == b':')?;
        while end < rest.len() && (rest[end] == b' ' || rest[end] == b'\t') {
            end = line_end(end);
        }
        self.pos += end;
        Some((&rest[..colon], &rest[colon + 1..end]))
    }
}

impl<'x> HeaderStream<'x> for HeaderBlock<'x> {
    fn next_header(&mut self) -> Option<(&'x [u8], &'x [u8])> {
        self.next()
    }

    fn body(&mut self) -> &'x [u8] {
        b""
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use mail_auth::common::crypto::HashContext;
    use mail_auth::common::crypto::HashImpl;
    use mail_auth::dkim::canonicalize::BodyHasher;
    use std::path::Path;

    const MSG_HEADERS: &str = "From: Alice <alice@example.com>\r\nTo: bob@example.net\r\n\
        Subject:  Hello   there\r\n\tfolded\r\nDate: Thu, 1 Jan 2026 00:00:00 +0000\r\n\
        Message-ID: <1@example.com>\r\n";
    const BODY: &str = "Hi Bob.\r\n\r\nA line with trailing spaces   \r\n\r\n\r\n";

    fn body_hash(body: &[u8]) -> Vec<u8> {
        let mut h = BodyHasher::new(Sha256::hasher(), Canonicalization::Relaxed, 0);
        h.write(body);
        h.finish().0.complete().as_ref().to_vec()
    }

    /// The keys of `domains/` in `dir`, as the supervisor hands them over.
    pub(crate) fn keys_in(dir: &Path, domains: &[&str]) -> anyhow::Result<DkimKeys> {
        let dirs: Vec<(String, String)> = domains.iter().map(|d| (d.to_string(), d.to_string())).collect();
        std::fs::create_dir_all(dir.join("certs")).unwrap();
        DkimKeys::load(&SecretSet::open(dir, &dirs, "").map_err(anyhow::Error::msg)?)
    }

    fn write_key(dir: &Path, domain: &str, selector: &str, pem: &str) {
        let d = dir.join("domains").join(domain);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("dkim:{selector}.pem")), pem).unwrap();
    }

    fn ed25519_pem() -> String {
        dkimkey::generate(KeyAlgo::Ed25519, 0).unwrap()
    }

    #[test]
    fn header_block() {
        let h: Vec<_> = HeaderBlock::new(MSG_HEADERS.as_bytes()).collect();
        assert_eq!(h.len(), 5);
        assert_eq!(h[2].0, b"Subject");
        assert_eq!(h[2].1, b"  Hello   there\r\n\tfolded\r\n");
        let odd: Vec<_> = HeaderBlock::new(b"A: 1\r\nnot a header\r\nB: 2\r\n").collect();
        assert_eq!(odd.len(), 1);
    }

    #[test]
    fn no_key_no_signature_and_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        write_key(dir.path(), "example.com", "s1", &ed25519_pem());
        let keys = keys_in(dir.path(), &["example.com", "other.org"]).unwrap();
        assert_eq!(keys.len(), 1);
        let bh = body_hash(BODY.as_bytes());
        assert!(
            keys.sign("other.org", MSG_HEADERS.as_bytes(), &bh, 1)
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            keys.sign("example.com", MSG_HEADERS.as_bytes(), &bh[..5], 1),
            Err(SignError::BadBodyHash)
        );
        assert_eq!(
            keys.sign("example.com", b"From: a@b\r\nFrom: c@d\r\nTo: x@y\r\n", &bh, 1),
            Err(SignError::From)
        );
        // No From at all: signed, with From in h= (signed as absent).
        let sigs = keys.sign("example.com", b"To: x@y\r\n", &bh, 1).unwrap();
        assert_eq!(sigs.len(), 1);
        assert!(sigs[0].to_ascii_lowercase().contains("from:from"), "{}", sigs[0]);
    }

    #[test]
    fn broken_key_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        write_key(
            dir.path(),
            "example.com",
            "bad",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        );
        let err = keys_in(dir.path(), &["example.com"]).err().unwrap();
        assert!(format!("{err:#}").contains("dkim:bad.pem"), "{err:#}");
    }

    /// Sign with an RSA and an Ed25519 key and have python3-dkim (an
    /// independent implementation) verify both signatures.
    #[test]
    fn python_dkim_verifies_our_signatures() {
        if !Path::new("/usr/lib/python3/dist-packages/dkim/__init__.py").exists() {
            eprintln!("python3-dkim not installed: skipping (scripts/test installs it)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        write_key(dir.path(), "example.com", "ed", &ed25519_pem());
        let rsa_pem = dkimkey::generate(KeyAlgo::Rsa, 2048).unwrap();
        write_key(dir.path(), "example.com", "rsa", &rsa_pem);
        let keys = keys_in(dir.path(), &["example.com"]).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let sigs = keys
            .sign("example.com", MSG_HEADERS.as_bytes(), &body_hash(BODY.as_bytes()), now)
            .unwrap();
        assert_eq!(sigs.len(), 2);
        assert!(sigs[0].contains("a=ed25519-sha256") && sigs[0].contains("s=ed"));
        assert!(sigs[1].contains("a=rsa-sha256") && sigs[1].contains("s=rsa"));
        let mut records = String::new();
        for sel in ["ed", "rsa"] {
            let k = dkimkey::load_key(&dkimkey::key_path(dir.path(), "example.com", sel)).unwrap();
            records.push_str(&format!("{sel}\t{}\n", dkimkey::dns_record(k.algo, &k.public)));
        }
        let msg = format!("{}{}{MSG_HEADERS}\r\n{BODY}", sigs[0], sigs[1]);
        let verify = |message: &str| {
            let script = "import sys, dkim\n\
                 recs = dict(l.split('\\t', 1) for l in open(sys.argv[1]).read().splitlines())\n\
                 def dns(name, timeout=5):\n\
                 \x20   return recs[name.decode().split('.')[0]].encode()\n\
                 msg = sys.stdin.buffer.read()\n\
                 d = dkim.DKIM(msg)\n\
                 def v(i):\n\
                 \x20   try:\n\
                 \x20       return d.verify(idx=i, dnsfunc=dns)\n\
                 \x20   except dkim.DKIMException:\n\
                 \x20       return False\n\
                 print(' '.join(str(v(i)) for i in range(2)))\n";
            let recfile = dir.path().join("records");
            std::fs::write(&recfile, &records).unwrap();
            crate::python::run(script, &recfile, message.as_bytes())
        };
        assert_eq!(verify(&msg), "True True");
        // Tampering with the body or a signed header breaks both.
        assert_eq!(verify(&msg.replace("Hi Bob.", "Hi Eve.")), "False False");
        assert_eq!(verify(&msg.replace("To: bob@", "To: eve@")), "False False");
        // A second From added later breaks them too (From is oversigned).
        let two_from = msg.replace("From: Alice", "From: Mallory <m@evil.example>\r\nFrom: Alice");
        assert_eq!(verify(&two_from), "False False");
        // A message without From (chasquid signs those too): valid, and
        // adding a From breaks it.
        let no_from = MSG_HEADERS.replace("From: Alice <alice@example.com>\r\n", "");
        let sigs = keys
            .sign("example.com", no_from.as_bytes(), &body_hash(BODY.as_bytes()), now)
            .unwrap();
        let msg = format!("{}{}{no_from}\r\n{BODY}", sigs[0], sigs[1]);
        assert_eq!(verify(&msg), "True True");
        let added = msg.replace("To: bob@", "From: m@evil.example\r\nTo: bob@");
        assert_eq!(verify(&added), "False False");
    }
}
