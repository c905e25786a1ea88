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
