//! chasquid's queue items: the files `data_dir/queue/m:<id>` that chasquid
//! writes, one per message, as a text-format protobuf `queue.Message`
//! (chasquid's `internal/queue/queue.proto`).
//!
//! ```text
//! ID: "9WFFweXg3tQ"
//! from: "sender@remote.test"
//! To: "broken@example.com"
//! rcpt: {
//!   address: "ghost@example.com"
//!   status: FAILED
//!   last_failure_message: "MDA delivery failed: exit status 1"
//!   original_address: "broken@example.com"
//! }
//! data: "Received: from ...\nSubject: t1\n\nbody\n"
//! created_at_ts: {
//!   seconds: 1796194504
//!   nanos: 215962717
//! }
//! ```
//!
//! Fields at their default value are not written (proto3): a recipient
//! without `type` is `EMAIL`, without `status` is `PENDING`. `data` is the
//! message as chasquid received it (with its own `Received:` header on
//! top), LF line endings, in a text-format string whose escapes give
//! arbitrary bytes.
//!
//! [`parse_item`] does no I/O (the caller reads the file, bounded by
//! [`max_item_size`]) and never panics; [`format_item`] writes an item the
//! way chasquid lays it out (for tests and fixtures).

use crate::textproto::{self, Field, Scalar, Value};

/// Prefix of chasquid's queue item file names (`m:<id>`).
pub const ITEM_PREFIX: &str = "m:";

/// The chasquid ID of a queue item file name: `m:<id>` with a non-empty ID
/// that is a single path component. chasquid's temporary files
/// (`.m:<id><digits>`) and anything else give `None`.
pub fn item_id_from_file_name(name: &str) -> Option<&str> {
    let id = name.strip_prefix(ITEM_PREFIX)?;
    (!id.is_empty() && !id.contains('/') && !id.contains('\0')).then_some(id)
}

/// The largest queue item file worth reading for a `max_data_size` (in
/// bytes): the text-format escapes make a message at most four times
/// larger (`\xNN` per byte), plus room for the envelope.
pub fn max_item_size(max_data_size: u64) -> u64 {
    max_data_size.saturating_mul(4).saturating_add(1 << 20)
}

/// How chasquid reaches a recipient (`Recipient.Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RcptType {
    /// An address: a local mailbox or a remote one (chasquid decides at
    /// delivery time, by the domain).
    Email,
    /// A pipe alias: the address is the command line.
    Pipe,
    /// A `via` alias (chasquid 1.16 and later): to the address, through
    /// the servers in `via`.
    Forward,
}

/// Where a recipient stands (`Recipient.Status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RcptStatus {
    /// Not delivered yet.
    Pending,
    /// Delivered.
    Sent,
    /// Failed for good; the sender is owed a DSN when the item is done.
    Failed,
}

/// One recipient of a queue item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// The final address (after alias expansion), or the command of a pipe.
    pub address: String,
    /// How to reach it.
    pub kind: RcptType,
    /// Where it stands.
    pub status: RcptStatus,
    /// The last error, if any.
    pub last_failure_message: String,
    /// The address given at RCPT TO, before alias expansion.
    pub original_address: String,
    /// For [`RcptType::Forward`]: the servers to use.
    pub via: Vec<String>,
}

/// A queue item as chasquid wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// chasquid's ID (the file is `m:<ID>`).
    pub id: String,
    /// Envelope sender; `<>` for the null sender.
    pub from: String,
    /// The addresses given at RCPT TO.
    pub to: Vec<String>,
    /// The final recipients and their state.
    pub rcpts: Vec<Recipient>,
    /// The message, as received plus chasquid's headers; LF line endings.
    pub data: Vec<u8>,
    /// When chasquid accepted the message: Unix seconds and nanoseconds;
    /// `None` when the file has no `created_at_ts`.
    pub created: Option<(i64, u32)>,
    /// Fields this parser does not know, with their line (kept out of the
    /// item; the caller may warn about them).
    pub ignored: Vec<(usize, String)>,
}

/// Why a queue item could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: line {line}: {problem}")]
pub struct ItemError {
    /// The file, as the caller named it.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// What is wrong there.
    pub problem: Problem,
}

/// What is wrong with a queue item.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// The file is not UTF-8 (chasquid writes UTF-8, escaping other bytes).
    #[error("not UTF-8 text")]
    NotUtf8,
    /// Not valid text format.
    #[error("syntax error: {0}")]
    Syntax(String),
    /// A field holds the wrong kind of value.
    #[error("{field} must be {expected}, not {found}")]
    WrongType {
        /// The field.
        field: String,
        /// What it must hold.
        expected: &'static str,
        /// What it holds.
        found: &'static str,
    },
    /// A singular field given twice.
    #[error("{0} is given twice")]
    Repeated(String),
    /// A value out of range, or an unknown enum value.
    #[error("{field}: {why}")]
    BadValue {
        /// The field.
        field: String,
        /// Why.
        why: String,
    },
}

type Result<T> = std::result::Result<T, (usize, Problem)>;

fn wrong(f: &Field, expected: &'static str) -> (usize, Problem) {
    (
        f.line,
        Problem::WrongType {
            field: f.name.clone(),
            expected,
            found: f.value.kind(),
        },
    )
}

fn bad(f: &Field, why: impl Into<String>) -> (usize, Problem) {
    (
        f.line,
        Problem::BadValue {
            field: f.name.clone(),
            why: why.into(),
        },
    )
}

/// The bytes of a string field, taken out of the parsed tree (the data of
/// a message is not copied).
fn bytes_of(f: &mut Field) -> Result<Vec<u8>> {
    match &mut f.value {
        Value::Scalar(Scalar::Str(s)) => Ok(std::mem::take(s)),
        _ => Err(wrong(f, "a string")),
    }
}

fn string_of(f: &mut Field) -> Result<String> {
    String::from_utf8(bytes_of(f)?).map_err(|_| bad(f, "not UTF-8"))
}

fn message_of(f: &mut Field) -> Result<&mut [Field]> {
    if !matches!(f.value, Value::Message(_)) {
        return Err(wrong(f, "a message"));
    }
    match &mut f.value {
        Value::Message(m) => Ok(m),
        _ => Ok(&mut []),
    }
}

fn int_of(f: &Field, min: i128, max: i128) -> Result<i128> {
    match &f.value {
        Value::Scalar(Scalar::Int(n)) if (min..=max).contains(n) => Ok(*n),
        Value::Scalar(Scalar::Int(n)) => Err(bad(f, format!("{n} is out of range"))),
        _ => Err(wrong(f, "an integer")),
    }
}

/// An enum value by name or number: its index in `names`.
fn enum_of(f: &Field, names: &[&str]) -> Result<usize> {
    let found = match &f.value {
        Value::Scalar(Scalar::Ident(s)) => names.iter().position(|n| n == s),
        Value::Scalar(Scalar::Int(n)) => usize::try_from(*n).ok().filter(|i| *i < names.len()),
        _ => return Err(wrong(f, "an enum value")),
    };
    found.ok_or_else(|| {
        let v = match &f.value {
            Value::Scalar(Scalar::Ident(s)) => s.clone(),
            Value::Scalar(Scalar::Int(n)) => n.to_string(),
            _ => String::new(),
        };
        bad(f, format!("unknown value {v} (known: {})", names.join(", ")))
    })
}

/// Remembers which singular fields were seen, to refuse repeats.
#[derive(Default)]
struct Seen(Vec<&'static str>);

impl Seen {
    fn once(&mut self, name: &'static str, f: &Field) -> Result<()> {
        if self.0.contains(&name) {
            return Err((f.line, Problem::Repeated(f.name.clone())));
        }
        self.0.push(name);
        Ok(())
    }
}

const TYPES: [&str; 3] = ["EMAIL", "PIPE", "FORWARD"];
const STATUSES: [&str; 3] = ["PENDING", "SENT", "FAILED"];

fn recipient(fields: &mut [Field], ignored: &mut Vec<(usize, String)>) -> Result<Recipient> {
    let mut r = Recipient {
        address: String::new(),
        kind: RcptType::Email,
        status: RcptStatus::Pending,
        last_failure_message: String::new(),
        original_address: String::new(),
        via: Vec::new(),
    };
    let mut seen = Seen::default();
    for f in fields.iter_mut() {
        match f.name.as_str() {
            "address" => {
                seen.once("address", f)?;
                r.address = string_of(f)?;
            }
            "type" => {
                seen.once("type", f)?;
                r.kind = [RcptType::Email, RcptType::Pipe, RcptType::Forward][enum_of(f, &TYPES)?];
            }
            "status" => {
                seen.once("status", f)?;
                r.status = [RcptStatus::Pending, RcptStatus::Sent, RcptStatus::Failed][enum_of(f, &STATUSES)?];
            }
            "last_failure_message" => {
                seen.once("last_failure_message", f)?;
                r.last_failure_message = string_of(f)?;
            }
            "original_address" => {
                seen.once("original_address", f)?;
                r.original_address = string_of(f)?;
            }
            "via" => r.via.push(string_of(f)?),
            other => ignored.push((f.line, format!("rcpt.{other}"))),
        }
    }
    Ok(r)
}

fn timestamp(fields: &mut [Field], ignored: &mut Vec<(usize, String)>) -> Result<(i64, u32)> {
    let (mut secs, mut nanos) = (0i64, 0u32);
    let mut seen = Seen::default();
    for f in fields.iter_mut() {
        match f.name.as_str() {
            "seconds" => {
                seen.once("seconds", f)?;
                secs = int_of(f, i64::MIN as i128, i64::MAX as i128)? as i64;
            }
            "nanos" => {
                seen.once("nanos", f)?;
                nanos = int_of(f, 0, 999_999_999)? as u32;
            }
            other => ignored.push((f.line, format!("created_at_ts.{other}"))),
        }
    }
    Ok((secs, nanos))
}

fn item(fields: &mut [Field]) -> Result<Item> {
    let mut item = Item {
        id: String::new(),
        from: String::new(),
        to: Vec::new(),
        rcpts: Vec::new(),
        data: Vec::new(),
        created: None,
        ignored: Vec::new(),
    };
    let mut seen = Seen::default();
    for f in fields.iter_mut() {
        match f.name.as_str() {
            "ID" => {
                seen.once("ID", f)?;
                item.id = string_of(f)?;
            }
            "from" => {
                seen.once("from", f)?;
                item.from = string_of(f)?;
            }
            "To" => item.to.push(string_of(f)?),
            "rcpt" => {
                let r = recipient(message_of(f)?, &mut item.ignored)?;
                item.rcpts.push(r);
            }
            "data" => {
                seen.once("data", f)?;
                item.data = bytes_of(f)?;
            }
            "created_at_ts" => {
                seen.once("created_at_ts", f)?;
                item.created = Some(timestamp(message_of(f)?, &mut item.ignored)?);
            }
            other => item.ignored.push((f.line, other.to_string())),
        }
    }
    Ok(item)
}

/// 1-based line of byte offset `at`.
fn line_at(bytes: &[u8], at: usize) -> usize {
    1 + bytes[..at.min(bytes.len())].iter().filter(|b| **b == b'\n').count()
}

/// Parse the content of one queue item file; `file` names it in errors.
/// Checks types and enum values; unknown fields are listed in
/// [`Item::ignored`], not refused (a newer chasquid may add some).
pub fn parse_item(bytes: &[u8], file: &str) -> std::result::Result<Item, ItemError> {
    let fail = |line, problem| ItemError {
        file: file.to_string(),
        line,
        problem,
    };
    let text = std::str::from_utf8(bytes).map_err(|e| fail(line_at(bytes, e.valid_up_to()), Problem::NotUtf8))?;
    let mut fields =
        textproto::parse(text).map_err(|e| fail(e.line, Problem::Syntax(format!("column {}: {}", e.col, e.msg))))?;
    item(&mut fields).map_err(|(line, problem)| fail(line, problem))
}

/// Fuzzing entry point: parse arbitrary bytes; when they parse, the item
/// formats and parses back equal (unknown fields aside). Panics only on a
/// broken invariant.
pub fn fuzz_item(data: &[u8]) {
    if let Ok(mut item) = parse_item(data, "fuzz") {
        item.ignored.clear();
        let text = format_item(&item);
        let back = parse_item(text.as_bytes(), "formatted").expect("a formatted item parses");
        assert_eq!(back, item);
    }
}

/// Quote bytes as chasquid's Go protobuf library does: UTF-8 as is,
/// `\n \r \t \" \\`, other control bytes and invalid UTF-8 as `\xNN`, C1
/// controls as `\u00NN`.
pub fn quote(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 2);
    out.push('"');
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
                c if (0x80..=0x9f).contains(&(c as u32)) => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out.push('"');
    out
}

/// Lines of a text-format message, two spaces per level of nesting.
struct Writer(String);

impl Writer {
    fn field(&mut self, indent: usize, name: &str, value: &str) {
        self.0.push_str(&"  ".repeat(indent));
        self.0.push_str(name);
        self.0.push_str(": ");
        self.0.push_str(value);
        self.0.push('\n');
    }

    fn close(&mut self) {
        self.0.push_str("}\n");
    }
}

/// An item in chasquid's layout (`prototext` multi-line output): fields
/// at their default value left out.
pub fn format_item(item: &Item) -> String {
    let mut w = Writer(String::new());
    if !item.id.is_empty() {
        w.field(0, "ID", &quote(item.id.as_bytes()));
    }
    if !item.from.is_empty() {
        w.field(0, "from", &quote(item.from.as_bytes()));
    }
    for t in &item.to {
        w.field(0, "To", &quote(t.as_bytes()));
    }
    for r in &item.rcpts {
        w.field(0, "rcpt", "{");
        if !r.address.is_empty() {
            w.field(1, "address", &quote(r.address.as_bytes()));
        }
        match r.kind {
            RcptType::Email => {}
            RcptType::Pipe => w.field(1, "type", "PIPE"),
            RcptType::Forward => w.field(1, "type", "FORWARD"),
        }
        match r.status {
            RcptStatus::Pending => {}
            RcptStatus::Sent => w.field(1, "status", "SENT"),
            RcptStatus::Failed => w.field(1, "status", "FAILED"),
        }
        if !r.last_failure_message.is_empty() {
            w.field(1, "last_failure_message", &quote(r.last_failure_message.as_bytes()));
        }
        if !r.original_address.is_empty() {
            w.field(1, "original_address", &quote(r.original_address.as_bytes()));
        }
        for v in &r.via {
            w.field(1, "via", &quote(v.as_bytes()));
        }
        w.close();
    }
    if !item.data.is_empty() {
        w.field(0, "data", &quote(&item.data));
    }
    if let Some((secs, nanos)) = item.created {
        w.field(0, "created_at_ts", "{");
        if secs != 0 {
            w.field(1, "seconds", &secs.to_string());
        }
        if nanos != 0 {
            w.field(1, "nanos", &nanos.to_string());
        }
        w.close();
    }
    w.0
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! fixture {
        ($name:literal) => {
            include_bytes!(concat!("../testdata/chasquid-1.11-queue/", $name)).as_slice()
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
}
