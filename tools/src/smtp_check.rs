//! `smtp-check DOMAIN`: what a sender sees of a domain's mail setup: its
//! MTA-STS policy, its MX hosts, SPF for each MX address, and STARTTLS
//! with a certificate valid for the MX name. chasquid's flags and log
//! lines; deliverd's DNS, MTA-STS fetcher, TLS client and SMTP session;
//! mail-auth's SPF.
//!
//! tambo additions, for tests and unusual setups (environment variables,
//! so that the command line stays chasquid's):
//! `TAMBO_SMTP_CHECK_DNS` (comma-separated "ip:port" DNS servers, instead
//! of /etc/resolv.conf), `TAMBO_SMTP_CHECK_STS_PORT` (HTTPS port of the
//! policy host, 443) and `TAMBO_SMTP_CHECK_CA_FILE` (extra trusted roots,
//! PEM).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use mail_auth::MessageAuthenticator;
use mail_auth::SpfResult;
use mail_auth::spf::verify::SpfParameters;
use tambo_common::domaininfo::SecLevel;
use tambo_deliverd::remote::client::{Session, SessionLimits, SmtpError};
use tambo_deliverd::remote::dns::Dns;
use tambo_deliverd::remote::sts::{self, Policy, PolicyError, Sts, StsSettings};
use tambo_deliverd::remote::tls::TlsClient;

use crate::goflag::{self, Flag};
use crate::golog::{fatal, print};
use crate::puny;

const FLAGS: &[Flag] = &[
    Flag {
        name: "port",
        boolean: false,
        default: "smtp",
        usage: "port to use for connecting to the MX servers",
    },
    Flag {
        name: "localname",
        boolean: false,
        default: "localhost",
        usage: "specify the local name for the EHLO command",
    },
    Flag {
        name: "skip_tls_check",
        boolean: true,
        default: "false",
        usage: "skip TLS check (useful if connections are blocked)",
    },
];

/// Bound on the MTA-STS step (chasquid's 5 s context).
const STS_TIMEOUT: Duration = Duration::from_secs(5);

/// The tambo-only settings from the environment.
struct Env {
    dns: Vec<String>,
    sts_port: u16,
    ca_file: String,
}

impl Env {
    fn read() -> Result<Env, String> {
        let dns = std::env::var("TAMBO_SMTP_CHECK_DNS")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        let sts_port = match std::env::var("TAMBO_SMTP_CHECK_STS_PORT") {
            Ok(p) => p
                .parse()
                .map_err(|_| format!("TAMBO_SMTP_CHECK_STS_PORT={p:?} is not a port number"))?,
            Err(_) => 443,
        };
        Ok(Env {
            dns,
            sts_port,
            ca_file: std::env::var("TAMBO_SMTP_CHECK_CA_FILE").unwrap_or_default(),
        })
    }
}

/// A Go duration as `%v` prints it: `24h0m0s`, `5m0s`, `30s`.
pub fn go_duration(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

/// A policy as chasquid prints its Go struct with `%+v`.
pub fn go_policy(p: &Policy) -> String {
    format!(
        "{{Version:STSv1 Mode:{} MXs:[{}] MaxAge:{}}}",
        p.mode.name(),
        p.mx.join(" "),
        go_duration(p.max_age)
    )
}

/// The TLS version as chasquid names it.
fn version_name(v: rustls::ProtocolVersion) -> String {
    match u16::from(v) {
        0x0301 => "TLS-1.0".into(),
        0x0302 => "TLS-1.1".into(),
        0x0303 => "TLS-1.2".into(),
        0x0304 => "TLS-1.3".into(),
        n => format!("TLS-{n:#06x}"),
    }
}

/// The cipher suite by its IANA name.
fn suite_name(s: rustls::CipherSuite) -> String {
    let name = format!("{s:?}");
    match name.strip_prefix("TLS13_") {
        Some(rest) => format!("TLS_{rest}"),
        None => name,
    }
}

fn spf_word(r: SpfResult) -> &'static str {
    match r {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

/// mail-auth's resolver: the given servers, or the system's.
fn spf_resolver(servers: &[String]) -> Result<MessageAuthenticator, String> {
    use mail_auth::hickory_resolver::TokioResolver;
    use mail_auth::hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
    use mail_auth::hickory_resolver::net::runtime::TokioRuntimeProvider;
    if servers.is_empty() {
        return MessageAuthenticator::new_system_conf().map_err(|e| e.to_string());
    }
    let mut ns = Vec::new();
    for s in servers {
        let sa = tambo_deliverd::remote::dns::parse_server(s).map_err(|e| e.to_string())?;
        let mut cfg = NameServerConfig::udp_and_tcp(sa.ip());
        for c in &mut cfg.connections {
            c.port = sa.port();
        }
        ns.push(cfg);
    }
    let mut opts = ResolverOpts::default();
    opts.timeout = Duration::from_secs(5);
    opts.attempts = 2;
    opts.ndots = 0;
    let resolver = TokioResolver::builder_with_config(
        ResolverConfig::from_parts(None, vec![], ns),
        TokioRuntimeProvider::default(),
    )
    .with_options(opts)
    .build()
    .map_err(|e| e.to_string())?;
    Ok(MessageAuthenticator(resolver))
}

/// chasquid's `sts.UncheckedFetch`: the TXT record must exist; the policy
/// is fetched and parsed, not checked against a cache. `Err(Ok(why))`:
/// not available; `Err(Err(why))`: an invalid policy (fatal).
async fn fetch_policy(sts_client: &Sts, dns: &Dns, domain: &str) -> Result<Policy, Result<String, String>> {
    let txt = dns
        .txt(&format!("_mta-sts.{domain}"))
        .await
        .map_err(|e| Ok(e.to_string()))?;
    match sts::parse_txt(&txt) {
        Ok(Some(_)) => {}
        Ok(None) => return Err(Ok("MTA-STS TXT record missing".into())),
        Err(e) => return Err(Ok(e.to_string())),
    }
    let text = sts_client.fetch(domain).await.map_err(|e| Ok(e.to_string()))?;
    match sts::parse_policy(&text) {
        Ok(p) => Ok(p),
        Err(e @ PolicyError::Line(..)) => Err(Ok(e.to_string())),
        Err(e @ PolicyError::Invalid(_)) => Err(Err(e.to_string())),
    }
}

/// The SMTP port: a number, or one of the usual service names.
fn port_number(port: &str) -> Option<u16> {
    match port {
        "smtp" => Some(25),
        "submission" => Some(587),
        "submissions" | "smtps" => Some(465),
        p => p.parse().ok(),
    }
}

/// STARTTLS to `host` at `ip`; pushes what failed onto `errs`. `Err`
/// (no connection, no SMTP) is fatal, as in chasquid.
async fn check_tls(
    host: &str,
    addr: SocketAddr,
    localname: &str,
    tls: &TlsClient,
    errs: &mut Vec<String>,
) -> Result<(), String> {
    let limits = SessionLimits {
        connect: Duration::from_secs(30),
        reply: Duration::from_secs(60),
        ..SessionLimits::default()
    };
    let s = match Session::connect(addr, host, localname, Some(tls), &limits).await {
        Ok(s) => s,
        Err(SmtpError::Tls(e)) => {
            print(&format!("TLS error: {e}"));
            errs.push(format!("{host}: TLS failed"));
            return Ok(());
        }
        Err(e) => return Err(e.to_string()),
    };
    match (s.level, s.tls_parameters()) {
        (SecLevel::TlsSecure, Some((v, c))) => print(&format!("TLS OK: {} - {}", version_name(v), suite_name(c))),
        (SecLevel::TlsInsecure, _) => {
            print(&format!(
                "TLS error: {}",
                s.tls_problem.as_deref().unwrap_or("certificate not valid")
            ));
            errs.push(format!("{host}: TLS failed"));
        }
        _ => {
            print("TLS error: the server does not offer STARTTLS");
            errs.push(format!("{host}: TLS failed"));
        }
    }
    let _ = s.quit().await;
    Ok(())
}

/// The checks, once the flags are read; returns the exit code.
async fn run(domain: &str, port: u16, localname: &str, skip_tls: bool, env: &Env) -> i32 {
    let dns = match Dns::new(&env.dns, Duration::from_secs(5)) {
        Ok(d) => d,
        Err(e) => return fatal(&e.to_string()),
    };
    let tls = match TlsClient::new(&env.ca_file) {
        Ok(t) => t,
        Err(e) => return fatal(&e.to_string()),
    };
    let spf = match spf_resolver(&env.dns) {
        Ok(s) => s,
        Err(e) => return fatal(&format!("SPF resolver: {e}")),
    };
    let settings = StsSettings {
        cache_dir: None,
        port: env.sts_port,
        fetch_timeout: STS_TIMEOUT,
    };
    let sts_client = match Sts::new(dns.clone(), &tls, settings) {
        Ok(s) => s,
        Err(e) => return fatal(&e),
    };

    print("=== STS policy");
    let policy = match tokio::time::timeout(STS_TIMEOUT, fetch_policy(&sts_client, &dns, domain)).await {
        Err(_) => {
            print("Not available (context deadline exceeded)");
            None
        }
        Ok(Err(Ok(why))) => {
            print(&format!("Not available ({why})"));
            None
        }
        Ok(Err(Err(why))) => return fatal(&format!("Invalid: {why}")),
        Ok(Ok(p)) => {
            print(&format!("Parsed contents:  [{}]\n", go_policy(&p)));
            print("OK");
            Some(p)
        }
    };
    print("");

    let mut mxs = match dns.mx_records(domain).await {
        Ok(m) => m,
        Err(e) => return fatal(&format!("MX lookup: {e}")),
    };
    mxs.retain(|(_, h)| !h.is_empty());
    if mxs.is_empty() {
        return fatal("MX lookup returned no results");
    }
    // Go sorts by preference (and shuffles ties).
    let ordered = tambo_deliverd::remote::dns::order_mx(mxs.clone());
    let pref = |h: &str| mxs.iter().find(|(_, n)| n == h).map(|(p, _)| *p).unwrap_or(0);

    let mut errs = Vec::new();
    for host in ordered {
        print(&format!("=== MX: {:2}  {host}.", pref(&host)));
        let ips: Vec<IpAddr> = match dns.addresses(&host).await {
            Ok(ips) => ips,
            Err(e) => return fatal(&e.to_string()),
        };
        for &ip in &ips {
            let sender = format!("test@{domain}");
            let out = spf
                .verify_spf(SpfParameters::verify_mail_from(ip, domain, localname, &sender))
                .await;
            let why = out.explanation().unwrap_or("<nil>").to_string();
            print(&format!("SPF {} for {ip}: {why}", spf_word(out.result())));
            if out.result() != SpfResult::Pass {
                errs.push(format!("{host}: SPF failed ({ip})"));
            }
        }
        if skip_tls {
            print("TLS check skipped");
        } else {
            let Some(ip) = ips.first() else {
                return fatal(&format!("lookup {host}: no such host"));
            };
            if let Err(e) = check_tls(&host, SocketAddr::new(*ip, port), localname, &tls, &mut errs).await {
                return fatal(&e);
            }
        }
        if let Some(p) = &policy {
            if !p.allows(&host) {
                print("NOT allowed by STS policy");
                errs.push(format!("{host}: STS failed"));
            }
            // chasquid prints this line in both cases.
            print("Allowed by policy");
        }
        print("");
    }

    if errs.is_empty() {
        print("=== Success");
        return 0;
    }
    print("=== FAILED");
    for e in &errs {
        print(e);
    }
    fatal("")
}

/// `smtp-check`; returns the exit code.
pub fn main(argv: &[String]) -> i32 {
    let flags = match goflag::parse(FLAGS, argv) {
        Ok(f) => f,
        Err(stop) => {
            if !stop.message.is_empty() {
                eprintln!("{}", stop.message);
            }
            eprint!("Usage of smtp-check:\n{}", goflag::defaults(FLAGS));
            return stop.code;
        }
    };
    let domain = flags.arg(0);
    if domain.is_empty() {
        return fatal("Use: smtp-check <domain>");
    }
    let domain = match puny::to_ascii(domain) {
        Ok(d) => d,
        Err(e) => return fatal(&format!("IDNA conversion failed: {e}")),
    };
    let env = match Env::read() {
        Ok(e) => e,
        Err(e) => return fatal(&e),
    };
    let Some(port) = port_number(&flags.string("port")) else {
        return fatal(&format!("unknown port {:?}", flags.string("port")));
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fatal(&e.to_string()),
    };
    rt.block_on(run(
        &domain,
        port,
        &flags.string("localname"),
        flags.boolean("skip_tls_check"),
        &env,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_formats() {
        assert_eq!(go_duration(86400), "24h0m0s");
        assert_eq!(go_duration(300), "5m0s");
        assert_eq!(go_duration(7), "7s");
        let p = Policy {
            mode: sts::Mode::Enforce,
            mx: vec!["mx1.example.com".into(), "*.example.net".into()],
            max_age: 604800,
        };
        assert_eq!(
            go_policy(&p),
            "{Version:STSv1 Mode:enforce MXs:[mx1.example.com *.example.net] MaxAge:168h0m0s}"
        );
        assert_eq!(version_name(rustls::ProtocolVersion::TLSv1_3), "TLS-1.3");
        assert_eq!(
            suite_name(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256),
            "TLS_AES_128_GCM_SHA256"
        );
        assert_eq!(port_number("smtp"), Some(25));
        assert_eq!(port_number("2525"), Some(2525));
        assert_eq!(port_number("x"), None);
    }
}
