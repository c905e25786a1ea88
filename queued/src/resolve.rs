//! Recipient resolution: which final recipients an address stands for,
//! and how each is reached. smtpd's RCPT checks and the queue use the same
//! resolver, so whatever is accepted at RCPT can be delivered.
//!
//! For an address of a local domain, as chasquid does: look the address
//! up in the domain's aliases (drop characters removed, suffix kept) plus
//! the `alias-resolve` hook; if nothing matches, again without the suffix;
//! if still nothing, the user itself when it exists, else the catch-all
//! (`*`). Alias targets are resolved again, up to 10 levels; pipes and
//! `via` forwards are final. A target that loops back to an address being
//! expanded is delivered to that user's mailbox when the user exists (so
//! `alice: alice, bob` keeps a copy), and is an error otherwise.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tambo_common::aliases::{AliasTarget, parse_rhs, remove_drop_characters, remove_drops_and_suffix};
use tambo_common::names::{normalize_address, normalize_user, split_address};
use tambo_ipc::metrics::{self, Metric};
use tambo_ipc::proto::{AuthReply, AuthRequest, HookFailure as RunFailure, HookReply, HookRequest, RcptRoute};
use tambo_ipc::worker::PeerSlot;

use crate::aliases::AliasDb;
use crate::hooks::{HookSlot, hook_present};
use crate::srs::{Srs, day_number, is_srs};

/// How many levels of aliases are followed.
pub const MAX_DEPTH: usize = 10;
/// Most final recipients one address may expand to.
pub const MAX_EXPANSION: usize = 1000;
/// How long the `alias-resolve` hook may run.
pub const ALIAS_HOOK_TIMEOUT: Duration = Duration::from_secs(5);

/// One final recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The final address.
    pub address: String,
    /// How to reach it.
    pub route: RcptRoute,
    /// Set when this recipient is already known to fail (an alias pointing
    /// at a local user that does not exist): it is recorded as failed and
    /// reported in a DSN instead of being attempted.
    pub failure: Option<String>,
    /// For a remote recipient reached through a local alias: the domain of
    /// the alias that forwards it (whose key ARC-seals the message).
    pub forwarded_by: Option<String>,
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
    /// The aliases are broken for this address (a loop, too deep, too
    /// many recipients): a permanent failure.
    #[error("cannot resolve {0}: {1}")]
    Broken(String, String),
}

/// The user part used for user lookups: drop characters removed, and
/// anything from the first suffix separator on cut off (`john.doe+news` →
/// `johndoe` with the defaults). A user that would become empty is kept.
pub fn lookup_user(user: &str, drop_characters: &str, suffix_separators: &str) -> String {
    let clean = remove_drops_and_suffix(user, drop_characters, suffix_separators);
    if clean.is_empty() { user.to_string() } else { clean }
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
    /// Users authd recently said exist.
    pub users: &'a UserCache,
    /// The aliases files.
    pub aliases: &'a AliasDb,
    /// The configuration directory (for the `alias-resolve` hook).
    pub config_dir: &'a Path,
    /// hookd, which runs the `alias-resolve` hook.
    pub hookd: &'a Arc<HookSlot>,
    /// SRS, to resolve bounces to rewritten senders (`SRS0=…@local`).
    pub srs: Option<&'a Srs>,
}

/// How long to wait for authd when it is restarting.
const AUTHD_WAIT: Duration = Duration::from_secs(5);

/// How long a "this user exists" answer from authd is reused.
pub const USER_CACHE_TTL: Duration = Duration::from_secs(2);
/// Most users remembered at once.
const USER_CACHE_MAX: usize = 4096;

/// Positive answers of authd to "does this user exist", kept for
/// [`USER_CACHE_TTL`]: a message's recipient is checked at RCPT and again
/// when the message is committed, each time a round trip
/// smtpd → queued → authd; under load the second one (and the checks of
/// the next messages to the same user) are answered from here. Only
/// existence is remembered, so a new user is never refused because of the
/// cache; a removed user is accepted for at most the TTL more. Cleared on
/// reload.
#[derive(Default)]
pub struct UserCache {
    seen: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

impl UserCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, std::time::Instant>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn exists(&self, key: &str) -> bool {
        self.lock().get(key).is_some_and(|t| t.elapsed() < USER_CACHE_TTL)
    }

    fn insert(&self, key: String) {
        let mut seen = self.lock();
        if seen.len() >= USER_CACHE_MAX {
            seen.retain(|_, t| t.elapsed() < USER_CACHE_TTL);
            if seen.len() >= USER_CACHE_MAX {
                seen.clear();
            }
        }
        seen.insert(key, std::time::Instant::now());
    }

    /// Forget everything (reload).
    pub fn clear(&self) {
        self.lock().clear();
    }
}

type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

struct Walk {
    /// Addresses being expanded (cleaned), outermost first.
    chain: Vec<String>,
    out: Vec<Resolved>,
    /// Whether there is an `alias-resolve` hook.
    hook: bool,
}

impl Walk {
    fn push(&mut self, top: &str, r: Resolved) -> Result<(), ResolveError> {
        if !self.out.iter().any(|x| x.address == r.address && x.route == r.route) {
            if self.out.len() >= MAX_EXPANSION {
                return Err(ResolveError::Broken(
                    top.to_string(),
                    format!("expands to more than {MAX_EXPANSION} recipients"),
                ));
            }
            self.out.push(r);
        }
        Ok(())
    }
}

impl ResolverContext<'_> {
    /// Whether `domain` is one of ours.
    pub fn is_local(&self, domain: &str) -> bool {
        domain == "localhost" || self.local_domains.iter().any(|d| d == domain)
    }

    /// Resolve a normalised address into its final recipients.
    pub async fn resolve(&self, address: &str) -> Result<Vec<Resolved>, ResolveError> {
        let mut walk = Walk {
            chain: Vec::new(),
            out: Vec::new(),
            hook: hook_present(self.config_dir, "alias-resolve"),
        };
        self.walk(address, address, 0, &mut walk).await?;
        Ok(walk.out)
    }

    fn clean(&self, address: &str) -> String {
        let (user, domain) = split_address(address);
        format!(
            "{}@{domain}",
            lookup_user(user, self.drop_characters, self.suffix_separators)
        )
    }

    fn walk<'s>(
        &'s self,
        top: &'s str,
        address: &'s str,
        depth: usize,
        w: &'s mut Walk,
    ) -> BoxFut<'s, Result<(), ResolveError>> {
        Box::pin(async move {
            if depth >= MAX_DEPTH {
                return Err(ResolveError::Broken(
                    top.to_string(),
                    format!("more than {MAX_DEPTH} levels of aliases ({})", w.chain.join(" → ")),
                ));
            }
            let (user, domain) = split_address(address);
            if !self.is_local(domain) {
                let forwarded_by = w.chain.last().map(|a| split_address(a).1.to_string());
                return w.push(
                    top,
                    Resolved {
                        address: address.to_string(),
                        route: RcptRoute::Remote { via: Vec::new() },
                        failure: None,
                        forwarded_by,
                    },
                );
            }
            // A bounce to an address we rewrote (SRS): back to the original
            // sender, if the hash and the age are right; otherwise no such
            // user, whatever the aliases say.
            if let Some(srs) = self.srs
                && is_srs(user)
            {
                let now = day_number(crate::manager::unix_now());
                return match srs.reverse(user, now) {
                    Ok(Some(original)) => match normalize_address(&original) {
                        Ok(original) => self.walk(top, &original, depth + 1, w).await,
                        Err(_) => Err(ResolveError::Unknown(address.to_string())),
                    },
                    Ok(None) | Err(_) => {
                        tracing::info!("{address}: not a valid SRS address of ours");
                        Err(ResolveError::Unknown(address.to_string()))
                    }
                };
            }
            let aliases = self.aliases.get(domain, self.drop_characters, self.suffix_separators);
            // Exact match first (so `user+tag: …` can have an alias of its
            // own), then without the suffix.
            let key = normalize_user(&remove_drop_characters(
                user,
                self.drop_characters,
                self.suffix_separators,
            ))
            .unwrap_or_else(|_| user.to_string());
            let mut targets = aliases.get(&key).cloned().unwrap_or_default();
            targets.extend(self.run_hook(w, address, domain).await?);
            let clean_user = lookup_user(user, self.drop_characters, self.suffix_separators);
            let clean = format!("{clean_user}@{domain}");
            // As chasquid: nothing for the address as given, so look again
            // with drop characters and suffix removed, the hook included
            // (it is asked about the clean address too).
            if targets.is_empty() && clean != address {
                targets = aliases.get(&clean_user).cloned().unwrap_or_default();
                targets.extend(self.run_hook(w, &clean, domain).await?);
            }
            if targets.is_empty() {
                if self.user_exists(&clean_user, domain).await? {
                    return w.push(top, local(&clean_user, domain, None));
                }
                targets = aliases.get("*").cloned().unwrap_or_default();
                targets.extend(self.run_hook(w, &format!("*@{domain}"), domain).await?);
                if targets.is_empty() {
                    if depth == 0 {
                        return Err(ResolveError::Unknown(address.to_string()));
                    }
                    // An alias names a local address that is no user: as
                    // chasquid does, it goes to the delivery agent (or LMTP
                    // server) as it is, which may know mailboxes the users
                    // file does not list, and whose refusal reaches the
                    // sender in a DSN.
                    return w.push(top, local(&clean_user, domain, None));
                }
            }
            w.chain.push(clean.clone());
            for t in targets {
                match t {
                    AliasTarget::Pipe(argv) => w.push(
                        top,
                        Resolved {
                            address: clean.clone(),
                            route: RcptRoute::Pipe { argv },
                            failure: None,
                            forwarded_by: None,
                        },
                    )?,
                    AliasTarget::Forward { address: a, via } => w.push(
                        top,
                        Resolved {
                            address: star(&a, user),
                            route: RcptRoute::Remote { via },
                            failure: None,
                            forwarded_by: Some(domain.to_string()),
                        },
                    )?,
                    AliasTarget::Email(a) => {
                        let a = star(&a, user);
                        let a_clean = self.clean(&a);
                        if w.chain.contains(&a_clean) {
                            let (au, ad) = split_address(&a_clean);
                            if self.is_local(ad) && self.user_exists(au, ad).await? {
                                w.push(top, local(au, ad, None))?;
                                continue;
                            }
                            return Err(ResolveError::Broken(
                                top.to_string(),
                                format!("alias loop: {} → {a_clean}", w.chain.join(" → ")),
                            ));
                        }
                        self.walk(top, &a, depth + 1, w).await?;
                    }
                }
            }
            w.chain.pop();
            Ok(())
        })
    }

    /// The `alias-resolve` hook's answer for `address`, parsed like a
    /// right-hand side.
    async fn run_hook(&self, w: &Walk, address: &str, domain: &str) -> Result<Vec<AliasTarget>, ResolveError> {
        let answer = if w.hook {
            self.run_alias_hook(address, domain).await
        } else {
            Ok(None)
        };
        count_alias_hook(match &answer {
            Ok(None) => "absent",
            Ok(Some(_)) => "success",
            Err(HookFailure::Failed(_)) => "failure",
            Err(HookFailure::BadOutput(_)) => "bad_output",
        });
        match answer {
            Ok(targets) => Ok(targets.unwrap_or_default()),
            Err(HookFailure::Failed(why) | HookFailure::BadOutput(why)) => {
                Err(ResolveError::Temporary(address.to_string(), why))
            }
        }
    }

    /// Have hookd run the `alias-resolve` hook and parse its answer;
    /// `None` when hookd finds no hook it can run.
    async fn run_alias_hook(&self, address: &str, domain: &str) -> Result<Option<Vec<AliasTarget>>, HookFailure> {
        let req = HookRequest::AliasResolve {
            address: address.to_string(),
            timeout_ms: ALIAS_HOOK_TIMEOUT.as_millis() as u32,
        };
        let hook = self.config_dir.join("hooks/alias-resolve");
        let hook = hook.display();
        let out = match crate::hooks::ask(self.hookd, req, Vec::new(), ALIAS_HOOK_TIMEOUT).await {
            HookReply::Absent => return Ok(None),
            HookReply::Ran(out) => out,
            HookReply::Failed(e @ (RunFailure::Spawn { .. } | RunFailure::Timeout { .. } | RunFailure::Other(_))) => {
                return Err(HookFailure::Failed(e.to_string()));
            }
        };
        if out.code != Some(0) {
            let code = out.code.map(|c| c.to_string()).unwrap_or_else(|| "a signal".into());
            let stderr = String::from_utf8_lossy(&out.stderr);
            let why = match stderr.trim() {
                "" => String::new(),
                s => format!(": {s}"),
            };
            return Err(HookFailure::Failed(format!("{hook} exited with {code}{why}")));
        }
        let bad = |why: String| HookFailure::BadOutput(format!("{hook}: {why}"));
        let text = String::from_utf8(out.stdout).map_err(|_| bad("output is not UTF-8".into()))?;
        parse_rhs(&text, domain)
            .map(Some)
            .map_err(|e| bad(format!("bad output: {e}")))
    }

    async fn user_exists(&self, user: &str, domain: &str) -> Result<bool, ResolveError> {
        let key = format!("{user}@{domain}");
        if self.users.exists(&key) {
            return Ok(true);
        }
        let req = AuthRequest::UserExists {
            user: user.to_string(),
            domain: domain.to_string(),
        };
        match self.authd.call(req, Vec::new(), AUTHD_WAIT).await {
            Ok((AuthReply::Exists(b), _)) => {
                if b {
                    self.users.insert(key);
                }
                Ok(b)
            }
            Ok((AuthReply::Error(e), _)) => Err(ResolveError::Temporary(format!("{user}@{domain}"), e)),
            Ok((
                AuthReply::Auth(_)
                | AuthReply::Certificates { .. }
                | AuthReply::Signature(_)
                | AuthReply::RelayAuth(_)
                | AuthReply::DkimSignatures(_)
                | AuthReply::ArcSet { .. },
                _,
            )) => Err(ResolveError::Temporary(
                format!("{user}@{domain}"),
                "unexpected reply from authd".into(),
            )),
            Err(e) => Err(ResolveError::Temporary(
                format!("{user}@{domain}"),
                format!("authd: {e}"),
            )),
        }
    }
}

fn local(user: &str, domain: &str, failure: Option<String>) -> Resolved {
    Resolved {
        address: format!("{user}@{domain}"),
        route: RcptRoute::Local {
            user: user.to_string(),
            domain: domain.to_string(),
        },
        failure,
        forwarded_by: None,
    }
}

/// A target whose user is `*` stands for the original user, as given.
fn star(target: &str, original_user: &str) -> String {
    match split_address(target) {
        ("*", d) => format!("{original_user}@{d}"),
        _ => target.to_string(),
    }
}

/// Why the `alias-resolve` hook gave no answer (both are temporary).
enum HookFailure {
    /// It could not run, timed out or exited non-zero.
    Failed(String),
    /// Its output is not an aliases right-hand side.
    BadOutput(String),
}

/// Count one outcome of the `alias-resolve` hook.
fn count_alias_hook(outcome: &str) {
    metrics::inc(Metric::HookRuns, &[("hook", "alias-resolve"), ("outcome", outcome)]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use std::sync::Arc;

    /// An authd stand-in that knows the users `alice`, `bob`, `carol`, `dave`
    /// of d.org.
    async fn fake_authd() -> Arc<PeerSlot<AuthRequest, AuthReply>> {
        let (a, b) = UnixStream::pair().unwrap();
        tokio::spawn(async move {
            let handler = |req: AuthRequest, _fds| async move {
                let rep = match req {
                    AuthRequest::UserExists { user, domain } => AuthReply::Exists(
                        domain == "d.org" && ["alice", "bob", "carol", "dave"].contains(&user.as_str()),
                    ),
                    AuthRequest::Authenticate { .. }
                    | AuthRequest::Certificates
                    | AuthRequest::Sign { .. }
                    | AuthRequest::RelayAuth
                    | AuthRequest::DkimSign { .. }
                    | AuthRequest::ArcSeal { .. } => AuthReply::Error("no".into()),
                };
                (rep, Vec::new())
            };
            let _ = tambo_ipc::rpc::serve(b, "queued-authd", handler).await;
        });
        let slot = PeerSlot::new("queued-authd");
        slot.install(a).await.unwrap();
        slot
    }

    #[test]
    fn user_cache_remembers_existence_for_a_while() {
        let c = UserCache::default();
        assert!(!c.exists("a@d.org"));
        c.insert("a@d.org".into());
        assert!(c.exists("a@d.org"));
        c.lock()
            .insert("old@d.org".into(), std::time::Instant::now() - USER_CACHE_TTL);
        assert!(!c.exists("old@d.org"));
        for i in 0..USER_CACHE_MAX + 10 {
            c.insert(format!("u{i}@d.org"));
        }
        assert!(c.lock().len() <= USER_CACHE_MAX);
        c.clear();
        assert!(!c.exists("a@d.org"));
    }

    struct Fixture {
        dir: tempfile::TempDir,
        authd: Arc<PeerSlot<AuthRequest, AuthReply>>,
        users: UserCache,
        db: AliasDb,
        domains: Vec<String>,
        srs: Srs,
        hookd: Arc<HookSlot>,
    }

    impl Fixture {
        async fn new(aliases: &str) -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join("domains/d.org")).unwrap();
            std::fs::write(dir.path().join("domains/d.org/aliases"), aliases).unwrap();
            let db = AliasDb::new(
                ["d.org", "other.org"]
                    .iter()
                    .map(|d| (d.to_string(), dir.path().join("domains").join(d).join("aliases")))
                    .collect(),
            );
            let hookd = crate::hooks::tests::local_hookd(dir.path(), Vec::new()).await;
            Fixture {
                dir,
                hookd,
                authd: fake_authd().await,
                users: UserCache::default(),
                db,
                domains: vec!["d.org".into()],
                srs: Srs::from_secret(b"test secret"),
            }
        }

        fn hook(&self, body: &str) {
            let h = self.dir.path().join("hooks");
            std::fs::create_dir_all(&h).unwrap();
            crate::hooks::tests::script(&h, "alias-resolve", body);
        }

        async fn resolve_full(&self, a: &str) -> Result<Vec<Resolved>, ResolveError> {
            let ctx = ResolverContext {
                local_domains: &self.domains,
                drop_characters: ".",
                suffix_separators: "+",
                authd: &self.authd,
                users: &self.users,
                aliases: &self.db,
                config_dir: self.dir.path(),
                hookd: &self.hookd,
                srs: Some(&self.srs),
            };
            ctx.resolve(a).await
        }

        async fn resolve(&self, a: &str) -> Result<Vec<(String, String)>, ResolveError> {
            let r = self.resolve_full(a).await?;
            Ok(r.into_iter()
                .map(|r| {
                    let how = match (&r.route, &r.failure) {
                        (_, Some(f)) => format!("failed: {f}"),
                        (RcptRoute::Local { .. }, None) => "local".to_string(),
                        (RcptRoute::Pipe { argv }, None) => format!("pipe {}", argv.join(" ")),
                        (RcptRoute::Remote { via }, None) => format!("remote {}", via.join("/")),
                    };
                    (r.address, how)
                })
                .collect())
        }
    }

    fn v(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    /// Remote recipients reached through an alias know the alias's domain
    /// (the ARC sealer); a remote RCPT itself does not.
    #[tokio::test]
    async fn forwarding_domain() {
        let f = Fixture::new("team: alice, out@remote.org\nfwd: x@far.org via mx.far.org\nnested: team\n").await;
        let by = |r: &[Resolved]| -> Vec<(String, Option<String>)> {
            r.iter().map(|r| (r.address.clone(), r.forwarded_by.clone())).collect()
        };
        let d = Some("d.org".to_string());
        assert_eq!(
            by(&f.resolve_full("team@d.org").await.unwrap()),
            [("alice@d.org".into(), None), ("out@remote.org".into(), d.clone())]
        );
        assert_eq!(
            by(&f.resolve_full("nested@d.org").await.unwrap())[1],
            ("out@remote.org".into(), d.clone())
        );
        assert_eq!(
            by(&f.resolve_full("fwd@d.org").await.unwrap()),
            [("x@far.org".into(), d)]
        );
        assert_eq!(
            by(&f.resolve_full("y@elsewhere.org").await.unwrap()),
            [("y@elsewhere.org".into(), None)]
        );
    }

    #[tokio::test]
    async fn aliases_of_every_kind() {
        let f = Fixture::new(
            "# aliases\n\
             team: alice, bob@d.org, out@remote.org\n\
             pipe: | /usr/bin/handler --work\n\
             fwd: x@far.org via mx1.far.org/mx2.far.org\n\
             nested: team, carol\n\
             alice.x+special: bob\n\
             dave: dave, copy@remote.org\n\
             ghost: nobody\n\
             *: *@catch.org\n",
        )
        .await;
        assert_eq!(f.resolve("alice@d.org").await.unwrap(), v(&[("alice@d.org", "local")]));
        assert_eq!(
            f.resolve("a.l.ice+tag@d.org").await.unwrap(),
            v(&[("alice@d.org", "local")])
        );
        assert_eq!(
            f.resolve("team@d.org").await.unwrap(),
            v(&[
                ("alice@d.org", "local"),
                ("bob@d.org", "local"),
                ("out@remote.org", "remote ")
            ])
        );
        assert_eq!(
            f.resolve("nested+x@d.org").await.unwrap(),
            v(&[
                ("alice@d.org", "local"),
                ("bob@d.org", "local"),
                ("out@remote.org", "remote "),
                ("carol@d.org", "local")
            ])
        );
        assert_eq!(
            f.resolve("pipe@d.org").await.unwrap(),
            v(&[("pipe@d.org", "pipe /usr/bin/handler --work")])
        );
        assert_eq!(
            f.resolve("fwd@d.org").await.unwrap(),
            v(&[("x@far.org", "remote mx1.far.org/mx2.far.org")])
        );
        // An alias with a suffix wins over the user without it.
        assert_eq!(
            f.resolve("alicex+special@d.org").await.unwrap(),
            v(&[("bob@d.org", "local")])
        );
        assert_eq!(
            f.resolve("alicex+other@d.org").await.unwrap(),
            v(&[("alicex+other@catch.org", "remote ")])
        );
        // Catch-all, with the original user as given.
        assert_eq!(
            f.resolve("who.ever+t@d.org").await.unwrap(),
            v(&[("who.ever+t@catch.org", "remote ")])
        );
        // An alias naming itself keeps a copy in the mailbox... when the
        // user exists.
        assert_eq!(
            f.resolve("dave@d.org").await.unwrap(),
            v(&[("dave@d.org", "local"), ("copy@remote.org", "remote ")])
        );
        assert_eq!(
            f.resolve("remote@else.org").await.unwrap(),
            v(&[("remote@else.org", "remote ")])
        );
    }

    #[tokio::test]
    async fn unknown_loops_and_depth() {
        let mut chain = String::new();
        for i in 0..12 {
            chain.push_str(&format!("l{i}: l{}\n", i + 1));
        }
        chain.push_str("l12: alice\nloop1: loop2\nloop2: loop1\nghost: nobody, alice\nkeep: keep, bob\n");
        let f = Fixture::new(&chain).await;
        assert_eq!(
            f.resolve("nobody@d.org").await,
            Err(ResolveError::Unknown("nobody@d.org".into()))
        );
        let e = f.resolve("loop1@d.org").await.unwrap_err();
        assert!(
            matches!(&e, ResolveError::Broken(_, m) if m.contains("alias loop")),
            "{e}"
        );
        let e = f.resolve("l0@d.org").await.unwrap_err();
        assert!(matches!(&e, ResolveError::Broken(_, m) if m.contains("levels")), "{e}");
        assert_eq!(f.resolve("l5@d.org").await.unwrap(), v(&[("alice@d.org", "local")]));
        // An alias to a local address that is no user: delivered as it
        // is (the delivery agent decides), as in chasquid.
        let r = f.resolve("ghost@d.org").await.unwrap();
        assert_eq!(r, v(&[("nobody@d.org", "local"), ("alice@d.org", "local")]));
        // "keep" is no user: its self-reference is a loop.
        assert!(matches!(f.resolve("keep@d.org").await, Err(ResolveError::Broken(..))));
    }

    #[tokio::test]
    async fn alias_resolve_hook() {
        let f = Fixture::new("list: alice\n").await;
        f.hook(
            "case \"$1\" in\n\
               list@d.org) echo carol ;;\n\
               dyn@d.org) echo 'bob, x@y.org' ;;\n\
               pipehook@d.org) echo '| /bin/cat -n' ;;\n\
               bad@d.org) echo 'a b c' ;;\n\
               slow@d.org) sleep 30 ;;\n\
               fail@d.org) exit 1 ;;\n\
               vicuna@d.org) echo alice ;;\n\
             esac",
        );
        // The hook is asked again about the address without drop
        // characters and suffix, as chasquid asks it.
        assert_eq!(
            f.resolve("vi.cu.na@d.org").await.unwrap(),
            v(&[("alice@d.org", "local")])
        );
        assert_eq!(
            f.resolve("vicuna+tag@d.org").await.unwrap(),
            v(&[("alice@d.org", "local")])
        );
        assert_eq!(
            f.resolve("list@d.org").await.unwrap(),
            v(&[("alice@d.org", "local"), ("carol@d.org", "local")])
        );
        assert_eq!(
            f.resolve("dyn@d.org").await.unwrap(),
            v(&[("bob@d.org", "local"), ("x@y.org", "remote ")])
        );
        assert_eq!(
            f.resolve("pipehook@d.org").await.unwrap(),
            v(&[("pipehook@d.org", "pipe /bin/cat -n")])
        );
        assert!(matches!(f.resolve("bad@d.org").await, Err(ResolveError::Temporary(..))));
        // Counted as bad output (chasquid's resolve:parse_err), not success.
        let bad_output: Vec<(String, String)> = [("hook", "alias-resolve"), ("outcome", "bad_output")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert!(
            metrics::global()
                .snapshot()
                .iter()
                .any(|m| m.metric == Metric::HookRuns && m.labels == bad_output && m.value >= 1.0)
        );
        assert_eq!(f.resolve("alice@d.org").await.unwrap(), v(&[("alice@d.org", "local")]));
        assert!(matches!(
            f.resolve("fail@d.org").await,
            Err(ResolveError::Temporary(..))
        ));
        assert!(matches!(
            f.resolve("nobody@d.org").await,
            Err(ResolveError::Unknown(..))
        ));
        let started = std::time::Instant::now();
        assert!(matches!(
            f.resolve("slow@d.org").await,
            Err(ResolveError::Temporary(..))
        ));
        assert!(started.elapsed() < Duration::from_secs(20));
    }

    #[tokio::test]
    async fn srs_bounces() {
        let f = Fixture::new("*: alice\nfwd: out@remote.org\n").await;
        let today = day_number(crate::manager::unix_now());
        let rewritten = f.srs.forward("joe.x+y@far.org", "d.org", today);
        // Normalisation lowercases the local part: still valid.
        let lower = normalize_address(&rewritten).unwrap();
        assert_eq!(f.resolve(&lower).await.unwrap(), v(&[("joe.x+y@far.org", "remote ")]));
        // A forged or expired one is no user, catch-all or not.
        let forged = lower.replace("joe.x", "root");
        assert_eq!(f.resolve(&forged).await, Err(ResolveError::Unknown(forged.clone())));
        let old = f.srs.forward("joe@far.org", "d.org", today - 30);
        let old = normalize_address(&old).unwrap();
        assert_eq!(f.resolve(&old).await, Err(ResolveError::Unknown(old.clone())));
        // An SRS address of another domain is just remote.
        assert_eq!(
            f.resolve("srs0=x=y=z=w@else.org").await.unwrap(),
            v(&[("srs0=x=y=z=w@else.org", "remote ")])
        );
        // SRS1 goes back to the first forwarder's SRS0 address.
        let srs1 = f.srs.forward("SRS0=abc=de=far.org=joe@one.org", "d.org", today);
        assert_eq!(
            f.resolve(&normalize_address(&srs1).unwrap()).await.unwrap(),
            v(&[("srs0=abc=de=far.org=joe@one.org", "remote ")])
        );
    }

    #[test]
    fn drop_and_suffix() {
        assert_eq!(lookup_user("john.doe+news", ".", "+"), "johndoe");
        assert_eq!(lookup_user("a-b_c", "", "-_"), "a");
        assert_eq!(lookup_user("+x", ".", "+"), "+x");
        assert_eq!(lookup_user("plain", ".", "+"), "plain");
        assert_eq!(star("*@x.org", "Pe.pe+a"), "Pe.pe+a@x.org");
        assert_eq!(star("a@x.org", "b"), "a@x.org");
    }
}
