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
mod tests;
