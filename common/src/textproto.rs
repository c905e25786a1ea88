//! A parser (and a small writer helper) for the protobuf text format, as used
//! by chasquid's `chasquid.conf` and `users` files.
//!
//! The parser is schema-less: it produces a tree of [`Field`]s which the
//! callers (see [`crate::config`] and [`crate::userdb`]) interpret and check.
//! It never panics, whatever the input, and limits nesting depth.

use std::fmt;

/// Maximum nesting depth of messages; deeper input is rejected.
pub const MAX_DEPTH: usize = 64;

/// One `name: value` or `name { ... }` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// The field name as written.
    pub name: String,
    /// 1-based line on which the field name appears.
    pub line: usize,
    /// The field's value.
    pub value: Value,
}

/// The value of a field: a scalar or a nested message.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A scalar value (`name: value`).
    Scalar(Scalar),
    /// A nested message (`name { ... }`).
    Message(Vec<Field>),
}

/// A scalar value.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    /// A bare identifier: `true`, `false`, enum names, `inf`, ...
    Ident(String),
    /// An integer (decimal, hexadecimal `0x..` or octal `0..`).
    Int(i128),
    /// A floating-point number.
    Float(f64),
    /// A quoted string after escape processing (bytes, not necessarily UTF-8).
    Str(Vec<u8>),
}

impl Scalar {
    /// A short description of the kind of scalar, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Scalar::Ident(_) => "an identifier",
            Scalar::Int(_) => "an integer",
            Scalar::Float(_) => "a float",
            Scalar::Str(_) => "a string",
        }
    }
}

impl Value {
    /// A short description of the kind of value, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Scalar(s) => s.kind(),
            Value::Message(_) => "a message",
        }
    }
}

/// A syntax error, with its 1-based position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextprotoError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub col: usize,
    /// What went wrong.
    pub msg: String,
}

impl fmt::Display for TextprotoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}: {}", self.line, self.col, self.msg)
    }
}

impl std::error::Error for TextprotoError {}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Int(i128),
    Float(f64),
    Str(Vec<u8>),
    Punct(char),
    Eof,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("identifier {s:?}"),
            Tok::Int(i) => format!("integer {i}"),
            Tok::Float(f) => format!("float {f}"),
            Tok::Str(_) => "a string".to_string(),
            Tok::Punct(c) => format!("{c:?}"),
            Tok::Eof => "end of input".to_string(),
        }
    }
}

struct Lexer<'a> {
    /// The whole input; `pos` is a byte offset into it (always on a
    /// character boundary). Working on the `str` itself, rather than on a
    /// copy as `Vec<char>`, keeps the memory a parse needs at the size of
    /// the input (chasquid's queue items hold whole messages).
    src: &'a str,
    pos: usize,
    line: usize,
    col: usize,
}

#[derive(Debug, Clone)]
struct Spanned {
    tok: Tok,
    line: usize,
    col: usize,
}

impl<'a> Lexer<'a> {
    fn new(src: &'a str) -> Self {
        Lexer {
            src,
            pos: 0,
            line: 1,
            col: 1,
        }
    }

    fn rest(&self) -> &'a str {
        &self.src[self.pos..]
    }

    fn peek_char(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn peek_char_at(&self, off: usize) -> Option<char> {
        self.rest().chars().nth(off)
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek_char()?;
        self.pos += c.len_utf8();
        if c == '\n' {
            self.line += 1;
            self.col = 1;
        } else {
            self.col += 1;
        }
        Some(c)
    }

    fn err(&self, line: usize, col: usize, msg: impl Into<String>) -> TextprotoError {
        TextprotoError {
            line,
            col,
            msg: msg.into(),
        }
    }

    fn skip_space(&mut self) {
        while let Some(c) = self.peek_char() {
            if c == '#' {
                while let Some(c) = self.peek_char() {
                    if c == '\n' {
                        break;
                    }
                    self.bump();
                }
            } else if c.is_whitespace() {
                self.bump();
            } else {
                break;
            }
        }
    }

    fn next(&mut self) -> Result<Spanned, TextprotoError> {
        self.skip_space();
        let (line, col) = (self.line, self.col);
        let Some(c) = self.peek_char() else {
            return Ok(Spanned {
                tok: Tok::Eof,
                line,
                col,
            });
        };
        let tok = if c.is_ascii_alphabetic() || c == '_' {
            let mut s = String::new();
            while let Some(c) = self.peek_char() {
                if c.is_ascii_alphanumeric() || c == '_' {
                    s.push(c);
                    self.bump();
                } else {
                    break;
                }
            }
            Tok::Ident(s)
        } else if c.is_ascii_digit()
            || (c == '-' || c == '.')
                && self
                    .peek_char_at(1)
                    .is_some_and(|d| d.is_ascii_digit() || (c == '-' && d == '.'))
        {
            self.number(line, col)?
        } else if c == '"' || c == '\'' {
            self.string(c, line, col)?
        } else if "{}<>[]:;,-/.".contains(c) {
            self.bump();
            Tok::Punct(c)
        } else {
            return Err(self.err(line, col, format!("unexpected character {c:?}")));
        };
        Ok(Spanned { tok, line, col })
    }

    fn number(&mut self, line: usize, col: usize) -> Result<Tok, TextprotoError> {
        let mut neg = false;
        if self.peek_char() == Some('-') {
            neg = true;
            self.bump();
        }
        let mut text = String::new();
        let hex = self.peek_char() == Some('0') && matches!(self.peek_char_at(1), Some('x' | 'X'));
        while let Some(c) = self.peek_char() {
            let exp_sign = !hex && (c == '+' || c == '-') && text.ends_with(['e', 'E']);
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' || exp_sign {
                text.push(c);
                self.bump();
            } else {
                break;
            }
        }
        let bad = |msg: &str| TextprotoError {
            line,
            col,
            msg: format!("{msg}: {}{text}", if neg { "-" } else { "" }),
        };
        if hex {
            let digits = &text[2..];
            if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad("invalid hexadecimal number"));
            }
            let v = i128::from_str_radix(digits, 16).map_err(|_| bad("number out of range"))?;
            return Ok(Tok::Int(if neg { -v } else { v }));
        }
        let is_float = text.contains(['.', 'e', 'E'])
            || text.ends_with(['f', 'F']) && text.chars().all(|c| c.is_ascii_digit() || c == 'f' || c == 'F');
        if is_float {
            let t = text.trim_end_matches(['f', 'F']);
            if t.is_empty() || !t.chars().all(|c| c.is_ascii_digit() || "eE.+-".contains(c)) {
                return Err(bad("invalid number"));
            }
            let v: f64 = t.parse().map_err(|_| bad("invalid number"))?;
            return Ok(Tok::Float(if neg { -v } else { v }));
        }
        if !text.chars().all(|c| c.is_ascii_digit()) || text.is_empty() {
            return Err(bad("invalid number"));
        }
        let v = if text.len() > 1 && text.starts_with('0') {
            if !text.chars().all(|c| ('0'..='7').contains(&c)) {
                return Err(bad("invalid octal number"));
            }
            i128::from_str_radix(&text[1..], 8).map_err(|_| bad("number out of range"))?
        } else {
            text.parse::<i128>().map_err(|_| bad("number out of range"))?
        };
        Ok(Tok::Int(if neg { -v } else { v }))
    }

    fn string(&mut self, quote: char, line: usize, col: usize) -> Result<Tok, TextprotoError> {
        self.bump(); // opening quote
        let mut out = Vec::new();
        loop {
            // A run of plain characters is copied at once.
            let rest = self.rest();
            let run = rest.find([quote, '\\', '\n']).unwrap_or(rest.len());
            if run > 0 {
                out.extend_from_slice(&rest.as_bytes()[..run]);
                self.col += rest[..run].chars().count();
                self.pos += run;
                continue;
            }
            let (cl, cc) = (self.line, self.col);
            let Some(c) = self.bump() else {
                return Err(self.err(line, col, "unterminated string"));
            };
            if c == quote {
                break;
            }
            match c {
                '\n' => return Err(self.err(line, col, "newline in string")),
                '\\' => {
                    let Some(e) = self.bump() else {
                        return Err(self.err(line, col, "unterminated string"));
                    };
                    match e {
                        'n' => out.push(b'\n'),
                        'r' => out.push(b'\r'),
                        't' => out.push(b'\t'),
                        'a' => out.push(0x07),
                        'b' => out.push(0x08),
                        'f' => out.push(0x0c),
                        'v' => out.push(0x0b),
                        '\\' => out.push(b'\\'),
                        '"' => out.push(b'"'),
                        '\'' => out.push(b'\''),
                        '?' => out.push(b'?'),
                        'x' | 'X' => {
                            let mut v: u32 = 0;
                            let mut n = 0;
                            while n < 2 {
                                match self.peek_char().and_then(|d| d.to_digit(16)) {
                                    Some(d) => {
                                        v = v * 16 + d;
                                        n += 1;
                                        self.bump();
                                    }
                                    None => break,
                                }
                            }
                            if n == 0 {
                                return Err(self.err(cl, cc, "\\x escape without hex digits"));
                            }
                            out.push(v as u8);
                        }
                        'u' | 'U' => {
                            let want = if e == 'u' { 4 } else { 8 };
                            let mut v: u32 = 0;
                            for _ in 0..want {
                                match self.peek_char().and_then(|d| d.to_digit(16)) {
                                    Some(d) => {
                                        v = v.saturating_mul(16).saturating_add(d);
                                        self.bump();
                                    }
                                    None => {
                                        return Err(self.err(cl, cc, format!("\\{e} escape needs {want} hex digits")));
                                    }
                                }
                            }
                            let Some(ch) = char::from_u32(v) else {
                                return Err(self.err(cl, cc, "invalid Unicode escape"));
                            };
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                        }
                        '0'..='7' => {
                            let mut v: u32 = e.to_digit(8).unwrap_or(0);
                            let mut n = 1;
                            while n < 3 {
                                match self.peek_char().and_then(|d| d.to_digit(8)) {
                                    Some(d) => {
                                        v = v * 8 + d;
                                        n += 1;
                                        self.bump();
                                    }
                                    None => break,
                                }
                            }
                            if v > 0xff {
                                return Err(self.err(cl, cc, "octal escape out of range"));
                            }
                            out.push(v as u8);
                        }
                        other => {
                            return Err(self.err(cl, cc, format!("unknown escape \\{other}")));
                        }
                    }
                }
                c => {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        Ok(Tok::Str(out))
    }
}

struct Parser<'a> {
    lex: Lexer<'a>,
    cur: Spanned,
}

impl<'a> Parser<'a> {
    fn new(src: &'a str) -> Result<Self, TextprotoError> {
        let mut lex = Lexer::new(src);
        let cur = lex.next()?;
        Ok(Parser { lex, cur })
    }

    fn advance(&mut self) -> Result<Spanned, TextprotoError> {
        let next = self.lex.next()?;
        Ok(std::mem::replace(&mut self.cur, next))
    }

    fn err_here(&self, msg: impl Into<String>) -> TextprotoError {
        TextprotoError {
            line: self.cur.line,
            col: self.cur.col,
            msg: msg.into(),
        }
    }

    fn is_punct(&self, c: char) -> bool {
        self.cur.tok == Tok::Punct(c)
    }

    fn fields(&mut self, close: Option<char>, depth: usize) -> Result<Vec<Field>, TextprotoError> {
        if depth > MAX_DEPTH {
            return Err(self.err_here("messages nested too deeply"));
        }
        let mut out = Vec::new();
        loop {
            match (&self.cur.tok, close) {
                (Tok::Eof, None) => return Ok(out),
                (Tok::Eof, Some(c)) => {
                    return Err(self.err_here(format!("unexpected end of input, expected {c:?}")));
                }
                (Tok::Punct(p), Some(c)) if *p == c => {
                    self.advance()?;
                    return Ok(out);
                }
                _ => {}
            }
            self.field(&mut out, depth)?;
            if self.is_punct(',') || self.is_punct(';') {
                self.advance()?;
            }
        }
    }

    fn field_name(&mut self) -> Result<(String, usize), TextprotoError> {
        let line = self.cur.line;
        match self.cur.tok.clone() {
            Tok::Ident(name) => {
                self.advance()?;
                Ok((name, line))
            }
            Tok::Punct('[') => {
                // Extension or Any type URL: [foo.bar] or [type.googleapis.com/x.Y].
                self.advance()?;
                let mut name = String::from("[");
                loop {
                    match self.cur.tok.clone() {
                        Tok::Ident(s) => name.push_str(&s),
                        Tok::Punct(c @ ('.' | '/')) => name.push(c),
                        Tok::Punct(']') => {
                            self.advance()?;
                            name.push(']');
                            return Ok((name, line));
                        }
                        other => {
                            return Err(self.err_here(format!("unexpected {} in extension name", other.describe())));
                        }
                    }
                    self.advance()?;
                }
            }
            other => Err(self.err_here(format!("expected a field name, found {}", other.describe()))),
        }
    }

    fn field(&mut self, out: &mut Vec<Field>, depth: usize) -> Result<(), TextprotoError> {
        let (name, line) = self.field_name()?;
        let colon = if self.is_punct(':') {
            self.advance()?;
            true
        } else {
            false
        };
        if let Some(close) = self.open_delim() {
            self.advance()?;
            let v = self.fields(Some(close), depth + 1)?;
            out.push(Field {
                name,
                line,
                value: Value::Message(v),
            });
            return Ok(());
        }
        if !colon {
            return Err(self.err_here(format!(
                "expected ':' or '{{' after field name {name:?}, found {}",
                self.cur.tok.describe()
            )));
        }
        if self.is_punct('[') {
            // List syntax: name: [v1, v2, ...]
            self.advance()?;
            if self.is_punct(']') {
                self.advance()?;
                return Ok(());
            }
            loop {
                let value = if let Some(close) = self.open_delim() {
                    self.advance()?;
                    Value::Message(self.fields(Some(close), depth + 1)?)
                } else {
                    Value::Scalar(self.scalar()?)
                };
                out.push(Field {
                    name: name.clone(),
                    line,
                    value,
                });
                if self.is_punct(',') {
                    self.advance()?;
                } else if self.is_punct(']') {
                    self.advance()?;
                    return Ok(());
                } else {
                    return Err(self.err_here(format!(
                        "expected ',' or ']' in list, found {}",
                        self.cur.tok.describe()
                    )));
                }
            }
        }
        let s = self.scalar()?;
        out.push(Field {
            name,
            line,
            value: Value::Scalar(s),
        });
        Ok(())
    }

    fn open_delim(&self) -> Option<char> {
        match self.cur.tok {
            Tok::Punct('{') => Some('}'),
            Tok::Punct('<') => Some('>'),
            _ => None,
        }
    }

    fn scalar(&mut self) -> Result<Scalar, TextprotoError> {
        let sp = self.advance()?;
        match sp.tok {
            Tok::Ident(s) => Ok(Scalar::Ident(s)),
            Tok::Int(i) => Ok(Scalar::Int(i)),
            Tok::Float(f) => Ok(Scalar::Float(f)),
            Tok::Str(mut s) => {
                while let Tok::Str(more) = &self.cur.tok {
                    s.extend_from_slice(more);
                    self.advance()?;
                }
                Ok(Scalar::Str(s))
            }
            Tok::Punct('-') => match self.cur.tok.clone() {
                Tok::Ident(s) if s == "inf" || s == "infinity" || s == "nan" => {
                    self.advance()?;
                    Ok(Scalar::Ident(format!("-{s}")))
                }
                other => Err(self.err_here(format!("expected a number after '-', found {}", other.describe()))),
            },
            other => Err(TextprotoError {
                line: sp.line,
                col: sp.col,
                msg: format!("expected a value, found {}", other.describe()),
            }),
        }
    }
}

/// Parses a whole text-format document into its top-level fields.
pub fn parse(text: &str) -> Result<Vec<Field>, TextprotoError> {
    let mut p = Parser::new(text)?;
    p.fields(None, 0)
}

/// Fuzzing entry point: parses arbitrary bytes (lossily decoded as UTF-8),
/// discarding the result. Must never panic.
pub fn fuzz_parse(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = parse(&text);
}

/// Escapes bytes for use inside a double-quoted text-format string:
/// printable ASCII as is, `"` and `\` backslash-escaped, anything else as a
/// three-digit octal escape (`\ooo`).
pub fn escape_bytes(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len());
    for &c in b {
        match c {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(c as char),
            _ => {
                out.push('\\');
                out.push((b'0' + (c >> 6)) as char);
                out.push((b'0' + ((c >> 3) & 7)) as char);
                out.push((b'0' + (c & 7)) as char);
            }
        }
    }
    out
}

/// Like [`escape_bytes`], but surrounded with double quotes.
pub fn quote_bytes(b: &[u8]) -> String {
    format!("\"{}\"", escape_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn one(text: &str) -> Field {
        let mut f = parse(text).unwrap();
        assert_eq!(f.len(), 1, "{f:?}");
        f.remove(0)
    }

    fn scalar(text: &str) -> Scalar {
        match one(text).value {
            Value::Scalar(s) => s,
            v => panic!("not a scalar: {v:?}"),
        }
    }

    #[test]
    fn scalars() {
        assert_eq!(scalar("a: true"), Scalar::Ident("true".into()));
        assert_eq!(scalar("a: 42"), Scalar::Int(42));
        assert_eq!(scalar("a: -42"), Scalar::Int(-42));
        assert_eq!(scalar("a: 0x1F"), Scalar::Int(31));
        assert_eq!(scalar("a: -0x10"), Scalar::Int(-16));
        assert_eq!(scalar("a: 010"), Scalar::Int(8));
        assert_eq!(scalar("a: 0"), Scalar::Int(0));
        assert_eq!(scalar("a: 1.5"), Scalar::Float(1.5));
        assert_eq!(scalar("a: -2.5e3"), Scalar::Float(-2500.0));
        assert_eq!(scalar("a: 1e-2"), Scalar::Float(0.01));
        assert_eq!(scalar("a: .5"), Scalar::Float(0.5));
        assert_eq!(scalar("a: 2f"), Scalar::Float(2.0));
        assert_eq!(scalar("a: -inf"), Scalar::Ident("-inf".into()));
        assert_eq!(scalar("a: \"hi\""), Scalar::Str(b"hi".to_vec()));
        assert_eq!(scalar("a: 'hi'"), Scalar::Str(b"hi".to_vec()));
        assert_eq!(scalar("a: \"a\" 'b' \"c\""), Scalar::Str(b"abc".to_vec()));
    }

    #[test]
    fn escapes() {
        assert_eq!(
            scalar(r#"a: "\n\r\t\\\"\'\a\b\f\v\?""#),
            Scalar::Str(b"\n\r\t\\\"'\x07\x08\x0c\x0b?".to_vec())
        );
        assert_eq!(
            scalar(r#"a: "\x41\x7a\xff\x5""#),
            Scalar::Str(vec![0x41, 0x7a, 0xff, 0x05])
        );
        assert_eq!(
            scalar(r#"a: "\101\0\377\12x""#),
            Scalar::Str(vec![0o101, 0, 0xff, 0o12, b'x'])
        );
        assert_eq!(scalar("a: \"ñ\""), Scalar::Str("ñ".as_bytes().to_vec()));
        assert_eq!(
            scalar(r#"a: "\u00f1\U0001F600""#),
            Scalar::Str("ñ😀".as_bytes().to_vec())
        );
        assert!(parse(r#"a: "\u00""#).is_err());
        assert!(parse(r#"a: "\ud800""#).is_err());
        assert!(parse(r#"a: "\UFFFFFFFF""#).is_err());
        assert!(parse(r#"a: "\400""#).is_err());
        assert!(parse(r#"a: "\q""#).is_err());
        assert!(parse(r#"a: "\x""#).is_err());
    }

    #[test]
    fn messages_and_separators() {
        let text = "# comment\n\
                    a: 1, b: 'x'; # trailing\n\
                    m { x: 1 }\n\
                    n: { y: 2 }\n\
                    o < z: 3 >\n\
                    p: < >\n\
                    r: [1, 2]\n";
        let f = parse(text).unwrap();
        let names: Vec<_> = f.iter().map(|f| (f.name.as_str(), f.line)).collect();
        assert_eq!(
            names,
            vec![
                ("a", 2),
                ("b", 2),
                ("m", 3),
                ("n", 4),
                ("o", 5),
                ("p", 6),
                ("r", 7),
                ("r", 7)
            ]
        );
        assert_eq!(
            f[2].value,
            Value::Message(vec![Field {
                name: "x".into(),
                line: 3,
                value: Value::Scalar(Scalar::Int(1))
            }])
        );
        assert_eq!(f[5].value, Value::Message(vec![]));
    }

    #[test]
    fn extension_names() {
        let f = one("[foo.bar]: 1");
        assert_eq!(f.name, "[foo.bar]");
        let f = one("[type.googleapis.com/x.Y] { a: 1 }");
        assert_eq!(f.name, "[type.googleapis.com/x.Y]");
        assert!(parse("[foo: 1").is_err());
    }

    #[test]
    fn nested() {
        let f = one("users: { key: \"a\" value: { scrypt: { logN: 14 } } }");
        let Value::Message(inner) = f.value else { panic!() };
        assert_eq!(inner.len(), 2);
        assert_eq!(inner[1].name, "value");
    }

    #[test]
    fn errors_have_positions() {
        let e = parse("a: 1\nb 2\n").unwrap_err();
        assert_eq!((e.line, e.col), (2, 3));
        assert!(e.to_string().starts_with("line 2, column 3: "), "{e}");
        let e = parse("a: \"abc").unwrap_err();
        assert_eq!((e.line, e.col), (1, 4));
        assert!(e.msg.contains("unterminated"));
        let e = parse("m {\n a: 1\n").unwrap_err();
        assert!(e.msg.contains("end of input"), "{e}");
        let e = parse("m { a: 1 >").unwrap_err();
        assert_eq!(e.line, 1);
        assert!(parse("a:").is_err());
        assert!(parse("a: }").is_err());
        assert!(parse("}").is_err());
        assert!(parse("a: 0x").is_err());
        assert!(parse("a: 09").is_err());
        assert!(parse("a: 12abc").is_err());
        assert!(parse("a: 99999999999999999999999999999999999999999").is_err());
        assert!(parse("a: \"x\ny\"").is_err());
        assert!(parse("a: @").is_err());
    }

    #[test]
    fn depth_limit() {
        let deep = "a {".repeat(10_000);
        assert!(parse(&deep).is_err());
        let ok = format!("{}{}", "a {".repeat(10), "}".repeat(10));
        assert!(parse(&ok).is_ok());
    }

    #[test]
    fn escape_roundtrip() {
        let all: Vec<u8> = (0..=255u8).collect();
        let q = quote_bytes(&all);
        assert!(q.is_ascii());
        assert_eq!(scalar(&format!("a: {q}")), Scalar::Str(all));
        assert_eq!(escape_bytes(b"a\"b\\c\n"), "a\\\"b\\\\c\\012");
    }

    #[test]
    fn never_panics_on_random_input() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x7a4b0);
        let alphabet = b"ab_:{}<>[];,#\"'\\x0179-.eE \n\t";
        for i in 0..10_000 {
            let len = rng.gen_range(0..200);
            let data: Vec<u8> = if i % 2 == 0 {
                (0..len).map(|_| rng.r#gen::<u8>()).collect()
            } else {
                (0..len).map(|_| alphabet[rng.gen_range(0..alphabet.len())]).collect()
            };
            fuzz_parse(&data);
        }
    }
}
