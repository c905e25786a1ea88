//! dkim-sign (a testing aid of chasquid-util, kept for compatibility):
//! sign the message on stdin with a domain's key and print the
//! `DKIM-Signature:` header, laid out as chasquid's signer lays it out
//! (relaxed/relaxed, SHA-256, RSA or Ed25519; RFC 6376 and 8463).

use std::io::Read;

use base64::Engine;
use ring::signature::{Ed25519KeyPair, RSA_PKCS1_SHA256, RsaKeyPair};
use rustls_pki_types::PrivateKeyDer;
use tambo_common::dkimkey::{KeyAlgo, ParsedKey};

use super::dkim::{find_selector, key_path_for, load_private_key};
use super::{CmdResult, Ctx, Fatal, fatal};

/// Largest message signed (it is held in memory).
const MAX_MESSAGE: u64 = 64 * 1024 * 1024;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Headers signed when present (every instance), in this order.
const SIGNED: &[&str] = &[
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Resent-Date",
    "Resent-From",
    "Resent-To",
    "Resent-Cc",
    "In-Reply-To",
    "References",
    "List-Id",
    "List-Help",
    "List-Unsubscribe",
    "List-Subscribe",
    "List-Post",
    "List-Owner",
    "List-Archive",
    "Message-ID",
];

/// Listed once more, so that none can be added after signing.
const OVERSIGNED: &[&str] = &["From", "Subject", "Date", "To", "Cc", "Message-ID"];

/// Every bare LF made CRLF.
fn to_crlf(msg: &[u8]) -> String {
    let text = String::from_utf8_lossy(msg);
    let mut out = String::with_capacity(text.len() + text.len() / 32);
    let mut prev = '\0';
    for c in text.chars() {
        if c == '\n' && prev != '\r' {
            out.push('\r');
        }
        out.push(c);
        prev = c;
    }
    out
}

/// The header fields (name, value with its folding) and the body.
fn split_message(msg: &str) -> Result<(Vec<(String, String)>, String), String> {
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut lines = msg.split("\r\n");
    for line in lines.by_ref() {
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            match headers.last_mut() {
                Some(h) => {
                    h.1.push_str("\r\n");
                    h.1.push_str(line);
                }
                None => return Err(format!("malformed header line: {line}")),
            }
            continue;
        }
        match line.split_once(':') {
            Some((n, v)) => headers.push((n.to_string(), v.to_string())),
            None => return Err(format!("malformed header line: {line}")),
        }
    }
    Ok((headers, lines.collect::<Vec<_>>().join("\r\n")))
}

fn collapse_wsp(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_wsp = false;
    for c in s.chars() {
        if c == ' ' || c == '\t' {
            if !in_wsp {
                out.push(' ');
            }
            in_wsp = true;
        } else {
            out.push(c);
            in_wsp = false;
        }
    }
    out
}

/// Relaxed header canonicalization: `name:value`.
pub fn relaxed_header(name: &str, value: &str) -> String {
    let value = collapse_wsp(&value.replace("\r\n", ""));
    format!(
        "{}:{}",
        name.to_ascii_lowercase().trim_end_matches([' ', '\t']),
        value.trim_matches([' ', '\t'])
    )
}

/// Relaxed body canonicalization.
pub fn relaxed_body(body: &str) -> String {
    let mut lines: Vec<String> = body
        .split("\r\n")
        .map(|l| collapse_wsp(l).trim_end_matches(' ').to_string())
        .collect();
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    if lines.is_empty() {
        return String::new();
    }
    let mut out = lines.join("\r\n");
    out.push_str("\r\n");
    out
}

/// The `h=` list, lower case, lines of at most 70 characters.
fn format_headers(names: &[&str]) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for (i, h) in names.iter().enumerate() {
        if line.len() + 1 + h.len() > 70 {
            out.push_str(&line);
            out.push_str("\r\n  ");
            line.clear();
        }
        if i > 0 {
            line.push(':');
        }
        line.push_str(h);
    }
    out.push_str(&line);
    out.trim().to_ascii_lowercase()
}

/// The signature, base64, in lines of 70 characters.
fn break_lines(s: &str) -> String {
    s.as_bytes()
        .chunks(70)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("\r\n  ")
}

fn sign_bytes(key: &ParsedKey, data: &[u8]) -> Result<Vec<u8>, String> {
    let der: &[u8] = match &key.der {
        PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der(),
        PrivateKeyDer::Pkcs1(k) => k.secret_pkcs1_der(),
        _ => return Err("unsupported key format".into()),
    };
    match key.algo {
        KeyAlgo::Ed25519 => {
            // RFC 8463: Ed25519 signs the SHA-256 hash.
            let kp = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(|e| e.to_string())?;
            let digest = ring::digest::digest(&ring::digest::SHA256, data);
            Ok(kp.sign(digest.as_ref()).as_ref().to_vec())
        }
        KeyAlgo::Rsa => {
            let kp = match &key.der {
                PrivateKeyDer::Pkcs1(_) => RsaKeyPair::from_der(der),
                _ => RsaKeyPair::from_pkcs8(der),
            }
            .map_err(|e| e.to_string())?;
            let mut sig = vec![0u8; kp.public().modulus_len()];
            kp.sign(&RSA_PKCS1_SHA256, &ring::rand::SystemRandom::new(), data, &mut sig)
                .map_err(|e| e.to_string())?;
            Ok(sig)
        }
    }
}

/// The signature header's value (CRLF-separated tags, as chasquid makes it).
pub fn signature(
    msg: &str,
    domain: &str,
    selector: &str,
    key: &ParsedKey,
    now: u64,
    trace: &dyn Fn(&str),
) -> Result<String, String> {
    let (headers, body) = split_message(msg)?;
    let algo = match key.algo {
        KeyAlgo::Rsa => "rsa-sha256",
        KeyAlgo::Ed25519 => "ed25519-sha256",
    };
    trace(&format!("Signing for {domain} / {selector} with {algo}"));
    let mut sig = format!("v=1; a={algo}; c=relaxed/relaxed;\r\nd={domain}; s={selector}; t={now};\r\n");
    let mut names: Vec<&str> = Vec::new();
    let mut data = String::new();
    for h in SIGNED {
        for (n, v) in headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(h)) {
            names.push(h);
            let canon = relaxed_header(n, v) + "\r\n";
            trace(&format!("Hashing header: {}", tambo_common::gofmt::quote(&canon)));
            data.push_str(&canon);
        }
    }
    names.extend_from_slice(OVERSIGNED);
    sig.push_str(&format!("h={};\r\n", format_headers(&names)));
    let bh = ring::digest::digest(&ring::digest::SHA256, relaxed_body(&body).as_bytes());
    sig.push_str(&format!("bh={};\r\n", B64.encode(bh.as_ref())));
    sig.push_str("b=");
    let unsigned = sig.replace("\r\n", "\r\n\t") + ";";
    let canon = relaxed_header("DKIM-Signature", &unsigned);
    trace(&format!("Hashing header: {}", tambo_common::gofmt::quote(&canon)));
    data.push_str(&canon);
    let b = sign_bytes(key, data.as_bytes())?;
    sig.push_str(&break_lines(&B64.encode(b)));
    sig.push(';');
    Ok(sig)
}

/// The domain of the message's From address.
fn domain_from(msg: &str) -> Result<String, Fatal> {
    let (headers, _) = split_message(msg).map_err(|e| Fatal(format!("Error parsing message: {e}")))?;
    let from = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("From"))
        .map(|(_, v)| v.replace("\r\n", ""))
        .unwrap_or_default();
    let addr = match (from.find('<'), from.rfind('>')) {
        (Some(a), Some(b)) if a < b => from[a + 1..b].to_string(),
        _ => from.trim().to_string(),
    };
    if from.trim().is_empty() {
        fatal!("Error parsing From: header: mail: no address");
    }
    match addr.rsplit_once('@') {
        Some((_, d)) if !d.is_empty() => Ok(d.to_string()),
        _ => fatal!("Error parsing From: header: mail: missing @ in addr-spec"),
    }
}

/// `dkim-sign [<domain> [<selector> [<private-key.pem>]]]`.
pub fn sign(ctx: &Ctx) -> CmdResult {
    let mut raw = Vec::new();
    std::io::stdin()
        .lock()
        .take(MAX_MESSAGE + 1)
        .read_to_end(&mut raw)
        .map_err(|e| Fatal(tambo_common::gofmt::io_error(&e)))?;
    if raw.len() as u64 > MAX_MESSAGE {
        fatal!("Error: the message is larger than {} MiB", MAX_MESSAGE >> 20);
    }
    let msg = to_crlf(&raw);
    let domain = match ctx.args.opt_pos(2) {
        Some(d) => d.to_string(),
        None => domain_from(&msg)?,
    };
    let selector = match ctx.args.opt_pos(3) {
        Some(s) => s.to_string(),
        None => find_selector(ctx, &domain)?,
    };
    let path = match ctx.args.opt_pos(4) {
        Some(p) => std::path::PathBuf::from(p),
        None => key_path_for(ctx, &domain, &selector)?,
    };
    let key = load_private_key(&path)?;
    let verbose = ctx.verbose();
    let trace = |s: &str| {
        if verbose {
            eprintln!("{s}");
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let sig = signature(&msg, &domain, &selector, &key, now, &trace)
        .map_err(|e| Fatal(format!("Error signing message: {e}")))?;
    print!("DKIM-Signature: {}\r\n", sig.replace("\r\n", "\r\n\t"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_forms() {
        assert_eq!(relaxed_header("Subject ", " a  \r\n\t b \t"), "subject:a b");
        assert_eq!(relaxed_body("a  b \r\n\r\n\r\n"), "a b\r\n");
        assert_eq!(relaxed_body(""), "");
        assert_eq!(relaxed_body("x"), "x\r\n");
        assert_eq!(to_crlf(b"a\nb\r\n"), "a\r\nb\r\n");
        assert_eq!(format_headers(&["From", "To"]), "from:to");
        assert!(split_message("Invalid message.\r\n").is_err());
        let (h, b) = split_message("A: 1\r\n 2\r\nB:3\r\n\r\nbody\r\n").unwrap();
        assert_eq!(h, vec![("A".into(), " 1\r\n 2".into()), ("B".into(), "3".into())]);
        assert_eq!(b, "body\r\n");
    }
}
