//! queued's side of the per-domain security levels: it owns
//! `data_dir/domaininfo`, tells deliverd the recorded outgoing level of each
//! remote domain in the job, and records a higher level when deliverd
//! reports one (never a lower one: levels only go up, until an operator runs
//! `tambo domaininfo-remove`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use tambo_common::domaininfo::{self, DomainRecord, SecLevel};

/// The in-memory copy of the store, written through on every change.
pub struct DomainInfo {
    dir: PathBuf,
    records: Mutex<HashMap<String, DomainRecord>>,
}

impl DomainInfo {
    /// Load every record of `dir` (bad files are logged and skipped).
    pub fn load(dir: PathBuf) -> DomainInfo {
        let d = DomainInfo {
            dir,
            records: Mutex::new(HashMap::new()),
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
        let rec = {
            let mut map = self.records.lock().unwrap_or_else(|p| p.into_inner());
            let rec = map.entry(domain.to_string()).or_insert_with(|| DomainRecord {
                name: domain.to_string(),
                ..Default::default()
            });
            if level <= rec.outgoing {
                return;
            }
            tracing::info!(
                domain,
                "outgoing security level raised from {} to {}",
                rec.outgoing.name(),
                level.name()
            );
            rec.outgoing = level;
            rec.clone()
        };
        if let Err(e) = domaininfo::write_record(&self.dir, &rec) {
            tracing::error!("domaininfo: {e}");
        }
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
}
