//! Lines as Go's standard `log` package writes them: on stderr, prefixed
//! with the local date and time (`2006/01/02 15:04:05 `).

use std::io::Write;

/// The local time as Go's log prints it.
fn stamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let t: libc::time_t = now as libc::time_t;
    // SAFETY: an all-zero `tm` is a valid value, and localtime_r only
    // writes into the struct it is given.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to live locals.
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    if !ok {
        return "1970/01/01 00:00:00".into();
    }
    format!(
        "{:04}/{:02}/{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// `log.Printf`: one line (a newline is added when missing).
pub fn print(msg: &str) {
    let mut line = format!("{} {msg}", stamp());
    if !line.ends_with('\n') {
        line.push('\n');
    }
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// `log.Fatal`: the line, then exit status 1.
pub fn fatal(msg: &str) -> i32 {
    print(msg);
    1
}

#[cfg(test)]
mod tests {
    #[test]
    fn stamp_shape() {
        let s = super::stamp();
        assert_eq!(s.len(), 19, "{s}");
        assert_eq!(&s[4..5], "/");
        assert_eq!(&s[13..14], ":");
    }
}
