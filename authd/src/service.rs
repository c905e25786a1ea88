//! The users databases and the answers authd gives from them.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::Rng;
use tambo_common::relayauth::RelayCredentials;
use tambo_common::userdb::UserDb;
use tambo_ipc::metrics::{self, Metric};
use tambo_ipc::proto::{AuthOutcome, AuthReply, AuthRequest, MailLogEvent, WorkerStart};
use tambo_ipc::secrets::{SecretKind, SecretSet};
use tambo_ipc::worker::mail_log;

use crate::dkim::{DkimKeys, SignError};
use crate::dovecot::Dovecot;
use crate::keys::KeyStore;
use crate::throttle::Throttle;

/// Every password check takes at least this long, plus jitter, whatever
/// its result, so timing tells an attacker nothing.
const MIN_AUTH_TIME: Duration = Duration::from_millis(100);
const AUTH_JITTER_MS: u64 = 50;

/// authd's state.
pub struct AuthService {
    dbs: RwLock<Arc<HashMap<String, UserDb>>>,
    dkim: RwLock<Arc<DkimKeys>>,
    throttle: Throttle,
    keys: KeyStore,
    /// Dovecot, when `dovecot_auth` is on: consulted after the users file.
    dovecot: Option<Dovecot>,
    /// The domain of `hostname` (normalised): a login without a domain is
    /// one of its users (a tambo addition; chasquid asks only Dovecot).
    hostname_domain: RwLock<String>,
    /// The smarthost credentials (`relay_auth_file`): `None` when not
    /// configured, an error text when the file does not load.
    relay: RwLock<Option<Result<RelayCredentials, String>>>,
}

/// The normalised domain of `hostname`.
fn hostname_domain(start: &WorkerStart) -> String {
    let h = &start.config.hostname;
    tambo_common::names::normalize_domain(h).unwrap_or_else(|_| h.to_lowercase())
}

/// Read `relay_auth_file`, when set (the supervisor opened it).
fn load_relay(secrets: &SecretSet) -> Option<Result<RelayCredentials, String>> {
    let r = match secrets.read(&SecretKind::RelayAuth)? {
        Err(e) => Err(e.to_string()),
        Ok((path, bytes)) => match String::from_utf8(bytes) {
            Ok(text) => RelayCredentials::parse(&text, &path).map_err(|e| e.to_string()),
            Err(_) => Err(format!("{}: not UTF-8", path.display())),
        },
    };
    match &r {
        Ok(c) => tracing::info!("relay_host credentials loaded for user {}", c.user),
        Err(e) => tracing::error!("relay_host credentials: {e}"),
    }
    Some(r)
}

/// The users databases the supervisor opened (`domains/<d>/users`), for
/// every local domain: a domain without a users file has no users (its
/// aliases may still receive mail). A file that does not parse is an error
/// naming its file and line.
pub fn load_dbs(secrets: &SecretSet, domains: &[String]) -> anyhow::Result<HashMap<String, UserDb>> {
    let mut out = HashMap::new();
    for d in domains {
        let db = match secrets.read(&SecretKind::Users { domain: d.clone() }) {
            None => UserDb::default(),
            Some(read) => {
                let (path, bytes) = read.map_err(|e| anyhow::anyhow!("users file error: {e}"))?;
                let text = String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{}: not UTF-8", path.display()))?;
                UserDb::parse(&text, &path).map_err(|e| anyhow::anyhow!("users file error: {e}"))?
            }
        };
        out.insert(d.clone(), db);
    }
    Ok(out)
}

impl AuthService {
    /// Load the databases and keys of the start message from the files
    /// the supervisor opened.
    pub fn load(start: &WorkerStart, secrets: &SecretSet) -> anyhow::Result<AuthService> {
        let dbs = load_dbs(secrets, &start.local_domains).context("loading users")?;
        let dkim = DkimKeys::load(secrets).context("DKIM loading error")?;
        if dkim.len() > 0 {
            tracing::info!("{} DKIM key(s) loaded", dkim.len());
        }
        let keys = KeyStore::load(secrets).context("loading TLS certificates")?;
        let relay = match load_relay(secrets) {
            Some(Err(e)) => anyhow::bail!("relay_auth_file: {e}"),
            other => other,
        };
        let c = &start.config;
        let dovecot = c
            .dovecot_auth
            .then(|| Dovecot::new(&c.dovecot_userdb_path, &c.dovecot_client_path));
        if dovecot.is_some() {
            tracing::info!("Dovecot authentication enabled");
        }
        Ok(AuthService {
            dbs: RwLock::new(Arc::new(dbs)),
            dkim: RwLock::new(Arc::new(dkim)),
            throttle: Throttle::default(),
            keys,
            dovecot,
            hostname_domain: RwLock::new(hostname_domain(start)),
            relay: RwLock::new(relay),
        })
    }

    /// Load again; on error the old databases (or the old certificates)
    /// stay. Users and certificates are reloaded independently.
    pub fn reload(&self, start: &WorkerStart, secrets: &SecretSet) -> anyhow::Result<()> {
        *self.hostname_domain.write().unwrap_or_else(|p| p.into_inner()) = hostname_domain(start);
        let users = self.reload_users(start, secrets);
        let dkim = DkimKeys::load(secrets).context("reloading DKIM keys").map(|dkim| {
            *self.dkim.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(dkim);
            tracing::info!("DKIM keys reloaded");
        });
        let keys = self.keys.reload(secrets).context("reloading TLS certificates");
        let relay = match load_relay(secrets) {
            Some(Err(e)) => Err(anyhow::anyhow!("{e}")),
            fresh => {
                *self.relay.write().unwrap_or_else(|p| p.into_inner()) = fresh;
                Ok(())
            }
        };
        users.and(dkim).and(keys).and(relay)
    }

    /// Load the users files again (after a change the supervisor saw, or a
    /// reload); on error the old databases stay.
    pub fn reload_users(&self, start: &WorkerStart, secrets: &SecretSet) -> anyhow::Result<()> {
        let dbs = load_dbs(secrets, &start.local_domains).context("reloading users")?;
        *self.dbs.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(dbs);
        tracing::info!("users reloaded");
        Ok(())
    }

    fn dbs(&self) -> Arc<HashMap<String, UserDb>> {
        self.dbs.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Answer one request.
    pub async fn handle(self: &Arc<Self>, req: AuthRequest) -> AuthReply {
        match req {
            AuthRequest::UserExists { user, domain } => {
                let dbs = self.dbs();
                let Some(db) = dbs.get(&domain) else {
                    return AuthReply::Exists(false);
                };
                if db.exists(&user) {
                    return AuthReply::Exists(true);
                }
                match &self.dovecot {
                    None => AuthReply::Exists(false),
                    Some(d) => match d.exists(&format!("{user}@{domain}")).await {
                        Ok(found) => AuthReply::Exists(found),
                        // Not "no": smtpd then answers with a temporary
                        // failure instead of bouncing a real user's mail.
                        Err(e) => {
                            tracing::warn!("{e}");
                            AuthReply::Error(format!("{e}"))
                        }
                    },
                }
            }
            AuthRequest::DkimSign {
                domain,
                headers,
                body_hash,
            } => {
                let keys = self.dkim.read().unwrap_or_else(|p| p.into_inner()).clone();
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let res = tokio::task::spawn_blocking(move || keys.sign(&domain, &headers, &body_hash, now)).await;
                let (reply, result) = match res {
                    Ok(Ok(sigs)) if sigs.is_empty() => (AuthReply::DkimSignatures(sigs), None),
                    Ok(Ok(sigs)) => (AuthReply::DkimSignatures(sigs), Some("signed")),
                    // The message cannot be signed as it stands: it goes
                    // out unsigned rather than never.
                    Ok(Err(e @ (SignError::From | SignError::TooLarge))) => {
                        tracing::warn!("not DKIM-signing a message: {e}");
                        (AuthReply::DkimSignatures(Vec::new()), Some("unsigned"))
                    }
                    Ok(Err(e)) => (AuthReply::Error(format!("DKIM: {e}")), Some("error")),
                    Err(e) => (AuthReply::Error(format!("DKIM: {e}")), Some("error")),
                };
                // No key for the domain is no signing, not an outcome.
                if let Some(result) = result {
                    metrics::inc(Metric::DkimSignings, &[("result", result)]);
                }
                reply
            }
            AuthRequest::ArcSeal {
                domain,
                headers,
                body_hash,
                chain,
                results,
            } => {
                let keys = self.dkim.read().unwrap_or_else(|p| p.into_inner()).clone();
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let res = tokio::task::spawn_blocking(move || {
                    crate::arc::seal(&keys, &domain, &headers, &body_hash, chain, &results, now)
                })
                .await;
                match res {
                    Ok(Ok(crate::arc::Sealed::Set(headers))) => AuthReply::ArcSet {
                        headers,
                        skipped: String::new(),
                    },
                    Ok(Ok(crate::arc::Sealed::Skipped(why))) => AuthReply::ArcSet {
                        headers: String::new(),
                        skipped: why,
                    },
                    Ok(Err(e)) => AuthReply::Error(format!("ARC: {e}")),
                    Err(e) => AuthReply::Error(format!("ARC: {e}")),
                }
            }
            AuthRequest::Authenticate {
                user,
                domain,
                password,
                client_ip,
            } => {
                let started = Instant::now();
                let jitter = Duration::from_millis(rand::thread_rng().gen_range(0..AUTH_JITTER_MS));
                let ip = client_ip.clone();
                let mut who = format!("{user}@{domain}");
                let outcome = self.authenticate(user, domain, password, client_ip).await;
                let result = match &outcome {
                    AuthOutcome::Success { identity } => {
                        who = identity.clone();
                        "success"
                    }
                    AuthOutcome::Failure => "failure",
                    AuthOutcome::Throttled => "throttled",
                };
                metrics::inc(Metric::AuthAttempts, &[("result", result)]);
                mail_log(MailLogEvent::Auth {
                    ok: result == "success",
                    user: who,
                    ip,
                });
                tokio::time::sleep_until((started + MIN_AUTH_TIME + jitter).into()).await;
                AuthReply::Auth(outcome)
            }
            AuthRequest::Certificates => self.keys.certificates(),
            AuthRequest::Sign {
                generation,
                name,
                scheme,
                message,
            } => self.keys.sign(generation, &name, scheme, &message),
            AuthRequest::RelayAuth => match &*self.relay.read().unwrap_or_else(|p| p.into_inner()) {
                None => AuthReply::RelayAuth(None),
                Some(Ok(c)) => AuthReply::RelayAuth(Some(c.auth_plain())),
                Some(Err(e)) => AuthReply::Error(e.clone()),
            },
        }
    }

    /// Check a password: the users file of `domain` (for a login without
    /// domain, of `hostname`'s domain), then Dovecot when it is on, as
    /// chasquid asks it: `user@domain`, or the bare `user` (identity
    /// `user@`).
    async fn authenticate(self: &Arc<Self>, user: String, domain: String, password: String, ip: String) -> AuthOutcome {
        let key = format!("{user}@{domain}");
        if self.throttle.is_blocked(&ip, &key) {
            tracing::info!(ip, user = key, "authentication throttled");
            return AuthOutcome::Throttled;
        }
        let db_domain = if domain.is_empty() {
            self.hostname_domain.read().unwrap_or_else(|p| p.into_inner()).clone()
        } else {
            domain.clone()
        };
        let dbs = self.dbs();
        let (u, d, p) = (user.clone(), db_domain.clone(), password.clone());
        let mut ok = tokio::task::spawn_blocking(move || match dbs.get(&d) {
            Some(db) => db.authenticate(&u, &p),
            None => {
                // Same work for an unknown domain as for an unknown user.
                UserDb::default().authenticate(&u, &p)
            }
        })
        .await
        .unwrap_or(false);
        let mut identity = format!("{user}@{db_domain}");
        if !ok && let Some(dc) = &self.dovecot {
            let id = if domain.is_empty() { user.clone() } else { key.clone() };
            ok = match dc.authenticate(&id, &password).await {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!("{e}");
                    false
                }
            };
            identity = key.clone();
        }
        if ok {
            AuthOutcome::Success { identity }
        } else {
            self.throttle.record_failure(&ip, &key);
            AuthOutcome::Failure
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn start_with(dir: &Path) -> WorkerStart {
        WorkerStart {
            config: Default::default(),
            config_dir: dir.to_string_lossy().into_owned(),
            local_domains: vec!["example.com".into(), "empty.org".into()],
            domain_dirs: Vec::new(),
            verbosity: 0,
            unprivileged: true,
            dns_servers: Vec::new(),
            agent_env: Vec::new(),
        }
    }

    /// Load authd's state from `dir` as the supervisor would hand it over
    /// (a certificate is added: authd needs one).
    fn load_in(dir: &Path) -> anyhow::Result<AuthService> {
        let certs = dir.join("certs/mx.example.com");
        std::fs::create_dir_all(&certs).unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["mx.example.com".to_string()]).unwrap();
        std::fs::write(certs.join("fullchain.pem"), cert.cert.pem()).unwrap();
        std::fs::write(certs.join("privkey.pem"), cert.key_pair.serialize_pem()).unwrap();
        let start = start_with(dir);
        let dirs: Vec<(String, String)> = start.local_domains.iter().map(|d| (d.clone(), d.clone())).collect();
        let secrets = SecretSet::open(dir, &dirs, "").map_err(anyhow::Error::msg)?;
        AuthService::load(&start, &secrets)
    }

    #[tokio::test]
    async fn answers_from_the_users_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("domains/example.com")).unwrap();
        std::fs::create_dir_all(dir.path().join("domains/empty.org")).unwrap();
        let mut db = UserDb::default();
        db.add_user("alice", "secret").unwrap();
        db.write_atomic(&dir.path().join("domains/example.com/users")).unwrap();
        let svc = Arc::new(load_in(dir.path()).unwrap());
        let exists = |u: &str, d: &str| AuthRequest::UserExists {
            user: u.into(),
            domain: d.into(),
        };
        assert_eq!(
            svc.handle(exists("alice", "example.com")).await,
            AuthReply::Exists(true)
        );
        assert_eq!(svc.handle(exists("bob", "example.com")).await, AuthReply::Exists(false));
        assert_eq!(svc.handle(exists("alice", "empty.org")).await, AuthReply::Exists(false));
        let auth = |p: &str| AuthRequest::Authenticate {
            user: "alice".into(),
            domain: "example.com".into(),
            password: p.into(),
            client_ip: "192.0.2.1".into(),
        };
        let t = Instant::now();
        assert_eq!(
            svc.handle(auth("secret")).await,
            AuthReply::Auth(AuthOutcome::Success {
                identity: "alice@example.com".into()
            })
        );
        assert!(t.elapsed() >= MIN_AUTH_TIME);
        assert_eq!(svc.handle(auth("wrong")).await, AuthReply::Auth(AuthOutcome::Failure));
    }

    #[test]
    fn broken_users_file_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("domains/example.com")).unwrap();
        std::fs::create_dir_all(dir.path().join("domains/empty.org")).unwrap();
        std::fs::write(
            dir.path().join("domains/example.com/users"),
            "users: {\n  nonsense: 1\n}\n",
        )
        .unwrap();
        let err = format!("{:#}", load_in(dir.path()).err().unwrap());
        assert!(err.contains("users:2"), "{err}");
    }
}
