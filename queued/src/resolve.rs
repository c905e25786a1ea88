//! Recipient resolution: which final recipients an address stands for,
//! and how each is reached. smtpd's RCPT checks and the queue use the same
//! resolver, so whatever is accepted at RCPT can be delivered.

use std::time::Duration;

use tambo_common::names::split_address;
use tambo_ipc::proto::{AuthReply, AuthRequest, RcptRoute};
use tambo_ipc::worker::PeerSlot;

/// One final recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The final address.
    pub address: String,
    /// How to reach it.
    pub route: RcptRoute,
}

/// Why an address does not resolve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// No such local user or alias.
    #[error("no such user: {0}")]
    Unknown(String),
    /// Could not decide now (authd unreachable, hook failed).
    #[error("temporary failure resolving {0}: {1}")]
    Temporary(String, String),
}

/// The user part used for lookups: drop characters removed, and anything
/// from the first suffix separator on cut off (`john.doe+news` → `johndoe`
/// with the defaults).
pub fn lookup_user(user: &str, drop_characters: &str, suffix_separators: &str) -> String {
    let base = match user.find(|c| suffix_separators.contains(c)) {
        Some(i) if i > 0 => &user[..i],
        _ => user,
    };
    base.chars().filter(|c| !drop_characters.contains(*c)).collect()
}

/// What the resolver needs to know.
pub struct ResolverContext<'a> {
    /// Normalised local domains.
    pub local_domains: &'a [String],
    /// `drop_characters` from the configuration.
    pub drop_characters: &'a str,
    /// `suffix_separators` from the configuration.
    pub suffix_separators: &'a str,
    /// The channel to authd, to ask whether users exist.
    pub authd: &'a PeerSlot<AuthRequest, AuthReply>,
}

/// How long to wait for authd when it is restarting.
const AUTHD_WAIT: Duration = Duration::from_secs(5);

impl ResolverContext<'_> {
    /// Whether `domain` is one of ours.
    pub fn is_local(&self, domain: &str) -> bool {
        domain == "localhost" || self.local_domains.iter().any(|d| d == domain)
    }

    /// Resolve a normalised address into its final recipients.
    pub async fn resolve(&self, address: &str) -> Result<Vec<Resolved>, ResolveError> {
        let (user, domain) = split_address(address);
        if !self.is_local(domain) {
            return Ok(vec![Resolved {
                address: address.to_string(),
                route: RcptRoute::Remote { via: Vec::new() },
            }]);
        }
        let user = lookup_user(user, self.drop_characters, self.suffix_separators);
        if self.user_exists(&user, domain).await? {
            return Ok(vec![Resolved {
                address: format!("{user}@{domain}"),
                route: RcptRoute::Local {
                    user,
                    domain: domain.to_string(),
                },
            }]);
        }
        Err(ResolveError::Unknown(address.to_string()))
    }

    async fn user_exists(&self, user: &str, domain: &str) -> Result<bool, ResolveError> {
        let req = AuthRequest::UserExists {
            user: user.to_string(),
            domain: domain.to_string(),
        };
        match self.authd.call(req, Vec::new(), AUTHD_WAIT).await {
            Ok((AuthReply::Exists(b), _)) => Ok(b),
            Ok((AuthReply::Error(e), _)) => Err(ResolveError::Temporary(format!("{user}@{domain}"), e)),
            Ok((AuthReply::Auth(_) | AuthReply::Certificates { .. } | AuthReply::Signature(_), _)) => Err(
                ResolveError::Temporary(format!("{user}@{domain}"), "unexpected reply from authd".into()),
            ),
            Err(e) => Err(ResolveError::Temporary(
                format!("{user}@{domain}"),
                format!("authd: {e}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_and_suffix() {
        assert_eq!(lookup_user("john.doe+news", ".", "+"), "johndoe");
        assert_eq!(lookup_user("a-b_c", "", "-_"), "a");
        assert_eq!(lookup_user("+x", ".", "+"), "+x");
        assert_eq!(lookup_user("plain", ".", "+"), "plain");
    }
}
