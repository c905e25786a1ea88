//! Driving deliverd's courier as a library (remote_delivery, mta_sts,
//! dane): settings with short timeouts, delivery jobs and message files.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use tambo_deliverd::remote::Settings;
use tambo_ipc::proto::{DeliveryJob, JobRcpt, RcptRoute};

use crate::fakedns::FakeDns;

/// Courier settings from the default configuration: host name
/// `sender.test`, peers on `port`, names resolved by `dns`, connect and
/// reply timeouts of 3 s, DNS timeout of 2 s.
pub fn settings(dns: &FakeDns, port: u16) -> Settings {
    let mut s = Settings::from_config(&tambo_common::config::Config::default());
    s.hostname = "sender.test".into();
    s.port = port;
    s.dns_servers = vec![dns.addr.to_string()];
    s.session.connect = Duration::from_secs(3);
    s.session.reply = Duration::from_secs(3);
    s.dns_timeout = Duration::from_secs(2);
    s
}

/// A message file (an unlinked temporary file) holding `content`.
pub fn data_fd(content: &[u8]) -> Arc<OwnedFd> {
    let mut f = tempfile::tempfile().expect("tempfile");
    f.write_all(content).expect("write");
    Arc::new(OwnedFd::from(f))
}

/// A job `id` from `from` to remote `rcpts` (indexes 0, 1, ...), with no
/// header prefix and no recorded security levels.
pub fn remote_job(id: &str, from: &str, rcpts: &[&str]) -> DeliveryJob {
    DeliveryJob {
        id: id.into(),
        from: from.into(),
        rcpts: rcpts
            .iter()
            .enumerate()
            .map(|(i, a)| JobRcpt {
                index: i as u32,
                address: a.to_string(),
                route: RcptRoute::Remote { via: Vec::new() },
            })
            .collect(),
        header_prefix: Vec::new(),
        outgoing_levels: Vec::new(),
        settled: Vec::new(),
    }
}
