//! A minimal Maildir delivery agent: the message on stdin becomes
//! `DIR/ADDRESS/new/<unique>`, written to `tmp/` first and renamed, as the
//! Maildir convention requires. Exit status 75 (temporary failure) when
//! the disk refuses.

use std::io::{Read, Write};
use std::path::Path;

use anyhow::bail;

/// Deliver stdin into the Maildir for `address` under `dir`.
pub fn deliver(dir: &Path, address: &str) -> anyhow::Result<()> {
    if address.is_empty()
        || address.starts_with('.')
        || !address.chars().all(|c| c.is_alphanumeric() || "@.+-_=%".contains(c))
    {
        bail!("refusing unsafe address {address:?}");
    }
    let base = dir.join(address);
    let result = (|| -> std::io::Result<()> {
        for sub in ["tmp", "new", "cur"] {
            std::fs::create_dir_all(base.join(sub))?;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let host = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = format!(
            "{}.M{}P{}.{}",
            now.as_secs(),
            now.subsec_micros(),
            std::process::id(),
            host
        );
        let tmp = base.join("tmp").join(&name);
        let mut data = Vec::new();
        std::io::stdin().read_to_end(&mut data)?;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, base.join("new").join(&name))
    })();
    if let Err(e) = result {
        eprintln!("tambo maildir-deliver: {}: {e}", base.display());
        std::process::exit(75);
    }
    Ok(())
}
