//! SMTP smuggling: every fake end-of-data variant, in DATA and in BDAT,
//! followed (in the same write) by the commands of a second message. The
//! server must answer 521 5.5.2 and close: no reply to the smuggled
//! commands, and neither message is ever delivered.

use std::time::Duration;

use tambo_tests::*;

/// The variants of RFC 5321 §4.1.1.4 / the 2023 smuggling research.
const VARIANTS: [(&str, &[u8]); 7] = [
    ("LF.LF", b"\n.\n"),
    ("LF.CRLF", b"\n.\r\n"),
    ("CRLF.LF", b"\r\n.\n"),
    ("CR.CR", b"\r.\r"),
    ("CRLF.CR", b"\r\n.\r"),
    ("CR.CRLF", b"\r.\r\n"),
    ("NUL", b"\r\n\0.\r\n"),
];

/// The smuggled transaction, to bob, with a marker naming the variant.
fn smuggled(tag: &str) -> Vec<u8> {
    format!(
        "MAIL FROM:<evil@remote.example>\r\n\
         RCPT TO:<bob@example.com>\r\n\
         DATA\r\n\
         Subject: smuggled\r\n\r\nsmuggled-{tag}\r\n.\r\n\
         QUIT\r\n"
    )
    .into_bytes()
}

/// Read every reply until the server closes (bounded by the client's read
/// timeout).
fn replies_until_close(c: &mut RawClient) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        let r = c.reply();
        if r.is_empty() {
            return out;
        }
        out.push(r);
        assert!(out.len() < 20, "the server keeps answering: {out:?}");
    }
}

fn start_transaction(port: u16) -> RawClient {
    let mut c = RawClient::connect(port);
    assert!(c.cmd("EHLO client.example").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<sender@remote.example>").starts_with("250"));
    assert!(c.cmd(&format!("RCPT TO:<{USER}>")).starts_with("250"));
    c
}

#[test]
fn no_smuggling_in_data_or_bdat() {
    let env = TestEnv::new("");
    let server = env.start();
    for (name, variant) in VARIANTS {
        // DATA: the fake end, then the smuggled message, then a real end.
        let tag = format!("data-{name}");
        let mut c = start_transaction(env.smtp_port);
        assert!(c.cmd("DATA").starts_with("354"));
        let mut body = format!("Subject: first\r\n\r\nfirst-{tag}").into_bytes();
        body.extend_from_slice(variant);
        body.extend(smuggled(&tag));
        body.extend_from_slice(b"\r\n.\r\n");
        c.send(&body);
        let got = replies_until_close(&mut c);
        assert_eq!(got.len(), 1, "{tag}: exactly one reply, then close: {got:?}");
        assert!(got[0].starts_with("521 5.5.2"), "{tag}: {got:?}");

        // BDAT: the same bytes as one LAST chunk, then the smuggled
        // commands pipelined after the chunk.
        let tag = format!("bdat-{name}");
        let mut c = start_transaction(env.smtp_port);
        let mut content = format!("Subject: first\r\n\r\nfirst-{tag}").into_bytes();
        content.extend_from_slice(variant);
        content.extend(smuggled(&tag));
        let mut wire = format!("BDAT {} LAST\r\n", content.len()).into_bytes();
        wire.extend(content);
        wire.extend(smuggled(&format!("{tag}-after")));
        c.send(&wire);
        let got = replies_until_close(&mut c);
        assert_eq!(got.len(), 1, "{tag}: exactly one reply, then close: {got:?}");
        assert!(got[0].starts_with("521 5.5.2"), "{tag}: {got:?}");
    }

    // In BDAT a CRLF.CRLF is content, not an end: the commands after it
    // are part of the one message (to alice), never run.
    let mut c = start_transaction(env.smtp_port);
    let mut content = b"Subject: dots\r\n\r\nfirst-bdat-crlf\r\n.\r\n".to_vec();
    content.extend(smuggled("bdat-CRLF.CRLF"));
    let mut wire = format!("BDAT {} LAST\r\n", content.len()).into_bytes();
    wire.extend(&content);
    c.send(&wire);
    let r = c.reply();
    assert!(r.starts_with("250 2.0.0 Ok: queued"), "{r}");
    assert!(c.cmd("QUIT").starts_with("221"));
    let got = env.wait_delivered(USER, "first-bdat-crlf");
    assert!(
        got.contains("\r\n.\r\nMAIL FROM:<evil@remote.example>\r\n"),
        "content kept verbatim: {got}"
    );

    // A legitimate message to bob afterwards; once it is delivered, wait a
    // little more and check nothing else ever reached anyone.
    let mut c = start_transaction(env.smtp_port);
    assert!(c.cmd("RCPT TO:<bob@example.com>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    assert!(c.cmd("Subject: marker\r\n\r\nlegit-marker\r\n.").starts_with("250"));
    env.wait_delivered("bob@example.com", "legit-marker");
    std::thread::sleep(Duration::from_secs(1));
    let bob = env.delivered("bob@example.com").unwrap_or_default();
    let alice = env.delivered(USER).unwrap_or_default();
    assert_eq!(bob.matches("Subject: ").count(), 1, "bob got only the marker: {bob}");
    assert!(!bob.contains("smuggled-"), "{bob}");
    for (name, _) in VARIANTS {
        assert!(
            !alice.contains(&format!("first-data-{name}")),
            "{name} (DATA) delivered: {alice}"
        );
        assert!(
            !alice.contains(&format!("first-bdat-{name}")),
            "{name} (BDAT) delivered: {alice}"
        );
    }
    assert!(
        !server.log().contains("evil@remote.example"),
        "a smuggled MAIL FROM reached queued"
    );
}
