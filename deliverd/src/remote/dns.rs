//! DNS for remote delivery: MX lookup (with the null MX of RFC 7505), the
//! A/AAAA fallback, and the choice of resolvers (`dns_servers` or
//! `/etc/resolv.conf`).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use rand::seq::SliceRandom;

/// At most this many MX hosts are tried for one domain.
pub const MAX_MX: usize = 5;

/// Why DNS did not give a usable answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DnsError {
    /// The name does not exist (NXDOMAIN): a permanent failure.
    #[error("{0}: no such domain")]
    NoSuchDomain(String),
    /// The domain publishes a null MX: it accepts no mail.
    #[error("{0} does not accept mail (null MX, RFC 7505)")]
    NullMx(String),
    /// The name exists but has no address.
    #[error("{0}: no A or AAAA record")]
    NoAddress(String),
    /// Anything else (timeouts, SERVFAIL, REFUSED): try again later.
    #[error("DNS lookup of {0} failed: {1}")]
    Temporary(String, String),
    /// The resolver configuration is wrong.
    #[error("DNS configuration: {0}")]
    Config(String),
}

impl DnsError {
    /// Whether retrying later can help.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            DnsError::NoSuchDomain(_) | DnsError::NullMx(_) | DnsError::NoAddress(_)
        )
    }
}

/// The MX hosts of a domain, or the fallback to the domain itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxAnswer {
    /// MX host names (ASCII, no trailing dot), best first, ties shuffled.
    Hosts(Vec<String>),
    /// The domain has no MX record: deliver to its A/AAAA (RFC 5321 §5.1).
    Implicit,
}

/// A resolver set up from the configuration.
#[derive(Clone)]
pub struct Dns {
    resolver: TokioResolver,
}

/// Parse one `dns_servers` entry: "ip" or "ip:port" ("[v6]:port" too).
pub fn parse_server(s: &str) -> Result<SocketAddr, DnsError> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok(sa);
    }
    if let Ok(ip) = s.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    Err(DnsError::Config(format!(
        "dns_servers entry {s:?} is not \"ip\" or \"ip:port\""
    )))
}

impl Dns {
    /// Use `servers` ("ip:port") for every query, or the system
    /// configuration when empty.
    pub fn new(servers: &[String], timeout: Duration) -> Result<Dns, DnsError> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = if servers.is_empty() {
            TokioResolver::builder(provider).map_err(|e| DnsError::Config(format!("/etc/resolv.conf: {e}")))?
        } else {
            let mut list = Vec::new();
            for s in servers {
                let sa = parse_server(s)?;
                let mut ns = NameServerConfig::udp_and_tcp(sa.ip());
                for c in &mut ns.connections {
                    c.port = sa.port();
                }
                list.push(ns);
            }
            TokioResolver::builder_with_config(ResolverConfig::from_name_servers(list), provider)
        };
        let opts: &mut ResolverOpts = builder.options_mut();
        opts.timeout = timeout;
        opts.attempts = 2;
        opts.ndots = 0;
        let resolver = builder.build().map_err(|e| DnsError::Config(e.to_string()))?;
        Ok(Dns { resolver })
    }

    /// The MX records of `domain` as published: (preference, host in
    /// lower case without the trailing dot; "" for a null MX), in the
    /// order of the answer; empty when the domain has no MX record.
    pub async fn mx_records(&self, domain: &str) -> Result<Vec<(u16, String)>, DnsError> {
        let fqdn = format!("{}.", domain.trim_end_matches('.'));
        let lookup = match self.resolver.lookup(fqdn.as_str(), RecordType::MX).await {
            Ok(l) => l,
            Err(e) if e.is_nx_domain() => return Err(DnsError::NoSuchDomain(domain.into())),
            Err(e) if e.is_no_records_found() => return Ok(Vec::new()),
            Err(e) => return Err(temporary(domain, &e)),
        };
        let mut mxs: Vec<(u16, String)> = Vec::new();
        for r in lookup.answers() {
            if let RData::MX(mx) = &r.data {
                let name = mx.exchange.to_ascii();
                mxs.push((mx.preference, name.trim_end_matches('.').to_ascii_lowercase()));
            }
        }
        Ok(mxs)
    }

    /// The MX hosts of `domain` (ASCII form), at most [`MAX_MX`].
    pub async fn mx(&self, domain: &str) -> Result<MxAnswer, DnsError> {
        let mut mxs = self.mx_records(domain).await?;
        if mxs.is_empty() {
            return Ok(MxAnswer::Implicit);
        }
        // RFC 7505: a single MX with an empty exchange ("."), and the
        // domain takes no mail. A null MX among others is ignored.
        if mxs.len() == 1 && mxs[0].1.is_empty() {
            return Err(DnsError::NullMx(domain.into()));
        }
        mxs.retain(|(_, n)| !n.is_empty());
        Ok(MxAnswer::Hosts(order_mx(mxs)))
    }

    /// The addresses of `host`: IPv6 and IPv4, in the resolver's order.
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let fqdn = format!("{}.", host.trim_end_matches('.'));
        let (v6, v4) = tokio::join!(
            self.resolver.lookup(fqdn.as_str(), RecordType::AAAA),
            self.resolver.lookup(fqdn.as_str(), RecordType::A)
        );
        let mut out = Vec::new();
        let mut errors = Vec::new();
        let mut nx = false;
        for res in [v6, v4] {
            match res {
                Ok(l) => {
                    for r in l.answers() {
                        match &r.data {
                            RData::A(a) => out.push(IpAddr::V4(a.0)),
                            RData::AAAA(a) => out.push(IpAddr::V6(a.0)),
                            _ => {}
                        }
                    }
                }
                Err(e) if e.is_nx_domain() => nx = true,
                Err(e) if e.is_no_records_found() => {}
                Err(e) => errors.push(e),
            }
        }
        if !out.is_empty() {
            return Ok(out);
        }
        if let Some(e) = errors.first() {
            return Err(temporary(host, e));
        }
        if nx {
            return Err(DnsError::NoSuchDomain(host.into()));
        }
        Err(DnsError::NoAddress(host.into()))
    }
}

impl Dns {
    /// The TXT records of `name`, each record's strings joined. A name
    /// without TXT records, or that does not exist, gives an empty list.
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, DnsError> {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        let lookup = match self.resolver.lookup(fqdn.as_str(), RecordType::TXT).await {
            Ok(l) => l,
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => return Ok(Vec::new()),
            Err(e) => return Err(temporary(name, &e)),
        };
        let mut out = Vec::new();
        for r in lookup.answers() {
            if let RData::TXT(txt) = &r.data {
                let mut joined = Vec::new();
                for part in txt.txt_data.iter() {
                    joined.extend_from_slice(part);
                }
                out.push(String::from_utf8_lossy(&joined).into_owned());
            }
        }
        Ok(out)
    }
}

fn temporary(name: &str, e: &NetError) -> DnsError {
    DnsError::Temporary(name.into(), e.to_string())
}

/// Sort by preference; hosts of equal preference come in random order.
/// Duplicates are removed and the list is cut at [`MAX_MX`].
pub fn order_mx(mut mxs: Vec<(u16, String)>) -> Vec<String> {
    mxs.shuffle(&mut rand::thread_rng());
    mxs.sort_by_key(|(p, _)| *p);
    let mut out: Vec<String> = Vec::new();
    for (_, n) in mxs {
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out.truncate(MAX_MX);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mx_order_and_ties() {
        let mut seen_first = std::collections::HashSet::new();
        for _ in 0..200 {
            let o = order_mx(vec![
                (20, "c".into()),
                (10, "a".into()),
                (10, "b".into()),
                (30, "d".into()),
                (40, "e".into()),
                (50, "f".into()),
                (10, "a".into()),
            ]);
            assert_eq!(o.len(), MAX_MX);
            assert!(o[0] == "a" || o[0] == "b");
            assert_eq!(&o[2..], &["c", "d", "e"]);
            seen_first.insert(o[0].clone());
        }
        assert_eq!(seen_first.len(), 2, "ties are shuffled");
    }

    #[test]
    fn server_syntax() {
        assert_eq!(parse_server("127.0.0.1:5353").unwrap().port(), 5353);
        assert_eq!(parse_server("::1").unwrap().port(), 53);
        assert_eq!(parse_server("[::1]:54").unwrap().port(), 54);
        assert!(parse_server("dns.example").is_err());
    }
}
