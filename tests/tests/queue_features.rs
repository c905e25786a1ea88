//! Issue 4 (queue features): aliases of every kind, the alias-resolve and
//! post-data hooks, retries, give-up, DSNs, a full queue and corrupt queue
//! entries — all through the real server and real SMTP clients (swaks and
//! a raw dialog).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tambo_tests::*;

/// One message through a raw SMTP dialog. Ok(final reply) on 250, else
/// Err(the first reply that was not the expected one).
fn send(port: u16, from: &str, rcpts: &[&str], subject: &str, text: &str) -> Result<String, String> {
    let mut c = RawClient::connect(port);
    let r = c.cmd("EHLO client.test");
    if !r.starts_with("250") {
        return Err(r);
    }
    let r = c.cmd(&format!("MAIL FROM:<{from}>"));
    if !r.starts_with("250") {
        return Err(r);
    }
    for rcpt in rcpts {
        let r = c.cmd(&format!("RCPT TO:<{rcpt}>"));
        if !r.starts_with("250") {
            return Err(r);
        }
    }
    let r = c.cmd("DATA");
    if !r.starts_with("354") {
        return Err(r);
    }
    c.send(format!("From: <{from}>\r\nSubject: {subject}\r\n\r\n{text}\r\n.\r\n").as_bytes());
    let r = c.reply();
    c.cmd("QUIT");
    if r.starts_with("250") { Ok(r) } else { Err(r) }
}

fn rcpt_reply(port: u16, rcpt: &str) -> String {
    let mut c = RawClient::connect(port);
    c.cmd("EHLO client.test");
    c.cmd("MAIL FROM:<someone@remote.test>");
    let r = c.cmd(&format!("RCPT TO:<{rcpt}>"));
    c.cmd("QUIT");
    r
}

fn write_script(path: &Path, body: &str) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("mkdir");
    }
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

fn aliases_path(env: &TestEnv, domain: &str) -> PathBuf {
    env.config_dir.join("domains").join(domain).join("aliases")
}

fn add_user(env: &TestEnv, addr: &str) {
    let (ok, out) = run(Command::new(bin("tambo")).args([
        "-C",
        env.config_dir.to_str().expect("utf8"),
        "user-add",
        addr,
        "--password",
        PASSWORD,
    ]));
    assert!(ok, "{out}");
}

/// Replace the test MDA (called with %to% as its only argument).
fn set_mda(env: &TestEnv, body: &str) {
    write_script(&env.tmp.path().join("mda.sh"), body);
}

/// Messages in the queue directory, counted by their data files (an
/// accepted message's envelope may be in the queue's journal only, see
/// README "The queue"; no SMTP transaction is open when this is called).
fn queued_messages(env: &TestEnv) -> usize {
    std::fs::read_dir(env.data_dir.join("queue"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".data"))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn aliases_of_every_kind() {
    let env = TestEnv::new("");
    let out = env.out_dir.display().to_string();
    let pipe = env.tmp.path().join("pipe.sh");
    write_script(
        &pipe,
        &format!("echo \"$@\" > '{out}/pipe-args'\ncat > '{out}/pipe-message'"),
    );
    let mut deep = String::new();
    for i in 0..11 {
        deep.push_str(&format!("deep{i}: deep{}\n", i + 1));
    }
    deep.push_str("deep11: alice\n");
    std::fs::write(
        aliases_path(&env, "example.com"),
        format!(
            "# aliases of example.com\n\
             team: alice, bob@example.com\n\
             \n\
             piped: | {} first --second\n\
             sales.desk: bob\n\
             loop1: loop2\n\
             loop2: loop1\n\
             hooked: bob\n\
             *: bob\n\
             {deep}",
            pipe.display()
        ),
    )
    .expect("aliases");
    // A second domain whose catch-all forwards every user to the same
    // user of example.com.
    let other = env.config_dir.join("domains/other.test");
    std::fs::create_dir_all(&other).expect("mkdir");
    std::fs::write(other.join("aliases"), "*: *@example.com\n").expect("aliases");
    write_script(
        &env.config_dir.join("hooks/alias-resolve"),
        "case \"$1\" in\n\
           hooked@example.com) echo alice ;;\n\
           dynamic@example.com) echo 'bob, alice' ;;\n\
           broken@example.com) echo 'hook failure' >&2; exit 1 ;;\n\
         esac",
    );
    env.fix_permissions();
    let server = env.start();

    // Plain alias with several targets, through swaks.
    let (ok, outp) = run(Command::new("swaks").args([
        "--server",
        &format!("127.0.0.1:{}", env.smtp_port),
        "--from",
        "sender@remote.test",
        "--to",
        "team@example.com",
        "--body",
        "to the team",
        "--timeout",
        "30",
    ]));
    assert!(ok, "{outp}");
    env.wait_delivered(USER, "to the team");
    env.wait_delivered("bob@example.com", "to the team");

    // Pipe: argv split on whitespace, no shell, the message on stdin.
    send(
        env.smtp_port,
        "s@remote.test",
        &["piped@example.com"],
        "pipe",
        "through the pipe",
    )
    .expect("pipe");
    wait_for(Duration::from_secs(20), "pipe output", || {
        std::fs::read_to_string(env.out_dir.join("pipe-message"))
            .unwrap_or_default()
            .contains("through the pipe")
    });
    assert_eq!(
        std::fs::read_to_string(env.out_dir.join("pipe-args")).expect("args"),
        "first --second\n"
    );
    let piped = std::fs::read_to_string(env.out_dir.join("pipe-message")).expect("pipe message");
    assert!(piped.starts_with("Received: from client.test"), "{piped}");

    // Drop characters and suffixes, on users and on aliases.
    send(
        env.smtp_port,
        "s@remote.test",
        &["A.l.i.c.e+news@example.com"],
        "s",
        "suffixed user",
    )
    .expect("suffix");
    env.wait_delivered(USER, "suffixed user");
    send(
        env.smtp_port,
        "s@remote.test",
        &["salesdesk+x@example.com"],
        "s",
        "dropped alias",
    )
    .expect("alias");
    env.wait_delivered("bob@example.com", "dropped alias");

    // Catch-all, and a catch-all whose target user is `*`.
    send(
        env.smtp_port,
        "s@remote.test",
        &["whoever@example.com"],
        "s",
        "caught by all",
    )
    .expect("catch-all");
    env.wait_delivered("bob@example.com", "caught by all");
    send(
        env.smtp_port,
        "s@remote.test",
        &["alice@other.test"],
        "s",
        "star target",
    )
    .expect("star");
    env.wait_delivered(USER, "star target");

    // Recursion within the limit works; beyond it, and loops, are refused.
    send(
        env.smtp_port,
        "s@remote.test",
        &["deep3@example.com"],
        "s",
        "nine levels",
    )
    .expect("deep3");
    env.wait_delivered(USER, "nine levels");
    let r = rcpt_reply(env.smtp_port, "deep0@example.com");
    assert!(r.starts_with("550 5.4.6"), "{r}");
    let r = rcpt_reply(env.smtp_port, "loop1@example.com");
    assert!(r.starts_with("550 5.4.6"), "{r}");
    assert!(server.log().contains("alias loop"), "{}", server.log());

    // The alias-resolve hook adds to the file's result, or makes
    // resolution fail temporarily.
    send(
        env.smtp_port,
        "s@remote.test",
        &["hooked@example.com"],
        "s",
        "file and hook",
    )
    .expect("hooked");
    env.wait_delivered(USER, "file and hook");
    env.wait_delivered("bob@example.com", "file and hook");
    send(
        env.smtp_port,
        "s@remote.test",
        &["dynamic@example.com"],
        "s",
        "only the hook",
    )
    .expect("dynamic");
    env.wait_delivered(USER, "only the hook");
    env.wait_delivered("bob@example.com", "only the hook");
    let r = rcpt_reply(env.smtp_port, "broken@example.com");
    assert!(r.starts_with("451 4.4.3"), "{r}");

    // Editing the file takes effect without a signal…
    std::fs::write(
        aliases_path(&env, "example.com"),
        "team: alice, bob\nnewcomer: alice  \n",
    )
    .expect("rewrite aliases");
    send(
        env.smtp_port,
        "s@remote.test",
        &["newcomer@example.com"],
        "s",
        "after the edit",
    )
    .expect("newcomer");
    env.wait_delivered(USER, "after the edit");
    // …and a broken edit keeps the previous aliases (the reload is refused).
    std::fs::write(aliases_path(&env, "example.com"), "team: alice\nthis line is broken\n").expect("break");
    server.signal(Signal::SIGHUP);
    wait_for(Duration::from_secs(10), "the refused reload in the log", || {
        server.log().contains("aliases:2: missing ':'")
    });
    send(
        env.smtp_port,
        "s@remote.test",
        &["newcomer@example.com"],
        "s",
        "still there",
    )
    .expect("kept");
    env.wait_delivered(USER, "still there");
    // A fixed file and SIGHUP: the new aliases are in effect.
    std::fs::write(aliases_path(&env, "example.com"), "renamed: bob\n").expect("fix");
    server.signal(Signal::SIGHUP);
    send(
        env.smtp_port,
        "s@remote.test",
        &["renamed@example.com"],
        "s",
        "after sighup",
    )
    .expect("renamed");
    env.wait_delivered("bob@example.com", "after sighup");
    let r = rcpt_reply(env.smtp_port, "newcomer@example.com");
    assert!(r.starts_with("550 5.1.1"), "{r}");
}

#[test]
fn malformed_aliases_file_stops_tambod() {
    let env = TestEnv::new("");
    std::fs::write(aliases_path(&env, "example.com"), "# ok\ngood: alice\nbad line\n").expect("aliases");
    env.fix_permissions();
    let mut child = Command::new(bin("tambod"))
        .arg(format!("--config_dir={}", env.config_dir.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tambod");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tambod started with a broken aliases file");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().expect("output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!status.success());
    let expected = format!("{}:3: missing ':'", aliases_path(&env, "example.com").display());
    assert!(text.contains(&expected), "{text}");
}

/// A slow post-data hook holds up its own message only: while it waits
/// (for a gate the test opens only after the second message is
/// delivered), another message goes through hookd's hooks and is
/// delivered.
#[test]
fn a_slow_hook_delays_only_its_own_message() {
    let env = TestEnv::new("");
    let gate = env.out_dir.join("gate");
    write_script(
        &env.config_dir.join("hooks/post-data"),
        &format!(
            "case \"$(cat)\" in *SLOW*) i=0; while [ ! -e '{}' ] && [ $i -lt 500 ]; do sleep 0.1; i=$((i+1)); done ;; esac\n\
             echo \"X-Hooked: yes\"",
            gate.display()
        ),
    );
    env.fix_permissions();
    let _server = env.start();
    let port = env.smtp_port;
    let slow = std::thread::spawn(move || send(port, "a@remote.example", &[USER], "slow one", "SLOW"));
    // The slow hook is running (its message is being checked).
    std::thread::sleep(Duration::from_millis(300));
    send(port, "b@remote.example", &[USER], "quick one", "quick").expect("quick accepted");
    let quick = env.wait_delivered(USER, "quick one");
    assert!(quick.starts_with("X-Hooked: yes"), "{quick}");
    assert!(!slow.is_finished(), "the slow message was not held by its hook");
    std::fs::write(&gate, "").expect("open the gate");
    slow.join().expect("thread").expect("slow accepted");
    env.wait_delivered(USER, "slow one");
}

#[test]
fn post_data_hook_outcomes() {
    let env = TestEnv::new("");
    write_script(
        &env.config_dir.join("hooks/post-data"),
        "msg=$(cat)\n\
         case \"$msg\" in\n\
           *REJECT-PERM*) echo 'first line'; echo 'Spam detected, go away'; exit 20 ;;\n\
           *REJECT-TEMP*) echo 'Greylisted, try again later'; exit 1 ;;\n\
         esac\n\
         case \"$msg\" in Received:*) ;; *) exit 7 ;; esac\n\
         echo \"X-Hook: from=$MAIL_FROM rcpt=$RCPT_TO tls=$ON_TLS local=$FROM_LOCAL_DOMAIN ip=$REMOTE_ADDR\"\n\
         echo \"X-Hook-Env: ehlo=$EHLO_DOMAIN raw=$EHLO_DOMAIN_RAW auth=$AUTH_AS spf=$SPF_PASS pwd=$PWD\"\n\
         echo '\tcontinued'",
    );
    env.fix_permissions();
    let _server = env.start();

    send(
        env.smtp_port,
        "bob@example.com",
        &[USER, "bob@example.com"],
        "fine",
        "a fine message",
    )
    .expect("accepted");
    let got = env.wait_delivered(USER, "a fine message");
    // REMOTE_ADDR is ip:port, as chasquid sets it.
    let (first, rest) = got.split_once("\r\n").expect("hook header");
    let prefix = format!("X-Hook: from=bob@example.com rcpt={USER} bob@example.com tls=0 local=1 ip=127.0.0.1:");
    let port = first.strip_prefix(&prefix).unwrap_or_else(|| panic!("{got}"));
    assert!(port.parse::<u16>().is_ok(), "REMOTE_ADDR without its port: {first}");
    let expected = format!(
        "X-Hook-Env: ehlo=client.test raw=client.test auth= spf=0 pwd={}\r\n\tcontinued\r\n\
         Received: from client.test",
        env.config_dir.display()
    );
    assert!(rest.starts_with(&expected), "{got}");

    // The reply is the code and the hook's last line as it is (chasquid's
    // contract: the hook gives the enhanced code if it wants one).
    let r = send(env.smtp_port, "s@remote.test", &[USER], "x", "REJECT-PERM").unwrap_err();
    assert_eq!(r.trim_end(), "554 Spam detected, go away");
    let r = send(env.smtp_port, "s@remote.test", &[USER], "x", "REJECT-TEMP").unwrap_err();
    assert_eq!(r.trim_end(), "451 Greylisted, try again later");
    std::thread::sleep(Duration::from_millis(500));
    let all = env.delivered(USER).unwrap_or_default();
    assert!(!all.contains("REJECT"), "a refused message was delivered: {all}");
    // The delivered message's files go once its removal is flushed (at
    // most 1 s later); a refused one's never stay.
    wait_for(Duration::from_secs(5), "refused messages not queued", || {
        queued_messages(&env) == 0
    });
}

/// The MDA: alice's mailbox is broken (permanent), carol's fails once and
/// then works, dave's is always busy (temporary), everything else works.
const MDA: &str = "out=OUT\n\
    case \"$1\" in\n\
      alice@example.com) cat >/dev/null; echo 'mailbox disabled' >&2; exit 1 ;;\n\
      dave@example.com) cat >/dev/null; echo 'mailbox busy'; exit 75 ;;\n\
      carol@example.com)\n\
        if [ ! -e \"$out/.carol-tried\" ]; then touch \"$out/.carol-tried\"; cat >/dev/null; exit 75; fi ;;\n\
    esac\n\
    echo x >> \"$out/.calls-$1\"\n\
    cat >> \"$out/$1\"";

#[test]
fn retries_dsns_and_give_up() {
    let env = TestEnv::new("min_retry_delay: \"1s\"\ngive_up_send_after: \"3s\"");
    add_user(&env, "carol@example.com");
    add_user(&env, "dave@example.com");
    set_mda(&env, &MDA.replace("OUT", &env.out_dir.display().to_string()));
    let failpipe = env.tmp.path().join("failpipe.sh");
    write_script(&failpipe, "cat >/dev/null; echo 'pipe is busy'; exit 75");
    std::fs::write(
        aliases_path(&env, "example.com"),
        format!("list: alice, bob\nfailpipe: | {}\n", failpipe.display()),
    )
    .expect("aliases");
    env.fix_permissions();
    let server = env.start();

    // Fails temporarily, then succeeds on the retry.
    send(
        env.smtp_port,
        "s@remote.test",
        &["carol@example.com"],
        "retry",
        "second time lucky",
    )
    .expect("carol");
    env.wait_delivered("carol@example.com", "second time lucky");
    assert!(env.out_dir.join(".carol-tried").exists());
    assert!(server.log().contains("temporary failure"), "{}", server.log());

    // Permanent failures (a broken mailbox reached through an alias, and a
    // pipe alias whose exit 75 counts as permanent): one DSN to the
    // sender, a local user; the working recipient still gets the message.
    send(
        env.smtp_port,
        "bob@example.com",
        &["list@example.com", "failpipe@example.com"],
        "perm-test",
        "this will bounce",
    )
    .expect("accepted");
    let dsn = env.wait_delivered("bob@example.com", "Final-Recipient: rfc822; failpipe@example.com");
    assert!(
        dsn.contains("this will bounce"),
        "bob, in the list, got the message too"
    );
    let dsn = &dsn[dsn.find("From: Mail Delivery System").expect("DSN headers")..];
    assert!(
        dsn.contains("From: Mail Delivery System <MAILER-DAEMON@mx.example.com>\r\n"),
        "{dsn}"
    );
    assert!(dsn.contains("To: <bob@example.com>\r\n"), "{dsn}");
    assert!(dsn.contains("Message-ID: <"), "{dsn}");
    assert!(
        dsn.contains("Content-Type: multipart/report; report-type=delivery-status;"),
        "{dsn}"
    );
    let boundary = dsn
        .split("boundary=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("boundary");
    let parts: Vec<&str> = dsn.split(&format!("\r\n--{boundary}")).collect();
    assert_eq!(parts.len(), 5, "preamble, 3 parts, closing: {dsn}");
    assert!(
        parts[1].contains("Content-Type: text/plain; charset=utf-8"),
        "{}",
        parts[1]
    );
    assert!(parts[1].contains("mailbox disabled"), "{}", parts[1]);
    let status = parts[2];
    assert!(status.contains("Content-Type: message/delivery-status\r\n"), "{status}");
    assert!(status.contains("Reporting-MTA: dns; mx.example.com\r\n"), "{status}");
    assert!(status.contains("Arrival-Date: "), "{status}");
    assert!(
        status.contains(
            "Final-Recipient: rfc822; alice@example.com\r\nOriginal-Recipient: rfc822; list@example.com\r\n\
             Action: failed\r\nStatus: 5.0.0\r\n"
        ),
        "{status}"
    );
    assert!(
        status.contains("Final-Recipient: rfc822; failpipe@example.com\r\nAction: failed\r\nStatus: 5.0.0\r\n"),
        "{status}"
    );
    assert!(status.contains("Last-Attempt-Date: "), "{status}");
    assert!(!status.contains("bob@example.com"), "{status}");
    assert!(
        parts[3].contains("Content-Type: text/rfc822-headers\r\n"),
        "{}",
        parts[3]
    );
    assert!(parts[3].contains("Subject: perm-test\r\n"), "{}", parts[3]);
    assert!(!parts[3].contains("this will bounce"), "headers only");
    assert!(parts[4].starts_with("--"), "closing boundary");
    assert_eq!(dsn.matches("From: Mail Delivery System").count(), 1);

    // Always-temporary failures are given up after give_up_send_after:
    // a DSN with status 4.4.7.
    send(
        env.smtp_port,
        "bob@example.com",
        &["dave@example.com"],
        "giveup-test",
        "never arrives",
    )
    .expect("dave");
    let got = env.wait_delivered("bob@example.com", "Final-Recipient: rfc822; dave@example.com");
    let dsn = &got[got.rfind("From: Mail Delivery System").expect("DSN")..];
    assert!(dsn.contains("Action: failed\r\nStatus: 4.4.7\r\n"), "{dsn}");
    assert!(dsn.contains("mailbox busy"), "{dsn}");
    assert!(dsn.contains("Subject: giveup-test\r\n"), "{dsn}");
    let calls = std::fs::read_to_string(env.out_dir.join(".calls-dave@example.com")).unwrap_or_default();
    assert!(calls.is_empty(), "dave's MDA never succeeded");

    // A DSN to a sender whose own mailbox fails is not bounced again.
    send(
        env.smtp_port,
        USER,
        &["failpipe@example.com"],
        "x",
        "bounce to a broken mailbox",
    )
    .expect("alice");
    wait_for(Duration::from_secs(20), "the queue to empty", || {
        queued_messages(&env) == 0
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(queued_messages(&env), 0);
    let log = server.log();
    assert_eq!(
        log.matches("DSN queued").count(),
        3,
        "two DSNs to bob, one to alice, none for the failed DSN: {log}"
    );
}

#[test]
fn full_queue_refuses_at_data_and_loses_nothing() {
    let env = TestEnv::new("max_queue_items: 1\nmin_retry_delay: \"1s\"");
    add_user(&env, "carol@example.com");
    let out = env.out_dir.display().to_string();
    set_mda(
        &env,
        &format!(
            "if [ \"$1\" = carol@example.com ] && [ ! -e '{out}/.release' ]; then cat >/dev/null; exit 75; fi\n\
             cat >> '{out}'/\"$1\""
        ),
    );
    env.fix_permissions();
    let _server = env.start();
    send(
        env.smtp_port,
        "s@remote.test",
        &["carol@example.com"],
        "held",
        "held back",
    )
    .expect("first");
    wait_for(Duration::from_secs(10), "the first message in the queue", || {
        queued_messages(&env) == 1
    });
    let r = send(
        env.smtp_port,
        "s@remote.test",
        &["bob@example.com"],
        "second",
        "queue is full",
    )
    .unwrap_err();
    assert!(r.starts_with("451 4.3.0"), "{r}");
    std::fs::write(env.out_dir.join(".release"), "").expect("release");
    env.wait_delivered("carol@example.com", "held back");
    wait_for(Duration::from_secs(10), "an empty queue", || queued_messages(&env) == 0);
    send(
        env.smtp_port,
        "s@remote.test",
        &["bob@example.com"],
        "second",
        "room again",
    )
    .expect("second");
    env.wait_delivered("bob@example.com", "room again");
}

#[test]
fn corrupt_queue_entry_is_moved_aside() {
    let env = TestEnv::new("");
    let queue = env.data_dir.join("queue");
    std::fs::create_dir_all(&queue).expect("mkdir queue");
    std::fs::write(queue.join("GarbageEntry1.env"), "{ this is not an envelope").expect("garbage");
    std::fs::write(queue.join("GarbageEntry1.data"), "Subject: x\r\n\r\nx\r\n").expect("garbage data");
    env.fix_permissions();
    let server = env.start();
    send(env.smtp_port, "s@remote.test", &[USER], "after", "still delivered").expect("send");
    env.wait_delivered(USER, "still delivered");
    assert!(queue.join("corrupt/GarbageEntry1.env").exists());
    assert!(queue.join("corrupt/GarbageEntry1.data").exists());
    assert!(!queue.join("GarbageEntry1.env").exists());
    assert!(
        server.log().contains("corrupt queue entry moved to"),
        "{}",
        server.log()
    );
}

/// The niceness of a process, from /proc (field 19 of stat).
fn niceness(pid: u32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let (_, rest) = stat.rsplit_once(')').expect("stat format");
    // After the command: state is field 3, nice field 19.
    rest.split_whitespace()
        .nth(16)
        .expect("nice field")
        .parse()
        .expect("nice")
}

/// deliverd, and every delivery agent it runs, has niceness
/// `delivery_nice`; the other workers keep theirs.
#[test]
fn deliveries_run_at_delivery_nice() {
    let env = TestEnv::new("delivery_nice: 7");
    let out = env.out_dir.display().to_string();
    set_mda(&env, &format!("cat >/dev/null; nice > '{out}'/\"$1\""));
    env.fix_permissions();
    let server = env.start();
    let base = niceness(std::process::id());
    assert_eq!(niceness(server.worker_pid("deliverd")), (base + 7).min(19));
    assert_eq!(niceness(server.worker_pid("smtpd")), base);
    assert_eq!(niceness(server.worker_pid("queued")), base);
    send(env.smtp_port, "s@remote.test", &[USER], "x", "how nice").expect("send");
    let got = env.wait_delivered(USER, "\n");
    assert_eq!(got.trim(), ((base + 7).min(19)).to_string());
}
