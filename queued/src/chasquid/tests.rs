//! Tests of the import: conversion of items chasquid 1.11 wrote, and
//! imports into a real store, crashed at every point that matters.

use super::*;
use tambo_common::chasquid_queue::{RcptStatus, RcptType, Recipient, format_item};
use tambo_ipc::proto::RcptRoute;

use crate::entry::RcptState;

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!("../../../common/testdata/chasquid-1.11-queue/", $name)).as_slice()
    };
}

const FIXTURES: [(&str, &[u8]); 6] = [
    ("m:9WFFweXg3tQ", fixture!("m:9WFFweXg3tQ")),
    ("m:AQLIFx1MmTg", fixture!("m:AQLIFx1MmTg")),
    ("m:BHaBtuOPASw", fixture!("m:BHaBtuOPASw")),
    ("m:Hs8N5jXaTRI", fixture!("m:Hs8N5jXaTRI")),
    ("m:JhuLSQnsdQk", fixture!("m:JhuLSQnsdQk")),
    ("m:zE81JkmDudM", fixture!("m:zE81JkmDudM")),
];

const NOW: u64 = 1_796_200_000;

fn srs(from: &str, original: &str, route: &RcptRoute) -> Option<String> {
    (matches!(route, RcptRoute::Remote { .. }) && !from.is_empty()).then(|| format!("SRS0={from}/{original}"))
}

/// example.com is local; `.` dropped, `+` starts a suffix.
fn conv(local: &[String]) -> Conversion<'_> {
    Conversion {
        local_domains: local,
        drop_characters: ".",
        suffix_separators: "+",
        now: NOW,
        srs: &srs,
    }
}

fn with_conv<T>(f: impl FnOnce(&Conversion<'_>) -> T) -> T {
    let local = vec!["example.com".to_string()];
    f(&conv(&local))
}

fn item(name: &str) -> Item {
    let (_, bytes) = FIXTURES.iter().find(|(n, _)| *n == name).unwrap();
    chasquid_queue::parse_item(bytes, name).unwrap()
}

#[test]
fn ids_are_derived_injective_and_valid() {
    let a = queue_id("9WFFweXg3tQ").unwrap();
    assert_eq!(a, "cq3957464677655867337451");
    assert!(crate::store::valid_id(&a));
    assert_ne!(queue_id("F__C7OUwE_g"), queue_id("F__C7OUwE-g"));
    assert!(crate::store::valid_id(&queue_id("-_").unwrap()));
    assert_eq!(queue_id(""), None);
    assert_eq!(queue_id(&"x".repeat(31)), None);
    assert_eq!(queue_id(&"x".repeat(30)).unwrap().len(), 62);
}

fn crlf(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    write_crlf(&mut out, data).unwrap();
    out
}

#[test]
fn line_endings() {
    assert_eq!(crlf(b"a\nb\r\nc\n"), b"a\r\nb\r\nc\r\n");
    assert_eq!(crlf(b"no end"), b"no end\r\n");
    assert_eq!(crlf(b"bare\rcr\n"), b"bare\rcr\r\n");
    assert_eq!(crlf(b""), b"");
    assert_eq!(crlf(b"\n\nx\r\n\n"), b"\r\n\r\nx\r\n\r\n");
    assert_eq!(crlf(b"cr at the end\r"), b"cr at the end\r\r\n");
}

#[test]
fn items_written_by_chasquid_become_entries() {
    with_conv(|conv| {
        // An alias with a deferred and a failed target.
        let e = conv.entry(&item("m:9WFFweXg3tQ"), "cqx", 0).unwrap();
        let data = crlf(&item("m:9WFFweXg3tQ").data);
        assert_eq!(
            (e.id.as_str(), e.from.as_str(), e.created),
            ("cqx", "sender@remote.test", 1796194504)
        );
        assert_eq!(e.header_prefix, "");
        assert_eq!(e.data_size, data.len() as u64);
        assert!(data.starts_with(b"Received-SPF: none (no DNS record found)\r\nReceived: from [127.0.0.1]"));
        assert!(data.ends_with(b"quote \" back \\ slash\r\n"));
        let r = &e.rcpts;
        assert_eq!(r[0].address, "alice@example.com");
        assert_eq!(r[0].original, "broken@example.com");
        assert_eq!(
            r[0].route,
            RcptRoute::Local {
                user: "alice".into(),
                domain: "example.com".into()
            }
        );
        assert_eq!(
            (r[0].state, r[0].attempts, r[0].next_attempt),
            (RcptState::Pending, 1, NOW)
        );
        assert!(r[0].last_error.contains("gate closed"));
        assert_eq!(r[1].state, RcptState::Failed);
        assert!(r[1].last_error.contains("no such mailbox"));
        assert!(crate::dsn::wants_dsn(&e), "the failed recipient is owed a DSN");
        // A pipe chasquid delivered, and a deferred mailbox.
        let e = conv.entry(&item("m:AQLIFx1MmTg"), "cqy", 0).unwrap();
        assert_eq!(e.rcpts[0].address, "piper@example.com");
        assert_eq!(
            e.rcpts[0].route,
            RcptRoute::Pipe {
                argv: vec!["/tmp/cq/pipe.sh".into(), "ok".into()]
            }
        );
        assert_eq!(e.rcpts[0].state, RcptState::Delivered);
        assert_eq!(e.rcpts[1].state, RcptState::Pending);
        // An alias to a remote address: SRS, as for our own forwards.
        let e = conv.entry(&item("m:JhuLSQnsdQk"), "cqz", 0).unwrap();
        assert_eq!(e.rcpts[0].route, RcptRoute::Remote { via: vec![] });
        assert_eq!(e.rcpts[0].address, "carol@remote.test");
        assert_eq!(
            e.rcpts[0].sender.as_deref(),
            Some("SRS0=sender@remote.test/far@example.com")
        );
        // The null sender.
        let e = conv.entry(&item("m:BHaBtuOPASw"), "cqn", 0).unwrap();
        let data = crlf(&item("m:BHaBtuOPASw").data);
        assert_eq!(e.from, "");
        assert!(!crate::dsn::wants_dsn(&e));
        assert!(data.ends_with(b"\xf0\x9f\x98\x80 emoji\r\nend\r\n"));
        // A suffix: the mailbox of the user.
        let e = conv.entry(&item("m:zE81JkmDudM"), "cqt", 0).unwrap();
        assert_eq!(e.rcpts[0].original, "alice+tag@example.com");
        assert_eq!(e.rcpts[0].address, "alice@example.com");
    });
}

#[test]
fn forward_empty_pipe_and_missing_fields() {
    let rcpt = |address: &str, kind, via: &[&str]| Recipient {
        address: address.into(),
        kind,
        status: RcptStatus::Pending,
        last_failure_message: String::new(),
        original_address: "fwd@example.com".into(),
        via: via.iter().map(|s| s.to_string()).collect(),
    };
    let mut it = Item {
        id: "i".into(),
        from: "<>".into(),
        to: vec!["fwd@example.com".into()],
        rcpts: vec![
            rcpt("x@Elsewhere.ORG", RcptType::Forward, &["mx1.test:2525", "mx2.test"]),
            rcpt("  ", RcptType::Pipe, &[]),
        ],
        data: b"Subject: x\n\nhi\n".to_vec(),
        created: None,
        ignored: vec![],
    };
    with_conv(|conv| {
        let e = conv.entry(&it, "cqf", 1234).unwrap();
        let data = crlf(&it.data);
        assert_eq!(e.created, 1234, "the file's time stands in for created_at_ts");
        assert_eq!(e.rcpts[0].address, "x@elsewhere.org");
        assert_eq!(
            e.rcpts[0].route,
            RcptRoute::Remote {
                via: vec!["mx1.test:2525".into(), "mx2.test".into()]
            }
        );
        assert_eq!(e.rcpts[0].sender, None, "the null sender is never rewritten");
        assert_eq!(
            (e.rcpts[1].state, e.rcpts[1].last_error.as_str()),
            (RcptState::Failed, "empty pipe command")
        );
        assert_eq!(data, b"Subject: x\r\n\r\nhi\r\n");
        it.created = Some((NOW as i64 + 99, 0));
        assert_eq!(conv.entry(&it, "cqf", 0).unwrap().created, NOW, "never in the future");
        it.rcpts.clear();
        assert!(conv.entry(&it, "cqf", 0).is_err());
    });
}

/// A chasquid queue in `dir`: the fixtures, one corrupt item, one
/// without recipients, a temporary file of chasquid's and a file of
/// ours that must be left alone.
fn lay_out(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, bytes) in FIXTURES {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    std::fs::write(dir.join("m:corrupt1"), b"ID: \"corrupt1\"\nrcpt {\n  status: LOST\n}\n").unwrap();
    std::fs::write(dir.join("m:empty1"), b"ID: \"empty1\"\nfrom: \"a@b\"\n").unwrap();
    std::fs::write(dir.join(".m:temp12345"), b"half").unwrap();
}

async fn run(
    dir: &Path,
    step: &mut dyn FnMut(Step) -> ControlFlow<()>,
) -> (Store, Vec<QueueEntry>, Option<(Vec<QueueEntry>, Report)>) {
    let (store, recovered) = Store::open(dir, 0, crate::journal::JournalSize::Automatic).unwrap();
    let ids: HashSet<String> = recovered.iter().map(|e| e.id.clone()).collect();
    let local = vec!["example.com".to_string()];
    let result = import(&store, &conv(&local), &ids, 1 << 20, step).await;
    (store, recovered, result.ok())
}

fn leftovers(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("m:"))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn import_moves_originals_and_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let q = tmp.path().join("queue");
    lay_out(&q);
    let (store, _, result) = run(&q, &mut |_| ControlFlow::Continue(())).await;
    let (entries, report) = result.unwrap();
    assert_eq!(
        report,
        Report {
            imported: 6,
            pending: 7,
            empty: 1,
            corrupt: 1,
            ..Report::default()
        }
    );
    assert_eq!(entries.len(), 6);
    assert_eq!(leftovers(&q), Vec::<String>::new());
    assert!(
        q.join(".m:temp12345").exists(),
        "chasquid's temporary files are not items"
    );
    assert!(q.join("corrupt/m:corrupt1").exists());
    assert!(q.join("chasquid-imported/m:empty1").exists());
    assert_eq!(leftovers(&q.join(IMPORTED_DIR)).len(), 7);
    let e = entries
        .iter()
        .find(|e| e.id == queue_id("9WFFweXg3tQ").unwrap())
        .unwrap();
    let data = std::fs::read(store.data_path(&e.id)).unwrap();
    assert_eq!(data, crlf(&item("m:9WFFweXg3tQ").data));
    drop(store);
    // Durable: a restart finds them as its own entries; nothing is
    // imported twice: a copy of an item put back while its entry is still
    // queued is only moved.
    std::fs::write(q.join("m:9WFFweXg3tQ"), FIXTURES[0].1).unwrap();
    let (_, recovered, result) = run(&q, &mut |_| ControlFlow::Continue(())).await;
    let (again, report) = result.unwrap();
    assert!(again.is_empty());
    assert_eq!((report.already, report.duplicates), (1, 0));
    let mut ids: Vec<_> = recovered.iter().map(|e| e.id.clone()).collect();
    ids.sort();
    let mut want: Vec<_> = entries.iter().map(|e| e.id.clone()).collect();
    want.sort();
    assert_eq!(ids, want);
    assert_eq!(recovered.iter().find(|r| r.id == e.id).unwrap(), e);
}

/// Once the entry of an imported item is delivered and gone, an item of
/// the same name is a new one (put back, or an ID chasquid used again, as
/// its own test suite does): imported again, as chasquid would deliver it.
#[tokio::test]
async fn an_item_named_like_a_delivered_one_is_imported_again() {
    let tmp = tempfile::tempdir().unwrap();
    let q = tmp.path().join("queue");
    std::fs::create_dir_all(&q).unwrap();
    let (name, bytes) = FIXTURES[0];
    std::fs::write(q.join(name), bytes).unwrap();
    let (store, _, result) = run(&q, &mut |_| ControlFlow::Continue(())).await;
    let (entries, _) = result.unwrap();
    assert_eq!(entries.len(), 1);
    store.remove(&entries[0].id).await.unwrap();
    drop(store);
    std::fs::write(q.join(name), bytes).unwrap();
    let (_, recovered, result) = run(&q, &mut |_| ControlFlow::Continue(())).await;
    assert!(recovered.is_empty());
    let (again, report) = result.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, entries[0].id);
    assert_eq!((report.imported, report.duplicates), (1, 1));
    assert!(q.join(IMPORTED_DIR).join(name).exists());
    let kept = leftovers(&q.join(IMPORTED_DIR));
    assert_eq!(kept.len(), 2, "the earlier original is kept: {kept:?}");
}

/// A crash at every point of the import, then a start that finishes
/// it: every item becomes exactly one entry, and nothing is left.
#[tokio::test]
async fn a_crash_anywhere_loses_nothing_and_imports_nothing_twice() {
    // How many crash points a whole import has.
    let tmp = tempfile::tempdir().unwrap();
    lay_out(&tmp.path().join("q"));
    let mut points = 0;
    let (_, _, full) = run(&tmp.path().join("q"), &mut |_| {
        points += 1;
        ControlFlow::Continue(())
    })
    .await;
    let mut want: Vec<QueueEntry> = full.unwrap().0;
    want.sort_by(|a, b| a.id.cmp(&b.id));
    // Six data files, one flush, seven moves (with the empty item).
    assert_eq!(points, 6 + 1 + 7);
    for crash_at in 0..points {
        let tmp = tempfile::tempdir().unwrap();
        let q = tmp.path().join("q");
        lay_out(&q);
        let mut n = 0;
        let (store, _, first) = run(&q, &mut |_| {
            n += 1;
            if n > crash_at {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .await;
        assert!(first.is_none(), "crash point {crash_at} reached");
        drop(store);
        let (store, recovered, second) = run(&q, &mut |_| ControlFlow::Continue(())).await;
        let (new, _) = second.unwrap();
        let mut all: Vec<QueueEntry> = recovered.into_iter().chain(new).collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(all, want, "crash at point {crash_at}");
        for e in &all {
            assert_eq!(std::fs::metadata(store.data_path(&e.id)).unwrap().len(), e.data_size);
        }
        assert_eq!(leftovers(&q), Vec::<String>::new(), "crash at point {crash_at}");
        drop(store);
        // And a third start imports nothing.
        let (_, recovered, third) = run(&q, &mut |_| ControlFlow::Continue(())).await;
        assert!(third.unwrap().0.is_empty());
        assert_eq!(recovered.len(), want.len());
    }
}

#[tokio::test]
async fn a_thousand_items() {
    let tmp = tempfile::tempdir().unwrap();
    let q = tmp.path().join("q");
    std::fs::create_dir_all(&q).unwrap();
    let mut base = item("m:Hs8N5jXaTRI");
    for i in 0..1000 {
        base.id = format!("item{i:06}");
        base.data = format!("Subject: {i}\n\n{}\n", "body line\n".repeat(300)).into_bytes();
        std::fs::write(q.join(format!("m:{}", base.id)), format_item(&base)).unwrap();
    }
    let (store, _) = Store::open(&q, 0, crate::journal::JournalSize::Automatic).unwrap();
    let local = vec!["example.com".to_string()];
    let started = Instant::now();
    let result = import(&store, &conv(&local), &HashSet::new(), 1 << 20, &mut |_| {
        ControlFlow::Continue(())
    })
    .await;
    let (entries, report) = result.ok().unwrap();
    println!("imported 1000 items of 3 KiB in {} ms", started.elapsed().as_millis());
    assert_eq!((entries.len(), report.imported, report.pending), (1000, 1000, 2000));
    assert!(leftovers(&q).is_empty());
}

#[test]
fn unreadable_and_oversized_items() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(matches!(
        read_item(&tmp.path().join("m:gone"), "m:gone", 100),
        ReadOutcome::Unreadable(_)
    ));
    std::fs::write(tmp.path().join("m:big"), vec![b' '; 101]).unwrap();
    match read_item(&tmp.path().join("m:big"), "m:big", 100) {
        ReadOutcome::Corrupt(why) => assert!(why.contains("101 bytes"), "{why}"),
        _ => panic!("an oversized item is corrupt"),
    }
    std::fs::write(tmp.path().join("m:bad"), b"ID: \"a\"\n\nfrom: 7\n").unwrap();
    match read_item(&tmp.path().join("m:bad"), "m:bad", 100) {
        ReadOutcome::Corrupt(why) => assert_eq!(why, "queue/m:bad: line 3: from must be a string, not an integer"),
        _ => panic!("corrupt"),
    }
}
