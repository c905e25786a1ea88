//! The aliases of every local domain, read from
//! `config_dir/domains/<domain>/aliases` and kept current: a file whose
//! modification time, size or inode changed is parsed again at its next
//! lookup, and a reload (SIGHUP) parses every file again. A file that no
//! longer parses keeps its previous aliases in effect (logged); at
//! start-up a broken or unreadable file stops tambod (as in chasquid), and
//! a reload with one keeps the previous aliases.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tambo_common::aliases::{AliasError, AliasMap, load_aliases};

/// What identifies a version of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    mtime_ns: i128,
    size: u64,
    ino: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
        size: m.size(),
        ino: m.ino(),
    })
}

struct Loaded {
    stamp: Option<Stamp>,
    /// (drop characters, suffix separators) the keys were made with.
    rules: (String, String),
    map: Arc<AliasMap>,
}

/// The aliases database of all local domains.
pub struct AliasDb {
    /// Each local domain's aliases file (`domains/<its directory>/aliases`).
    paths: Mutex<HashMap<String, PathBuf>>,
    domains: Mutex<HashMap<String, Loaded>>,
}

impl AliasDb {
    /// An empty database of the domains' files (domain, path); files are
    /// read on first use or by [`reload`](Self::reload).
    pub fn new(paths: Vec<(String, PathBuf)>) -> AliasDb {
        AliasDb {
            paths: Mutex::new(paths.into_iter().collect()),
            domains: Mutex::new(HashMap::new()),
        }
    }

    fn path(&self, domain: &str) -> Option<PathBuf> {
        self.paths
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(domain)
            .cloned()
    }

    /// The current aliases of `domain`, re-reading its file if it changed.
    pub fn get(&self, domain: &str, drop_characters: &str, suffix_separators: &str) -> Arc<AliasMap> {
        let Some(path) = self.path(domain) else {
            return Arc::new(AliasMap::new());
        };
        let now = stamp(&path);
        let rules = (drop_characters.to_string(), suffix_separators.to_string());
        let mut domains = self.domains.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = domains.get(domain)
            && l.stamp == now
            && l.rules == rules
        {
            return l.map.clone();
        }
        match load_aliases(&path, domain, drop_characters, suffix_separators) {
            Ok(map) => {
                if domains.contains_key(domain) {
                    tracing::info!("{}: reloaded ({} aliases)", path.display(), map.len());
                }
                let map = Arc::new(map);
                domains.insert(
                    domain.to_string(),
                    Loaded {
                        stamp: now,
                        rules,
                        map: map.clone(),
                    },
                );
                map
            }
            Err(e) => {
                tracing::error!("{e}; keeping the previous aliases of {domain}");
                let entry = domains.entry(domain.to_string()).or_insert_with(|| Loaded {
                    stamp: None,
                    rules: rules.clone(),
                    map: Arc::new(AliasMap::new()),
                });
                // Do not parse the same broken version again on every lookup.
                entry.stamp = now;
                entry.rules = rules;
                entry.map.clone()
            }
        }
    }

    /// Parse the file of every domain (at start, and on SIGHUP with the
    /// domains then present). On an error nothing changes and the error
    /// names file and line.
    pub fn reload(
        &self,
        paths: Vec<(String, PathBuf)>,
        drop_characters: &str,
        suffix_separators: &str,
    ) -> Result<(), AliasError> {
        let mut fresh = HashMap::new();
        for (d, path) in &paths {
            let st = stamp(path);
            let map = load_aliases(path, d, drop_characters, suffix_separators)?;
            fresh.insert(
                d.clone(),
                Loaded {
                    stamp: st,
                    rules: (drop_characters.to_string(), suffix_separators.to_string()),
                    map: Arc::new(map),
                },
            );
        }
        *self.domains.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
        *self.paths.lock().unwrap_or_else(|p| p.into_inner()) = paths.into_iter().collect();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tambo_common::aliases::AliasTarget;

    #[test]
    fn reloads_on_change_and_keeps_old_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("domains/d.org");
        std::fs::create_dir_all(&d).unwrap();
        let paths = vec![("d.org".to_string(), d.join("aliases"))];
        let db = AliasDb::new(paths.clone());
        assert!(db.get("d.org", ".", "+").is_empty());
        std::fs::write(d.join("aliases"), "a: b\n").unwrap();
        assert_eq!(
            db.get("d.org", ".", "+")["a"],
            vec![AliasTarget::Email("b@d.org".into())]
        );
        std::fs::write(d.join("aliases"), "a: c, d\n").unwrap();
        assert_eq!(db.get("d.org", ".", "+")["a"].len(), 2);
        std::fs::write(d.join("aliases"), "a: c, d\nbroken line\n").unwrap();
        assert_eq!(db.get("d.org", ".", "+")["a"].len(), 2);
        let e = db.reload(paths.clone(), ".", "+").unwrap_err().to_string();
        assert!(
            e.ends_with("aliases:2: missing ':' (expected \"user: target, target\")"),
            "{e}"
        );
        std::fs::write(d.join("aliases"), "x.y: z\n").unwrap();
        db.reload(paths, ".", "+").unwrap();
        assert!(db.get("other.org", ".", "+").is_empty());
        assert!(db.get("d.org", ".", "+").contains_key("xy"));
        // Other rules give other keys.
        assert!(db.get("d.org", "", "+").contains_key("x.y"));
    }
}
