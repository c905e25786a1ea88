//! The Received header queued adds to every message (RFC 5321 §4.4), and
//! RFC 5322 dates.

pub use tambo_common::dates::rfc5322_date;
use tambo_ipc::proto::IncomingEnvelope;

/// Keep a header value printable and on one line.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() || c == '(' || c == ')' { '_' } else { c })
        .take(200)
        .collect()
}

/// The Received header for a message, folded, ending in CRLF.
///
/// For authenticated submissions the client's IP address is left out: it
/// would reveal where a user was when they sent the mail, and the
/// authenticated identity is what matters for tracing abuse (it is kept in
/// the mail log).
pub fn received_header(env: &IncomingEnvelope, hostname: &str, id: &str, now: u64) -> String {
    let mut h = String::from("Received: from ");
    h.push_str(&clean(&env.helo));
    if env.auth_user.is_none() {
        h.push_str(&format!(" ([{}])", clean(&env.remote_ip)));
    }
    h.push_str(&format!(
        "\r\n\tby {} (tambo) with {} id {id}",
        clean(hostname),
        clean(&env.protocol)
    ));
    if let Some(tls) = &env.tls {
        h.push_str(&format!("\r\n\t(over {}, {})", clean(&tls.version), clean(&tls.cipher)));
    }
    if env.rcpts.len() == 1 {
        h.push_str(&format!("\r\n\tfor <{}>", clean(&env.rcpts[0])));
    }
    h.push_str(&format!(";\r\n\t{}\r\n", rfc5322_date(now)));
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use tambo_ipc::proto::{ListenerKind, TlsInfo};

    #[test]
    fn header() {
        let mut env = IncomingEnvelope {
            mail_from: "a@b".into(),
            rcpts: vec!["u@l".into()],
            helo: "client\r\nX-Evil: 1".into(),
            remote_ip: "192.0.2.7".into(),
            remote_port: 0,
            auth_user: None,
            tls: Some(TlsInfo {
                version: "TLSv1.3".into(),
                cipher: "TLS13_AES_128_GCM_SHA256".into(),
            }),
            protocol: "ESMTPS".into(),
            data_size: 0,
            listener: ListenerKind::Smtp,
            auth_headers: String::new(),
            spf_pass: None,
            arc: tambo_ipc::proto::ArcChain::Unknown,
        };
        let h = received_header(&env, "mx.l", "ID1", 0);
        assert!(
            h.starts_with("Received: from client__X-Evil: 1 ([192.0.2.7])\r\n\tby mx.l (tambo) with ESMTPS id ID1")
        );
        assert!(h.contains("(over TLSv1.3, TLS13_AES_128_GCM_SHA256)"));
        assert!(h.contains("for <u@l>;"));
        assert!(h.ends_with("1970 00:00:00 +0000\r\n"));
        env.auth_user = Some("u@l".into());
        assert!(!received_header(&env, "mx.l", "ID1", 0).contains("192.0.2.7"));
    }
}
