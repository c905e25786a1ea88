//! queued's side of the per-domain security levels: it owns
//! `data_dir/domaininfo`, tells deliverd the recorded outgoing level of each
//! remote domain in the job, and records a higher level when deliverd
//! reports one (never a lower one: levels only go up, until an operator runs
//! `tambo domaininfo-remove`).
//!
//! Incoming levels (chasquid's "check connection security level"): smtpd
//! asks [`DomainInfo::check_incoming`] at MAIL FROM for unauthenticated
//! senders whose SPF passed, and queued raises the level with
//! [`DomainInfo::record_incoming`] when such a message, received over TLS,
//! is committed. Unlike chasquid, which raises the level at MAIL FROM, a
//! level is only raised by mail that was actually accepted.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use tambo_common::domaininfo::{self, DomainRecord, SecLevel};

/// The in-memory copy of the store, written through on every change.
pub struct DomainInfo {
    dir: PathBuf,
    records: Mutex<HashMap<String, DomainRecord>>,
    /// Held while a file is written, so that concurrent writers of one
    /// domain do not share the temporary file and the last write carries
    /// the latest record.
    writing: Mutex<()>,
}

impl DomainInfo {
    /// Load every record of `dir` (bad files are logged and skipped).
    pub fn load(dir: PathBuf) -> DomainInfo {
        let d = DomainInfo {
            dir,
            records: Mutex::new(HashMap::new()),
            writing: Mutex::new(()),
        };
        d.reload();
        d
    }

    /// Read the directory again (SIGHUP; after `tambo domaininfo-remove`).
    pub fn reload(&self) {
        let (map, errors) = domaininfo::load_dir(&self.dir);
        for e in errors {
            tracing::warn!("domaininfo: {e}");
        }
        tracing::debug!("domaininfo: {} domain(s)", map.len());
        *self.records.lock().unwrap_or_else(|p| p.into_inner()) = map;
    }

    /// The recorded outgoing level of `domain`.
    pub fn outgoing(&self, domain: &str) -> SecLevel {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(domain)
            .map(|r| r.outgoing)
            .unwrap_or_default()
    }

    /// Record that `domain` was reached at `level`, if that is higher
    /// than what is known.
    pub fn record_outgoing(&self, domain: &str, level: SecLevel) {
        self.raise(domain, "outgoing", level, |r| &mut r.outgoing);
    }

    /// The recorded incoming level of `domain`.
    pub fn incoming(&self, domain: &str) -> SecLevel {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(domain)
            .map(|r| r.incoming)
            .unwrap_or_default()
    }

    /// The incoming check: may mail claiming `domain` come over a
    /// connection at `level`? Returns the recorded level and the verdict
    /// (refused when `level` is below the recorded one).
    pub fn check_incoming(&self, domain: &str, level: SecLevel) -> (SecLevel, bool) {
        let recorded = self.incoming(domain);
        (recorded, level >= recorded)
    }

    /// Record that mail from `domain` (SPF pass, not authenticated) was
    /// accepted over a connection at `level`, if that is higher than what
    /// is known.
    pub fn record_incoming(&self, domain: &str, level: SecLevel) {
        self.raise(domain, "incoming", level, |r| &mut r.incoming);
    }

    /// Raise one of the levels of `domain` to `level` and write the record
    /// through (durably) when it changed. Levels never go down here.
    fn raise(&self, domain: &str, which: &str, level: SecLevel, field: fn(&mut DomainRecord) -> &mut SecLevel) {
        // A new record starts at the lowest level: nothing to raise.
        if domain.is_empty() || level == SecLevel::Plain {
            return;
        }
        {
            let mut map = self.records.lock().unwrap_or_else(|p| p.into_inner());
            let rec = map.entry(domain.to_string()).or_insert_with(|| DomainRecord {
                name: domain.to_string(),
                ..Default::default()
            });
            let current = field(rec);
            if level <= *current {
                return;
            }
            tracing::info!(
                domain,
                "{which} security level raised from {} to {}",
                current.name(),
                level.name()
            );
            *current = level;
        }
        // Write outside the records lock (an fsync must not hold up every
        // lookup), from the latest state, one writer at a time.
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let rec = self
            .records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(domain)
            .cloned();
        if let Some(rec) = rec
            && let Err(e) = domaininfo::write_record(&self.dir, &rec)
        {
            tracing::error!("domaininfo: {e}");
        }
    }

    /// Forget `domain` and remove its file (`tambo domaininfo-remove`
    /// against a running server). `Ok(false)` when nothing was known.
    pub fn remove(&self, domain: &str) -> Result<bool, domaininfo::DomainInfoError> {
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let known = self
            .records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(domain)
            .is_some();
        let removed = domaininfo::remove_record(&self.dir, domain)?;
        Ok(known || removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_only_go_up_and_persist() {
        let dir = tempfile::tempdir().unwrap();
        let d = DomainInfo::load(dir.path().to_path_buf());
        assert_eq!(d.outgoing("a.test"), SecLevel::Plain);
        d.record_outgoing("a.test", SecLevel::TlsSecure);
        d.record_outgoing("a.test", SecLevel::TlsInsecure);
        assert_eq!(d.outgoing("a.test"), SecLevel::TlsSecure);
        let again = DomainInfo::load(dir.path().to_path_buf());
        assert_eq!(again.outgoing("a.test"), SecLevel::TlsSecure);
        domaininfo::remove_record(dir.path(), "a.test").unwrap();
        again.reload();
        assert_eq!(again.outgoing("a.test"), SecLevel::Plain);
    }

    #[test]
    fn incoming_ratchet() {
        let dir = tempfile::tempdir().unwrap();
        let d = DomainInfo::load(dir.path().to_path_buf());
        // Nothing known: plain is fine.
        assert_eq!(d.check_incoming("b.test", SecLevel::Plain), (SecLevel::Plain, true));
        d.record_incoming("b.test", SecLevel::Plain);
        assert!(!dir.path().join("s:b.test").exists(), "nothing to record for plain");
        d.record_incoming("b.test", SecLevel::TlsClient);
        assert_eq!(
            d.check_incoming("b.test", SecLevel::Plain),
            (SecLevel::TlsClient, false)
        );
        assert_eq!(
            d.check_incoming("b.test", SecLevel::TlsClient),
            (SecLevel::TlsClient, true)
        );
        // Other domains are not affected.
        assert_eq!(d.check_incoming("c.test", SecLevel::Plain), (SecLevel::Plain, true));
        // The file is in chasquid's format, and the outgoing level is kept
        // next to the incoming one.
        d.record_outgoing("b.test", SecLevel::TlsInsecure);
        let text = std::fs::read_to_string(dir.path().join("s:b.test")).unwrap();
        assert!(text.contains("incoming_sec_level: TLS_CLIENT"), "{text}");
        assert!(text.contains("outgoing_sec_level: TLS_INSECURE"), "{text}");
        let again = DomainInfo::load(dir.path().to_path_buf());
        assert_eq!(
            again.check_incoming("b.test", SecLevel::Plain),
            (SecLevel::TlsClient, false)
        );
        // Removal resets both, in memory and on disk.
        assert!(again.remove("b.test").unwrap());
        assert!(!again.remove("b.test").unwrap());
        assert_eq!(again.check_incoming("b.test", SecLevel::Plain), (SecLevel::Plain, true));
        assert_eq!(again.outgoing("b.test"), SecLevel::Plain);
        assert!(!dir.path().join("s:b.test").exists());
        // An empty domain (null sender) is never recorded.
        again.record_incoming("", SecLevel::TlsClient);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
