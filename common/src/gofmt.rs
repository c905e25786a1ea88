//! Text as Go programs print it, for the chasquid-compatible tools whose
//! messages must match chasquid's byte for byte: `%q` quoting and the
//! wording of system errors.

/// A string quoted like Go's `strconv.Quote` (`%q`): double quotes,
/// backslash escapes for quotes, backslashes and control characters,
/// printable Unicode kept as it is.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0b' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\x7f' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// An I/O error as Go words it: the system's text in lower case ("no
/// such file or directory"), without Rust's "(os error N)".
pub fn io_error(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => {
            let text = nix::errno::Errno::from_raw(n).desc();
            let mut chars = text.chars();
            match chars.next() {
                Some(first) => first.to_lowercase().chain(chars).collect(),
                None => e.to_string(),
            }
        }
        None => e.to_string(),
    }
}

/// A failed path operation as Go's `*fs.PathError` prints it:
/// `open PATH: no such file or directory`.
pub fn path_error(op: &str, path: &std::path::Path, e: &std::io::Error) -> String {
    format!("{op} {}: {}", path.display(), io_error(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_like_go() {
        assert_eq!(quote("Nananana"), "\"Nananana\"");
        assert_eq!(quote("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(quote("l1\nl2\t\x01\x7f"), "\"l1\\nl2\\t\\x01\\x7f\"");
        assert_eq!(quote("ñandú"), "\"ñandú\"");
        assert_eq!(quote("\u{85}"), "\"\\u0085\"");
    }

    #[test]
    fn errors_like_go() {
        let e = std::io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(io_error(&e), "no such file or directory");
        assert_eq!(
            path_error("open", std::path::Path::new("x/y"), &e),
            "open x/y: no such file or directory"
        );
        let e = std::io::Error::other("custom");
        assert_eq!(io_error(&e), "custom");
    }
}
