//! A small disk (issue 17, item 4): the journal takes what the free space
//! allows, not a fixed 32 MiB. On a 40 MB filesystem it is 4 MiB, and five
//! 5 MB messages fit, where with the 32 MiB journal one did and the rest
//! got 451.

use std::process::Command;
use std::time::Duration;

use tambo_tests::*;

/// A tmpfs of `mb` MB mounted on `dir` for as long as it lives.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, mb: u32) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("mkdir");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m,mode=0755"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount")
            .success();
        assert!(ok, "mount a tmpfs on {}", dir.display());
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn on_a_40_mb_disk_the_journal_takes_4_mib_and_big_messages_fit() {
    if !require_root("mounting a small filesystem") {
        return;
    }
    let env = TestEnv::new("max_queue_items: 50");
    let _gate = env.gate_mda();
    let _disk = Tmpfs::mount(&env.data_dir, 40);
    env.fix_permissions();
    let server = env.start();
    let journal = env.data_dir.join("queue/journal");
    wait_for(Duration::from_secs(10), "the journal", || journal.exists());
    assert_eq!(std::fs::metadata(&journal).expect("journal").len(), 4 * 1024 * 1024);
    assert!(
        server.log().contains("journal of 4 MiB (1/16 of the"),
        "the size and why are logged:\n{}",
        server.log()
    );
    // Five 5 MB messages, kept in the queue (the delivery agent defers).
    let body = "x".repeat(998) + "\r\n";
    let big = body.repeat(5 * 1024 * 1024 / body.len());
    for i in 0..5 {
        let reply = send_message(
            env.smtp_port,
            "someone@remote.test",
            &[USER],
            &format!("Subject: big {i}\r\n\r\n{big}"),
        );
        assert!(reply.starts_with("250"), "message {i}: {reply}");
    }
    let (ok, out) = run(Command::new(bin("tambo"))
        .arg("-C")
        .arg(&env.config_dir)
        .args(["queue", "list"]));
    assert!(ok, "{out}");
    assert_eq!(out.matches("someone@remote.test").count(), 5, "{out}");
}

/// Fill the filesystem of `path` to its last byte with the file `path`.
fn fill(path: &std::path::Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("filler");
    for size in [1 << 20, 4096, 1] {
        let block = vec![0u8; size];
        while f.write_all(&block).is_ok() {}
    }
}

/// Make `free` bytes free again by shortening the filler.
fn free_up(filler: &std::path::Path, free: u64) {
    let len = std::fs::metadata(filler).expect("filler").len();
    let f = std::fs::OpenOptions::new().write(true).open(filler).expect("filler");
    f.set_len(len.saturating_sub(free)).expect("truncate");
}

/// Issue 17 item 3: the disk fills up in the middle of a DATA, and under
/// messages that wait in the queue (their envelopes cannot be rewritten
/// after a failed attempt). The client gets 452 4.3.1, nothing
/// acknowledged is lost or delivered twice, and mail flows again once
/// there is room. The journal cannot be the write that fails: it is
/// allocated when it is created and only overwritten afterwards.
#[test]
fn a_full_disk_gets_452_loses_nothing_and_service_resumes() {
    if !require_root("mounting a small filesystem") {
        return;
    }
    let env = TestEnv::new("max_queue_items: 50\nmin_retry_delay: \"1s\"");
    let gate = env.gate_mda();
    let _disk = Tmpfs::mount(&env.data_dir, 40);
    env.fix_permissions();
    let server = env.start();
    let queue = |args: &[&str]| {
        run(Command::new(bin("tambo"))
            .arg("-C")
            .arg(&env.config_dir)
            .arg("queue")
            .args(args))
    };
    let send = |marker: &str, mb: usize| {
        let line = "y".repeat(998) + "\r\n";
        let body = line.repeat(mb * 1024 * 1024 / line.len() + 1);
        send_message(
            env.smtp_port,
            "someone@remote.test",
            &[USER],
            &format!("Subject: {marker}\r\n\r\n{marker}\r\n{body}"),
        )
    };
    for i in 0..3 {
        let reply = send(&format!("kept-{i}"), 1);
        assert!(reply.starts_with("250"), "kept-{i}: {reply}");
    }

    // 2 MiB left: a 5 MB message runs out of room in the middle of its
    // DATA; a small one still fits.
    let filler = env.data_dir.join("filler");
    fill(&filler);
    free_up(&filler, 2 * 1024 * 1024);
    let reply = send("big", 5);
    assert!(reply.starts_with("452 4.3.1"), "the disk filled during DATA: {reply}");
    let reply = send("small-fits", 0);
    assert!(reply.starts_with("250"), "a message that fits is still taken: {reply}");

    // Full to the last byte: nothing is taken, and the queued messages'
    // failed attempts cannot rewrite their envelopes.
    fill(&env.data_dir.join("filler2"));
    let reply = send("small-full", 0);
    assert!(reply.starts_with("452 4.3.1"), "a full disk: {reply}");
    let before = server.log().matches("No space left on device").count();
    let _ = queue(&["flush"]);
    wait_for(Duration::from_secs(20), "an envelope write refused for space", || {
        server.log().matches("No space left on device").count() > before
    });
    let journal = std::fs::metadata(env.data_dir.join("queue/journal")).expect("journal");
    assert_eq!(journal.len(), 4 * 1024 * 1024);
    assert!(
        std::os::unix::fs::MetadataExt::blocks(&journal) * 512 >= journal.len(),
        "the journal's blocks are all allocated: a full disk cannot refuse its writes"
    );

    // Room again: the refused messages are taken, and everything is
    // delivered once.
    std::fs::remove_file(&filler).expect("rm filler");
    std::fs::remove_file(env.data_dir.join("filler2")).expect("rm filler2");
    for marker in ["big", "small-full"] {
        let reply = send(marker, if marker == "big" { 5 } else { 0 });
        assert!(reply.starts_with("250"), "{marker} after the space came back: {reply}");
    }
    std::fs::write(&gate, b"").expect("open the gate");
    wait_for(Duration::from_secs(60), "the queue to drain", || {
        let _ = queue(&["flush"]);
        queue(&["list"]).1 == "Mail queue is empty\n"
    });
    let got = env.delivered(USER).unwrap_or_default();
    for marker in ["kept-0", "kept-1", "kept-2", "big", "small-fits", "small-full"] {
        let n = got.matches(&format!("Subject: {marker}\r\n")).count();
        assert_eq!(n, 1, "{marker} delivered {n} times");
    }
    assert!(!server.log().contains("panicked"));
}
