//! The Received header queued adds to every message (RFC 5321 §4.4), and
//! RFC 5322 dates.

use tambo_ipc::proto::IncomingEnvelope;

/// Format a Unix time as an RFC 5322 date in UTC, e.g.
/// `Wed, 25 Nov 2026 12:00:00 +0000`.
pub fn rfc5322_date(unix: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix / 86_400;
    let secs = unix % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{}, {d} {} {y} {:02}:{:02}:{:02} +0000",
        DAYS[(days % 7) as usize],
        MONTHS[(m - 1) as usize],
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

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
    fn dates() {
        assert_eq!(rfc5322_date(0), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc5322_date(1_795_608_000), "Wed, 25 Nov 2026 12:00:00 +0000");
        assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
    }

    #[test]
    fn header() {
        let mut env = IncomingEnvelope {
            mail_from: "a@b".into(),
            rcpts: vec!["u@l".into()],
            helo: "client\r\nX-Evil: 1".into(),
            remote_ip: "192.0.2.7".into(),
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
