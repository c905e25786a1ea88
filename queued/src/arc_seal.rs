//! ARC sealing of forwarded mail, queued's half. When an unauthenticated
//! message reaches a local alias that forwards it to a remote address,
//! queued asks authd (which holds the keys) for an ARC set (RFC 8617) in
//! the alias's domain, so that the message keeps passing DMARC downstream
//! even though tambo's hop breaks SPF alignment.
//!
//! The seal covers the message as it will leave: tambo's own headers
//! (Received, Authentication-Results, the post-data hook's) followed by
//! the header section in the data file, and the relaxed hash of the body.
//! ARC-Authentication-Results repeats tambo's Authentication-Results as
//! smtpd wrote it (from the envelope, never from the message, where a
//! sender could have put a forged one); `cv=` is smtpd's chain verdict,
//! also from the envelope.

use std::fs::File;
use std::time::Duration;

use tambo_ipc::proto::{ArcChain, AuthReply, AuthRequest};
use tambo_ipc::worker::PeerSlot;

use crate::dkim_sign::{SignFailure, prepare};

const AUTHD_WAIT: Duration = Duration::from_secs(10);

/// The value of the first `Authentication-Results` field in `headers`
/// (header lines, CRLF-terminated), without the leading space and the
/// final CRLF.
pub fn auth_results_value(headers: &str) -> Option<&str> {
    let mut start = None;
    let mut pos = 0;
    for line in headers.split_inclusive("\r\n") {
        match start {
            None => {
                if line.len() > 23 && line.as_bytes()[..23].eq_ignore_ascii_case(b"Authentication-Results:") {
                    start = Some(pos + 23);
                }
            }
            Some(s) => {
                if !line.starts_with([' ', '\t']) {
                    return Some(headers[s..pos].trim_start().trim_end_matches("\r\n"));
                }
            }
        }
        pos += line.len();
    }
    start.map(|s| headers[s..].trim_start().trim_end_matches("\r\n"))
}

/// Whether a chain in this state is sealed (see authd's `arc.rs`).
pub fn sealable(chain: ArcChain) -> bool {
    match chain {
        ArcChain::None | ArcChain::Pass => true,
        ArcChain::Fail | ArcChain::Unknown => false,
    }
}

/// Seal the message in `file` (`size` bytes), to go out with `prefix`
/// (tambo's headers) on top, for `domain`: the ARC set to prepend.
pub async fn seal(
    authd: &PeerSlot<AuthRequest, AuthReply>,
    domain: &str,
    prefix: &str,
    chain: ArcChain,
    auth_headers: &str,
    file: &File,
    size: u64,
) -> Result<String, SignFailure> {
    if !sealable(chain) {
        return Err(SignFailure::Skip(format!("ARC chain state at receipt: {chain:?}")));
    }
    let Some(results) = auth_results_value(auth_headers) else {
        return Err(SignFailure::Skip("no Authentication-Results to seal".into()));
    };
    let f = file
        .try_clone()
        .map_err(|e| SignFailure::Temporary(format!("data file: {e}")))?;
    let input = tokio::task::spawn_blocking(move || prepare(&f, size))
        .await
        .map_err(|e| SignFailure::Temporary(e.to_string()))??;
    let mut headers = prefix.as_bytes().to_vec();
    headers.extend_from_slice(&input.headers);
    let req = AuthRequest::ArcSeal {
        domain: domain.to_string(),
        headers,
        body_hash: input.body_hash,
        chain,
        results: results.to_string(),
    };
    match authd.call(req, Vec::new(), AUTHD_WAIT).await {
        Ok((AuthReply::ArcSet { headers, skipped }, _)) => {
            if headers.is_empty() {
                Err(SignFailure::Skip(skipped))
            } else {
                Ok(headers)
            }
        }
        Ok((AuthReply::Error(e), _)) => Err(SignFailure::Temporary(format!("authd: {e}"))),
        Ok((
            AuthReply::Exists(_)
            | AuthReply::Auth(_)
            | AuthReply::Certificates { .. }
            | AuthReply::Signature(_)
            | AuthReply::DkimSignatures(_)
            | AuthReply::RelayAuth(_),
            _,
        )) => Err(SignFailure::Temporary("unexpected reply from authd".into())),
        Err(e) => Err(SignFailure::Temporary(format!("authd: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_our_results() {
        let h = "Received-SPF: pass (x)\r\n\tclient-ip=1.2.3.4;\r\n\
                 Authentication-Results: mx.example.com;\r\n\tspf=pass smtp.mailfrom=a@b;\r\n\tarc=none smtp.remote-ip=1.2.3.4\r\n";
        assert_eq!(
            auth_results_value(h),
            Some("mx.example.com;\r\n\tspf=pass smtp.mailfrom=a@b;\r\n\tarc=none smtp.remote-ip=1.2.3.4")
        );
        let h2 = format!("{h}X-Other: 1\r\n");
        assert_eq!(auth_results_value(&h2), auth_results_value(h));
        assert_eq!(auth_results_value("Received-SPF: none\r\n"), None);
        assert_eq!(auth_results_value(""), None);
    }

    #[test]
    fn only_none_and_pass_are_sealed() {
        assert!(sealable(ArcChain::None) && sealable(ArcChain::Pass));
        assert!(!sealable(ArcChain::Fail) && !sealable(ArcChain::Unknown));
    }
}
