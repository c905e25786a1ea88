//! `via` aliases end to end: a secondary MX for example.com forwards all
//! its mail to the primary (`*: * via primary`, chasquid's secondary-MX
//! set-up), with the sender rewritten (SRS) whenever it is not local,
//! whatever the destination's domain, as chasquid does. And a chain of
//! aliases that crosses the two servers twice.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use tambo_tests::{RawClient, TestEnv, USER, wait_for};

/// The primary's delivery agent records the envelope sender (%from%)
/// above each message: `from=<sender>`.
fn record_senders(env: &TestEnv) {
    let mda = env.tmp.path().join("mda.sh");
    std::fs::write(
        &mda,
        format!(
            "#!/bin/sh\n{{ echo \"from=$2\"; cat; }} >> '{}'/\"$1\"\n",
            env.out_dir.display()
        ),
    )
    .expect("write mda");
    std::fs::set_permissions(&mda, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// One message over a raw connection; the final reply.
fn send(port: u16, from: &str, rcpt: &str, body: &str) -> String {
    let mut c = RawClient::connect(port);
    assert!(c.cmd("EHLO client.remote.test").starts_with("250"));
    let r = c.cmd(&format!("MAIL FROM:<{from}>"));
    assert!(r.starts_with("250"), "MAIL: {r}");
    let r = c.cmd(&format!("RCPT TO:<{rcpt}>"));
    assert!(r.starts_with("250"), "RCPT {rcpt}: {r}");
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(format!("From: {from}\r\nSubject: via test\r\n\r\n{body}\r\n.\r\n").as_bytes());
    let r = c.reply();
    c.cmd("QUIT");
    r
}

/// The `from=` line above the delivered message that contains `needle`.
fn sender_of(delivered: &str, needle: &str) -> String {
    let at = delivered
        .find(needle)
        .unwrap_or_else(|| panic!("{needle} not in {delivered}"));
    let before = &delivered[..at];
    let from_line = before
        .rfind("\nfrom=")
        .map(|i| i + 1)
        .or_else(|| before.starts_with("from=").then_some(0))
        .expect("a from= line");
    delivered[from_line + 5..]
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn secondary_mx_forwards_everything_via_the_primary_with_srs() {
    // The primary knows the users; its delivery agent gets %to% %from%.
    let primary = TestEnv::new("mail_delivery_agent_args: \"%from%\"\n");
    record_senders(&primary);
    primary.set_aliases("chain-2: chain-3@example.com\nchain-4: alice\n");
    let _p = primary.start();

    // The secondary has no users of its own: everything goes to the
    // primary, and part of a chain comes back to it.
    let to_primary = format!("via 127.0.0.1:{}", primary.smtp_port);
    let secondary = TestEnv::new("");
    std::fs::remove_file(secondary.config_dir.join("domains/example.com/users")).expect("rm users");
    secondary.set_aliases(&format!(
        "chain-1: chain-2@example.com {to_primary}\n*: * {to_primary}\n"
    ));
    let _s = secondary.start();
    // The primary sends chain-3 back through the secondary, once.
    primary.set_aliases(&format!(
        "chain-2: chain-3@example.com via 127.0.0.1:{}\nchain-4: alice\n",
        secondary.smtp_port
    ));
    secondary.set_aliases(&format!(
        "chain-1: chain-2@example.com {to_primary}\nchain-3: chain-4@example.com {to_primary}\n*: * {to_primary}\n"
    ));

    // A remote sender's mail to a user of the primary, received by the
    // secondary: forwarded, and its sender rewritten although the
    // destination (example.com) is a local domain of the secondary too.
    let r = send(secondary.smtp_port, "sender@remote.test", USER, "first-via-body");
    assert!(r.starts_with("250"), "{r}");
    let got = primary.wait_delivered(USER, "first-via-body");
    // (The primary normalises the local part of a sender of its own
    // domain to lower case; SRS hashes compare without case.)
    let from = sender_of(&got, "first-via-body").to_ascii_lowercase();
    assert!(
        from.starts_with("srs0=") && from.ends_with("=remote.test=sender@example.com"),
        "the envelope sender of a via forward from a remote sender is SRS: {from}"
    );
    assert!(got.contains("\r\nSubject: via test\r\n"), "{got}");

    // A local sender is not rewritten (chasquid rewrites only senders of
    // other domains).
    let r = send(secondary.smtp_port, "bob@example.com", USER, "local-sender-body");
    assert!(r.starts_with("250"), "{r}");
    let got = primary.wait_delivered(USER, "local-sender-body");
    assert_eq!(sender_of(&got, "local-sender-body"), "bob@example.com");

    // chain-1 (secondary) → chain-2 via primary → chain-3 via secondary →
    // chain-4 via primary → alice: delivered once.
    let r = send(
        secondary.smtp_port,
        "sender@remote.test",
        "chain-1@example.com",
        "chain-body",
    );
    assert!(r.starts_with("250"), "{r}");
    primary.wait_delivered(USER, "chain-body");
    std::thread::sleep(Duration::from_millis(500));
    let all = primary.delivered(USER).unwrap_or_default();
    assert_eq!(all.matches("chain-body").count(), 1, "{all}");

    // Nothing stays behind in either queue.
    for (name, env) in [("primary", &primary), ("secondary", &secondary)] {
        wait_for(Duration::from_secs(10), &format!("the {name}'s queue to empty"), || {
            std::fs::read_dir(env.data_dir.join("queue"))
                .map(|d| !d.flatten().any(|e| e.file_name().to_string_lossy().ends_with(".data")))
                .unwrap_or(true)
        });
    }
}
