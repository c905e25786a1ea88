//! ARC sealing (RFC 8617) of messages that a local alias forwards to a
//! remote address. Like DKIM signing, queued sends the header section (as
//! it will leave, tambo's own headers included) and the relaxed body hash;
//! authd, which alone holds the keys, returns the new ARC set:
//! `ARC-Seal`, `ARC-Message-Signature` and `ARC-Authentication-Results`.
//!
//! - The key is the forwarding domain's first RSA DKIM key (by selector):
//!   RFC 8617 defines only rsa-sha256 for ARC.
//! - `cv=` comes from smtpd's verification at receipt: a message without
//!   ARC headers gets `i=1; cv=none`, one whose chain passed gets
//!   `i=n+1; cv=pass`. A chain that failed, or could not be verified (DNS
//!   temporary error, message too large), is not sealed: a set added to a
//!   failed chain cannot make it pass anywhere, and a `cv=fail` would end a
//!   chain that might be valid.
//! - At most [`MAX_INSTANCE`] sets: a chain that long is not extended.
//! - The message signature is relaxed/relaxed over [`AMS_HEADERS`] (listed
//!   headers that are absent are signed as absent) with `t=`.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use mail_auth::common::headers::{Writable, Writer};
use mail_auth::dkim::canonicalize::CanonicalHeaders;
use mail_auth::dkim::{Canonicalization, Signature};
use tambo_ipc::proto::ArcChain;

use crate::dkim::{DkimKeys, HeaderBlock, MAX_HEADERS};

/// Header fields the ARC-Message-Signature covers.
pub const AMS_HEADERS: &[&str] = &[
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
    "DKIM-Signature",
];

/// Highest ARC instance number (RFC 8617 §4.2.1).
pub const MAX_INSTANCE: u32 = 50;

/// Largest Authentication-Results value copied into the new set.
const MAX_RESULTS: usize = 16 * 1024;

/// Why a message could not be sealed because of an error (as opposed to
/// a message that is, by policy, not sealed: [`Sealed::Skipped`]).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    /// The body hash is not a SHA-256 value.
    #[error("body hash must be 32 bytes")]
    BadBodyHash,
    /// The results text is not a header value.
    #[error("the authentication results are not a valid header value")]
    BadResults,
    /// The crypto library failed.
    #[error("signing failed: {0}")]
    Crypto(String),
}

/// The outcome of a seal request.
#[derive(Debug, PartialEq, Eq)]
pub enum Sealed {
    /// The three header fields, to prepend.
    Set(String),
    /// Not sealed, and why.
    Skipped(String),
}

/// The raw header fields of one existing ARC set.
#[derive(Default)]
struct ExistingSet<'x> {
    results: Option<(&'x [u8], &'x [u8])>,
    signature: Option<(&'x [u8], &'x [u8])>,
    seal: Option<(&'x [u8], &'x [u8])>,
}

/// The `i=` of an ARC header value (the first tag of an
/// ARC-Authentication-Results, any tag of the others).
fn instance(value: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(value).ok()?;
    text.split(';').find_map(|tag| {
        let (k, v) = tag.split_once('=')?;
        if k.trim() != "i" {
            return None;
        }
        v.trim().parse::<u32>().ok().filter(|i| (1..=MAX_INSTANCE).contains(i))
    })
}

/// The existing ARC sets, 1 to n, complete and without duplicates; an
/// error text otherwise.
fn existing_sets(headers: &[u8]) -> Result<Vec<ExistingSet<'_>>, String> {
    let mut sets: BTreeMap<u32, ExistingSet<'_>> = BTreeMap::new();
    for (name, value) in HeaderBlock::new(headers) {
        let kind = if name.eq_ignore_ascii_case(b"ARC-Seal") {
            0
        } else if name.eq_ignore_ascii_case(b"ARC-Message-Signature") {
            1
        } else if name.eq_ignore_ascii_case(b"ARC-Authentication-Results") {
            2
        } else {
            continue;
        };
        let Some(i) = instance(value) else {
            return Err(format!("{} without a valid i=", String::from_utf8_lossy(name)));
        };
        let set = sets.entry(i).or_default();
        let field = match kind {
            0 => &mut set.seal,
            1 => &mut set.signature,
            _ => &mut set.results,
        };
        if field.is_some() {
            return Err(format!("two {} with i={i}", String::from_utf8_lossy(name)));
        }
        *field = Some((name, value));
    }
    let n = sets.len() as u32;
    for (pos, (i, set)) in sets.iter().enumerate() {
        if *i != pos as u32 + 1 || set.seal.is_none() || set.signature.is_none() || set.results.is_none() {
            return Err(format!("ARC set {i} of {n} is incomplete or out of sequence"));
        }
    }
    Ok(sets.into_values().collect())
}

/// A header value is made of printable text and folds (CRLF followed by
/// a space or tab); nothing else.
fn valid_value(v: &str) -> bool {
    let b = v.as_bytes();
    b.iter().enumerate().all(|(i, &c)| match c {
        b'\r' => b.get(i + 1) == Some(&b'\n') && matches!(b.get(i + 2), Some(b' ' | b'\t')),
        b'\n' => i > 0 && b[i - 1] == b'\r',
        b'\t' => true,
        c => c >= 0x20 && c != 0x7f,
    })
}

/// `value` (no trailing CRLF) with `b=` folded in lines of at most 76.
fn fold_b(value: &mut String, b: &[u8]) {
    let b64 = B64.encode(b);
    let mut first = true;
    for chunk in b64.as_bytes().chunks(72) {
        if !first {
            value.push_str("\r\n\t");
        }
        first = false;
        value.push_str(std::str::from_utf8(chunk).unwrap_or_default());
    }
}

/// Header names joined by `:`, folded before a name that would take the
/// line past 72 characters.
fn fold_names(names: &[String]) -> String {
    let mut out = String::new();
    let mut line = 0;
    for (n, name) in names.iter().enumerate() {
        if n > 0 {
            out.push(':');
            line += 1;
            if line + name.len() > 72 {
                out.push_str("\r\n\t");
                line = 0;
            }
        }
        out.push_str(name);
        line += name.len();
    }
    out
}

/// Relaxed canonical form of one header field; `value` ending in CRLF
/// gives a line ending in CRLF.
fn relaxed(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    Canonicalization::Relaxed.canonicalize_headers(std::iter::once((name, value)), out);
}

/// What the ARC-Message-Signature covers: the selected header fields, then
/// the signature field itself with an empty `b=` and no final CRLF.
struct AmsInput<'a> {
    headers: CanonicalHeaders<'a>,
    own: &'a [u8],
}

impl Writable for AmsInput<'_> {
    fn write(self, writer: &mut impl Writer) {
        self.headers.write(writer);
        writer.write(self.own);
    }
}

/// Seal a message forwarded by `domain`: see the module documentation.
/// `results` is the value of tambo's Authentication-Results
/// (`authserv-id; method=result …`).
pub fn seal(
    keys: &DkimKeys,
    domain: &str,
    headers: &[u8],
    body_hash: &[u8],
    chain: ArcChain,
    results: &str,
    now: u64,
) -> Result<Sealed, SealError> {
    let skip = |why: String| Ok(Sealed::Skipped(why));
    let Some((selector, key)) = keys.rsa_key(domain) else {
        return skip(format!("{domain} has no RSA DKIM key"));
    };
    if body_hash.len() != 32 {
        return Err(SealError::BadBodyHash);
    }
    let results = results.trim_end_matches(['\r', '\n']);
    if results.is_empty() || results.len() > MAX_RESULTS || !valid_value(results) {
        return Err(SealError::BadResults);
    }
    if headers.len() > MAX_HEADERS {
        return skip(format!("header section larger than {MAX_HEADERS} bytes"));
    }
    let existing = match existing_sets(headers) {
        Ok(s) => s,
        Err(e) => return skip(format!("existing ARC headers: {e}")),
    };
    let n = existing.len() as u32;
    let cv = match (chain, n) {
        (ArcChain::None, 0) => "none",
        (ArcChain::Pass, 1..) => "pass",
        (ArcChain::None, _) | (ArcChain::Pass, 0) => {
            return skip("the ARC headers do not match the verification at receipt".into());
        }
        (ArcChain::Fail, _) => return skip("the ARC chain failed at receipt".into()),
        (ArcChain::Unknown, _) => return skip("the ARC chain was not verified at receipt".into()),
    };
    if n >= MAX_INSTANCE {
        return skip(format!("the chain already has {MAX_INSTANCE} ARC sets"));
    }
    let i = n + 1;

    // ARC-Authentication-Results.
    let aar_value = format!(" i={i}; {results}\r\n");

    // ARC-Message-Signature.
    let template = Signature {
        v: 1,
        d: domain.to_string(),
        s: selector.to_string(),
        h: AMS_HEADERS.iter().map(|h| h.to_string()).collect(),
        ch: Canonicalization::Relaxed,
        cb: Canonicalization::Relaxed,
        ..Default::default()
    };
    let (_, canonical, signed, _) = template.canonicalize(HeaderBlock::new(headers));
    let mut ams_value = format!(
        " i={i}; a=rsa-sha256; c=relaxed/relaxed; d={domain}; s={selector};\r\n\tt={now};\r\n\th={};\r\n\tbh={};\r\n\tb=",
        fold_names(&signed),
        B64.encode(body_hash)
    );
    let mut own = Vec::new();
    relaxed(b"ARC-Message-Signature", ams_value.as_bytes(), &mut own);
    let ams_b = key
        .sign(AmsInput {
            headers: canonical,
            own: &own,
        })
        .map_err(|e| SealError::Crypto(e.to_string()))?;
    fold_b(&mut ams_value, &ams_b);
    ams_value.push_str("\r\n");

    // ARC-Seal: every earlier set, then the new one, in order.
    let mut as_value = format!(" i={i}; a=rsa-sha256; d={domain}; s={selector}; cv={cv};\r\n\tt={now};\r\n\tb=");
    let mut input = Vec::new();
    for set in &existing {
        for (name, value) in [set.results, set.signature, set.seal].into_iter().flatten() {
            relaxed(name, value, &mut input);
        }
    }
    relaxed(b"ARC-Authentication-Results", aar_value.as_bytes(), &mut input);
    relaxed(b"ARC-Message-Signature", ams_value.as_bytes(), &mut input);
    relaxed(b"ARC-Seal", as_value.as_bytes(), &mut input);
    let as_b = key
        .sign(input.as_slice())
        .map_err(|e| SealError::Crypto(e.to_string()))?;
    fold_b(&mut as_value, &as_b);
    as_value.push_str("\r\n");

    Ok(Sealed::Set(format!(
        "ARC-Seal:{as_value}ARC-Message-Signature:{ams_value}ARC-Authentication-Results:{aar_value}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_auth::common::crypto::{HashContext, HashImpl, Sha256};
    use mail_auth::dkim::canonicalize::BodyHasher;
    use std::path::Path;
    use tambo_common::dkimkey::{self, KeyAlgo};

    const HEADERS: &str = "Received: from a by b; Thu, 1 Jan 2026 00:00:00 +0000\r\n\
        Authentication-Results: mx.example.com;\r\n\tspf=pass smtp.mailfrom=x@sender.test\r\n\
        From: Someone <x@sender.test>\r\nTo: list@example.com\r\nSubject: Hello\r\n\
        Date: Thu, 1 Jan 2026 00:00:00 +0000\r\nMessage-ID: <1@sender.test>\r\n";
    const BODY: &str = "Hi.\r\n";
    const RESULTS: &str = "mx.example.com;\r\n\tspf=pass smtp.mailfrom=x@sender.test;\r\n\tarc=none";

    fn body_hash(body: &[u8]) -> Vec<u8> {
        let mut h = BodyHasher::new(Sha256::hasher(), Canonicalization::Relaxed, 0);
        h.write(body);
        h.finish().0.complete().as_ref().to_vec()
    }

    fn keys_with(dir: &Path, algo: KeyAlgo, bits: usize) -> DkimKeys {
        let d = dir.join("domains").join("example.com");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("dkim:s1.pem"), dkimkey::generate(algo, bits).unwrap()).unwrap();
        crate::dkim::tests::keys_in(dir, &["example.com"]).unwrap()
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn instances_and_sets() {
        assert_eq!(instance(b" i=3; a=rsa-sha256"), Some(3));
        assert_eq!(instance(b" a=rsa-sha256; i = 2 ;"), Some(2));
        assert_eq!(instance(b" i=0; x"), None);
        assert_eq!(instance(b" i=51; x"), None);
        assert_eq!(instance(b" a=b"), None);
        let one = "ARC-Seal: i=1; cv=none\r\nARC-Message-Signature: i=1; a=x\r\n\
            ARC-Authentication-Results: i=1; h; spf=pass\r\nFrom: a@b\r\n";
        assert_eq!(existing_sets(one.as_bytes()).unwrap().len(), 1);
        let dup = format!("{one}ARC-Seal: i=1; cv=none\r\n");
        assert!(existing_sets(dup.as_bytes()).is_err());
        let gap = one.replace("i=1", "i=2");
        assert!(existing_sets(gap.as_bytes()).is_err());
        let partial = "ARC-Seal: i=1; cv=none\r\nFrom: a@b\r\n";
        assert!(existing_sets(partial.as_bytes()).is_err());
        assert!(existing_sets(b"From: a@b\r\n").unwrap().is_empty());
    }

    #[test]
    fn folded_names() {
        let names: Vec<String> = AMS_HEADERS.iter().map(|h| h.to_string()).collect();
        let f = fold_names(&names);
        assert!(f.split("\r\n\t").all(|l| l.len() <= 73), "{f}");
        assert_eq!(f.replace("\r\n\t", ""), AMS_HEADERS.join(":"));
        assert_eq!(fold_names(&[]), "");
    }

    #[test]
    fn header_values() {
        assert!(valid_value("h;\r\n\tspf=pass"));
        assert!(!valid_value("h;\r\nX-Injected: yes"));
        assert!(!valid_value("h;\nspf=pass"));
        assert!(!valid_value("h;\rspf"));
        assert!(!valid_value("h\0"));
    }

    #[test]
    fn policy() {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys_with(dir.path(), KeyAlgo::Rsa, 2048);
        let bh = body_hash(BODY.as_bytes());
        let h = HEADERS.as_bytes();
        let ours = |chain, headers: &[u8]| seal(&keys, "example.com", headers, &bh, chain, RESULTS, 1);
        assert!(matches!(ours(ArcChain::None, h), Ok(Sealed::Set(_))));
        for chain in [ArcChain::Fail, ArcChain::Unknown, ArcChain::Pass] {
            assert!(matches!(ours(chain, h), Ok(Sealed::Skipped(_))), "{chain:?}");
        }
        assert!(matches!(
            seal(&keys, "other.org", h, &bh, ArcChain::None, RESULTS, 1),
            Ok(Sealed::Skipped(_))
        ));
        assert_eq!(
            seal(&keys, "example.com", h, &bh[..4], ArcChain::None, RESULTS, 1),
            Err(SealError::BadBodyHash)
        );
        assert_eq!(
            seal(&keys, "example.com", h, &bh, ArcChain::None, "h;\r\nX: y", 1),
            Err(SealError::BadResults)
        );
        // Ed25519 keys are not used for ARC.
        let dir2 = tempfile::tempdir().unwrap();
        let ed = keys_with(dir2.path(), KeyAlgo::Ed25519, 0);
        assert!(matches!(
            seal(&ed, "example.com", h, &bh, ArcChain::None, RESULTS, 1),
            Ok(Sealed::Skipped(_))
        ));
    }

    /// Seal twice (i=1 then i=2 over the first) and have python3-dkim's
    /// independent ARC verifier check the chain; then tamper with it.
    #[test]
    fn python_dkim_verifies_our_seals() {
        if !Path::new("/usr/lib/python3/dist-packages/dkim/__init__.py").exists() {
            eprintln!("python3-dkim not installed: skipping (scripts/test installs it)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let keys = keys_with(dir.path(), KeyAlgo::Rsa, 2048);
        let k = dkimkey::load_key(&dkimkey::key_path(dir.path(), "example.com", "s1")).unwrap();
        let record = dkimkey::dns_record(k.algo, &k.public);
        let bh = body_hash(BODY.as_bytes());
        let Sealed::Set(first) = seal(
            &keys,
            "example.com",
            HEADERS.as_bytes(),
            &bh,
            ArcChain::None,
            RESULTS,
            now(),
        )
        .unwrap() else {
            panic!("not sealed")
        };
        assert!(first.starts_with("ARC-Seal: i=1; a=rsa-sha256; d=example.com; s=s1; cv=none;"));
        let hop2 = format!("{first}{HEADERS}");
        let Sealed::Set(second) = seal(
            &keys,
            "example.com",
            hop2.as_bytes(),
            &bh,
            ArcChain::Pass,
            "mx2.example.com; arc=pass",
            now(),
        )
        .unwrap() else {
            panic!("not sealed")
        };
        assert!(second.contains("i=2;") && second.contains("cv=pass"));
        let verify = |message: &str| {
            let script = "import sys, dkim\n\
                 rec = open(sys.argv[1]).read().encode()\n\
                 def dns(name, timeout=5):\n\
                 \x20   return rec if name == b's1._domainkey.example.com.' else None\n\
                 msg = sys.stdin.buffer.read()\n\
                 cv, results, reason = dkim.arc_verify(msg, dnsfunc=dns)\n\
                 print(cv.decode(), reason)\n";
            let recfile = dir.path().join("record");
            std::fs::write(&recfile, &record).unwrap();
            crate::python::run(script, &recfile, message.as_bytes())
        };
        let one = format!("{first}{HEADERS}\r\n{BODY}");
        let v = verify(&one);
        assert!(v.starts_with("pass"), "{v}\n{one}");
        let two = format!("{second}{first}{HEADERS}\r\n{BODY}");
        let v = verify(&two);
        assert!(v.starts_with("pass"), "{v}\n{two}");
        let v = verify(&two.replace("Hi.", "Bye."));
        assert!(v.starts_with("fail"), "{v}");
        let v = verify(&two.replace("Subject: Hello", "Subject: Hullo"));
        assert!(v.starts_with("fail"), "{v}");
    }
}
