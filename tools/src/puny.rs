//! `idna.ToASCII` as chasquid's tools call it (Go's Punycode profile): each
//! dot-separated label that is not ASCII becomes `xn--` and its Punycode,
//! without mapping or case folding; an ASCII `xn--` label must decode to a
//! valid label.

/// Why a string could not be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PunyError {
    /// A label is not valid (Go's message: `idna: invalid label "..."`).
    #[error("idna: invalid label {}", tambo_common::gofmt::quote(.0))]
    InvalidLabel(String),
}

/// An ACE label's Punycode part decodes to something Go would accept.
fn valid_ace(rest: &str) -> bool {
    match idna::punycode::decode_to_string(rest) {
        Some(u) => {
            !u.is_empty()
                && !u.is_ascii()
                && !u.chars().any(char::is_control)
                && idna::punycode::encode_str(&u).as_deref() == Some(rest)
        }
        None => false,
    }
}

/// Convert `s` label by label.
pub fn to_ascii(s: &str) -> Result<String, PunyError> {
    let mut out = Vec::new();
    for label in s.split('.') {
        if label.is_ascii() {
            if let Some(rest) = label.strip_prefix("xn--")
                && !valid_ace(rest)
            {
                return Err(PunyError::InvalidLabel(rest.to_string()));
            }
            out.push(label.to_string());
        } else {
            let enc = idna::punycode::encode_str(label).ok_or_else(|| PunyError::InvalidLabel(label.to_string()))?;
            out.push(format!("xn--{enc}"));
        }
    }
    Ok(out.join("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_chasquid() {
        assert_eq!(to_ascii("fröm").unwrap(), "xn--frm-tna");
        assert_eq!(to_ascii("þo").unwrap(), "xn--o-hha");
        assert_eq!(to_ascii("from").unwrap(), "from");
        assert_eq!(to_ascii("<>").unwrap(), "<>");
        assert_eq!(to_ascii("xn--frm-tna").unwrap(), "xn--frm-tna");
        assert_eq!(to_ascii("xn--t").unwrap_err().to_string(), "idna: invalid label \"t\"");
        assert_eq!(to_ascii("xn--f").unwrap_err().to_string(), "idna: invalid label \"f\"");
    }
}
