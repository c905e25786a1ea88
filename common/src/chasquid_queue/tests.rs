//! Tests of the chasquid queue item parser, on items chasquid 1.11 wrote.

use super::*;

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!("../../testdata/chasquid-1.11-queue/", $name)).as_slice()
    };
}

fn parse(text: &str) -> std::result::Result<Item, ItemError> {
    parse_item(text.as_bytes(), "queue/m:x")
}

#[test]
fn item_written_by_chasquid_with_a_failed_recipient() {
    let item = parse_item(fixture!("m:9WFFweXg3tQ"), "m:9WFFweXg3tQ").unwrap();
    assert_eq!(item.id, "9WFFweXg3tQ");
    assert_eq!(item.from, "sender@remote.test");
    assert_eq!(item.to, vec!["broken@example.com"]);
    assert_eq!(item.created, Some((1796194504, 215962717)));
    assert_eq!(item.rcpts.len(), 2);
    let alice = &item.rcpts[0];
    assert_eq!(
        (alice.address.as_str(), alice.kind, alice.status),
        ("alice@example.com", RcptType::Email, RcptStatus::Pending)
    );
    assert_eq!(
        alice.last_failure_message,
        "MDA delivery failed: exit status 75 - \"gate closed\\n\""
    );
    assert_eq!(alice.original_address, "broken@example.com");
    let ghost = &item.rcpts[1];
    assert_eq!(
        (ghost.address.as_str(), ghost.status),
        ("ghost@example.com", RcptStatus::Failed)
    );
    assert!(ghost.via.is_empty());
    let data = String::from_utf8(item.data.clone()).unwrap();
    assert!(data.starts_with("Received-SPF: none (no DNS record found)\nReceived: from [127.0.0.1] (client.test)\n\tby mx.example.com (chasquid)"), "{data}");
    assert!(
        data.ends_with("\n\nline one\n.leading dot\ntab\there ñ utf8\nquote \" back \\ slash\n"),
        "{data}"
    );
    assert!(item.ignored.is_empty());
}

#[test]
fn pipe_sent_and_aliases() {
    let item = parse_item(fixture!("m:AQLIFx1MmTg"), "f").unwrap();
    assert_eq!(item.to, vec!["piper@example.com", "bob@example.com"]);
    let pipe = &item.rcpts[0];
    assert_eq!(
        (
            pipe.address.as_str(),
            pipe.kind,
            pipe.status,
            pipe.original_address.as_str()
        ),
        (
            "/tmp/cq/pipe.sh ok",
            RcptType::Pipe,
            RcptStatus::Sent,
            "piper@example.com"
        )
    );
    let team = parse_item(fixture!("m:Hs8N5jXaTRI"), "f").unwrap();
    let states: Vec<_> = team.rcpts.iter().map(|r| (r.address.as_str(), r.status)).collect();
    assert_eq!(
        states,
        vec![
            ("alice@example.com", RcptStatus::Pending),
            ("bob@example.com", RcptStatus::Pending),
            ("carl@example.com", RcptStatus::Sent)
        ]
    );
    let far = parse_item(fixture!("m:JhuLSQnsdQk"), "f").unwrap();
    assert_eq!(far.rcpts[0].address, "carol@remote.test");
    assert!(far.rcpts[0].last_failure_message.contains("no such host"));
    let tag = parse_item(fixture!("m:zE81JkmDudM"), "f").unwrap();
    assert_eq!(tag.rcpts[0].address, "alice@example.com");
    assert_eq!(tag.rcpts[0].original_address, "alice+tag@example.com");
}

#[test]
fn null_sender_and_binary_data() {
    let item = parse_item(fixture!("m:BHaBtuOPASw"), "f").unwrap();
    assert_eq!(item.from, "<>");
    let want: &[u8] =
        b"bytes: \xff\xfe\x00\x01\x7f\x1b[0m bare\rcr \xc2\x85 c1 \xe2\x82\xac euro \xf0\x9f\x98\x80 emoji\nend\n";
    assert!(item.data.ends_with(want), "{:?}", String::from_utf8_lossy(&item.data));
}

#[test]
fn format_matches_chasquid_and_round_trips() {
    for f in [
        fixture!("m:9WFFweXg3tQ"),
        fixture!("m:AQLIFx1MmTg"),
        fixture!("m:BHaBtuOPASw"),
        fixture!("m:Hs8N5jXaTRI"),
        fixture!("m:JhuLSQnsdQk"),
        fixture!("m:zE81JkmDudM"),
    ] {
        let item = parse_item(f, "f").unwrap();
        // chasquid 1.11's output, byte for byte.
        assert_eq!(format_item(&item), std::str::from_utf8(f).unwrap());
        assert_eq!(parse_item(format_item(&item).as_bytes(), "g").unwrap(), item);
    }
}

#[test]
fn forward_recipients_and_the_other_text_format_spellings() {
    // chasquid 1.16+ FORWARD, with enum numbers, `rcpt <...>`, list
    // syntax, comments, separators and Go's random double spaces.
    let item = parse(
        "# comment\nID:  \"abc\"; from: 'a@b.c'\nTo: [\"x@l\", \"y@l\"]\n\
         rcpt <\n address: \"x@r\" type: 2 status: 0\n via: \"mx1:25\"\n via: \"mx2\"\n>\n\
         rcpt { address: \"y@r\", type: FORWARD, via: [\"mx3\"] }\n\
         data: \"a\" \"b\\x00\\101\"\n",
    )
    .unwrap();
    assert_eq!(item.to, vec!["x@l", "y@l"]);
    assert_eq!(item.rcpts[0].kind, RcptType::Forward);
    assert_eq!(item.rcpts[0].via, vec!["mx1:25", "mx2"]);
    assert_eq!(item.rcpts[1].via, vec!["mx3"]);
    assert_eq!(item.data, b"ab\x00A");
    assert_eq!(item.created, None);
}

#[test]
fn unknown_fields_are_listed_not_refused() {
    let item = parse("ID: \"a\"\nnew_field: 3\nrcpt { address: \"x\" priority: HIGH }\n").unwrap();
    assert_eq!(
        item.ignored,
        vec![(2, "new_field".to_string()), (3, "rcpt.priority".to_string())]
    );
}

#[test]
fn errors_name_the_file_and_line() {
    let e = parse("ID: \"a\"\nfrom: \"x\"\nrcpt {\n  status: LOST\n}\n").unwrap_err();
    assert_eq!(e.line, 4);
    assert_eq!(
        e.to_string(),
        "queue/m:x: line 4: status: unknown value LOST (known: PENDING, SENT, FAILED)"
    );
    let cases: &[(&str, usize, &str)] = &[
        ("ID: \"a\"\nID: \"b\"\n", 2, "ID is given twice"),
        ("from: 3\n", 1, "from must be a string, not an integer"),
        ("rcpt: \"x\"\n", 1, "rcpt must be a message, not a string"),
        ("data { }\n", 1, "data must be a string, not a message"),
        ("rcpt { type: 7 }\n", 1, "type: unknown value 7"),
        (
            "created_at_ts { nanos: 1000000000 }\n",
            1,
            "nanos: 1000000000 is out of range",
        ),
        ("created_at_ts { seconds: 99999999999999999999 }\n", 1, "out of range"),
        ("\n\ndata: \"abc\n", 3, "syntax error: column 7: newline in string"),
        ("\n\ndata: \"abc", 3, "syntax error: column 7: unterminated string"),
        ("a: 1\nrcpt {\n", 3, "expected '}'"),
        ("from: \"\\xff\"\n", 1, "from: not UTF-8"),
    ];
    for (text, line, msg) in cases {
        let e = parse(text).unwrap_err();
        assert_eq!(e.line, *line, "{text:?}: {e}");
        assert!(e.problem.to_string().contains(msg), "{text:?}: {e}");
    }
    let e = parse_item(b"ID: \"a\"\nfrom: \"\xff\"\n", "f").unwrap_err();
    assert_eq!((e.line, e.problem), (2, Problem::NotUtf8));
}

#[test]
fn quoting_like_go() {
    assert_eq!(quote(b"a\n\r\t\"\\"), r#""a\n\r\t\"\\""#);
    assert_eq!(quote(b"\x00\x1b\x7f\xff"), r#""\x00\x1b\x7f\xff""#);
    assert_eq!(quote("\u{85}ñ€".as_bytes()), "\"\\u0085ñ€\"");
    let all: Vec<u8> = (0..=255u8).chain([0xc3, 0xb1]).collect();
    let item = Item {
        id: "i".into(),
        from: String::new(),
        to: vec![],
        rcpts: vec![],
        data: all,
        created: Some((0, 0)),
        ignored: vec![],
    };
    assert_eq!(parse(&format_item(&item)).unwrap(), item);
}

#[test]
fn file_names() {
    assert_eq!(item_id_from_file_name("m:9WFFweXg3tQ"), Some("9WFFweXg3tQ"));
    assert_eq!(item_id_from_file_name("m:a-_b"), Some("a-_b"));
    for bad in ["m:", ".m:abc123", "abc.env", "journal", "m"] {
        assert_eq!(item_id_from_file_name(bad), None, "{bad}");
    }
    assert_eq!(max_item_size(50 << 20), 201 << 20);
}

#[test]
fn large_data_parses_in_bounded_memory_and_time() {
    let data: Vec<u8> = b"0123456789abcdef\n".repeat(1 << 16); // 1.1 MB
    let item = Item {
        id: "big".into(),
        from: "a@b".into(),
        to: vec!["c@d".into()],
        rcpts: vec![],
        data,
        created: Some((1, 2)),
        ignored: vec![],
    };
    let text = format_item(&item);
    let started = std::time::Instant::now();
    assert_eq!(parse(&text).unwrap(), item);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn never_panics() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xc4a5);
    let seed = fixture!("m:9WFFweXg3tQ");
    for _ in 0..3000 {
        let mut d = seed.to_vec();
        for _ in 0..rng.gen_range(1..8) {
            let i = rng.gen_range(0..d.len());
            match rng.gen_range(0..3) {
                0 => d[i] = rng.r#gen(),
                1 => {
                    d.remove(i);
                }
                _ => d.insert(i, b"{}\"\\:x0\n"[rng.gen_range(0..8)]),
            }
        }
        fuzz_item(&d);
    }
}
