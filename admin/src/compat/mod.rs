//! chasquid-util's command line and behaviour (chasquid 1.18): the
//! commands, their messages and exit codes. Used when the binary runs as
//! `chasquid-util`, and for the same commands under the `tambo` name.
//!
//! Every failure prints one message on stderr and exits 1, as
//! chasquid-util does; successes print chasquid-util's lines on stdout.

pub mod args;
mod dkim;
mod dkimsign;
mod server;
mod users;

use std::path::PathBuf;

use args::{Args, Dialect};

/// chasquid-util's commands (`dkim-sign` and `dkim-verify` are testing
/// aids in chasquid-util and here).
pub const COMMANDS: &[&str] = &[
    "user-add",
    "user-remove",
    "authenticate",
    "check-userdb",
    "aliases-resolve",
    "domaininfo-remove",
    "print-config",
    "dkim-keygen",
    "dkim-dns",
    "dkim-sign",
    "dkim-verify",
];

/// A failure: the message for stderr (the exit code is 1).
#[derive(Debug)]
pub struct Fatal(pub String);

/// What a command returns.
pub type CmdResult = Result<(), Fatal>;

/// `fatal!(...)`: return a [`Fatal`] with a formatted message.
macro_rules! fatal {
    ($($t:tt)*) => { return Err($crate::compat::Fatal(format!($($t)*))) };
}
pub(crate) use fatal;

/// What every command needs.
pub struct Ctx {
    /// The command line.
    pub args: Args,
    /// `-C`/`--config_dir`.
    pub config_dir: PathBuf,
    /// Which name the binary runs under.
    pub dialect: Dialect,
}

impl Ctx {
    /// `-v` was given.
    pub fn verbose(&self) -> bool {
        self.args.has("-v")
    }

    /// A path in the configuration directory, spelled as chasquid-util
    /// spells it (`DIR/domains/...`, no normalisation).
    pub fn config_path(&self, rest: &str) -> PathBuf {
        PathBuf::from(format!("{}/{rest}", self.config_dir.display()))
    }

    /// `domains/<domain>/<file>`, or the existing directory of the same
    /// domain under another spelling (`domains/ñoñOS` for `ñoños`), so a
    /// second directory of one domain is never created.
    pub fn domain_path(&self, domain: &str, file: &str) -> PathBuf {
        let given = self.config_path(&format!("domains/{domain}"));
        match tambo_common::names::normalize_domain(domain) {
            Ok(d) if !given.exists() => {
                let dir = tambo_common::config::domain_dir(&self.config_dir, &d);
                if file.is_empty() { dir } else { dir.join(file) }
            }
            // As chasquid-util writes the path (`domains//users` for an
            // empty domain).
            _ if file.is_empty() => given,
            _ => self.config_path(&format!("domains/{domain}/{file}")),
        }
    }
}

/// The usage text, in chasquid-util's layout.
pub fn usage(prog: &str) -> String {
    format!(
        "
Usage:
  {p} [options] user-add <user@domain> [--password=<password>] [--receive_only]
    Add a user, or change their password.
  {p} [options] user-remove <user@domain>
    Remove a user.
  {p} [options] authenticate <user@domain> [--password=<password>]
    Check a user's password.
  {p} [options] check-userdb <domain>
    Check that the domain's users file can be read.
  {p} [options] aliases-resolve <address>
    Ask the running server what an address resolves to.
  {p} [options] domaininfo-remove <domain>
    Forget what the running server knows of a domain's security.
  {p} [options] print-config
    Print the configuration.

  {p} [options] dkim-keygen <domain> [<selector> <private-key.pem>] [--algo=rsa3072|rsa4096|ed25519]
    Create a DKIM key for the domain.
  {p} [options] dkim-dns <domain> [<selector> <private-key.pem>]
    Print the DNS TXT record of a domain's DKIM key.

Options:
  -C=<path>, --config_dir=<path>  Configuration directory
  -v                              Verbose mode
",
        p = prog
    )
}

/// Whether a `tambo` command line is one of chasquid-util's (its first
/// positional argument names one of [`COMMANDS`]).
pub fn is_compat_command(argv: &[String]) -> bool {
    let a = Args::parse(argv, Dialect::Tambo);
    COMMANDS.contains(&a.pos(1))
}

/// Run a chasquid-util command line; returns the exit code.
pub fn main(argv: &[String], dialect: Dialect) -> i32 {
    let (prog, default_dir) = match dialect {
        Dialect::Chasquid => ("chasquid-util", "/etc/chasquid"),
        Dialect::Tambo => ("tambo", "/etc/tambo"),
    };
    let args = Args::parse(argv, dialect);
    if args.has("--help") {
        print!("{}", usage(prog));
        return 0;
    }
    let mut config_dir = PathBuf::from(default_dir);
    for opt in ["--config_dir", "-C", "--configdir"] {
        if let Some(d) = args.get(opt) {
            config_dir = PathBuf::from(d);
        }
    }
    if args.has("--configdir") {
        eprintln!("Option --configdir is deprecated, use --config_dir instead");
    }
    let ctx = Ctx {
        args,
        config_dir,
        dialect,
    };
    let result = match ctx.args.pos(1) {
        "user-add" => users::add(&ctx),
        "user-remove" => users::remove(&ctx),
        "authenticate" => users::authenticate(&ctx),
        "check-userdb" => users::check(&ctx),
        "aliases-resolve" => server::aliases_resolve(&ctx),
        "domaininfo-remove" => server::domaininfo_remove(&ctx),
        "print-config" => server::print_config(&ctx),
        "dkim-keygen" => dkim::keygen(&ctx),
        "dkim-dns" => dkim::dns(&ctx),
        "dkim-sign" => dkimsign::sign(&ctx),
        "dkim-verify" => dkim::verify(&ctx),
        other => {
            println!("Unknown argument {}", tambo_common::gofmt::quote(other));
            Err(Fatal(usage(prog)))
        }
    };
    // stdout first: chasquid-util's output is unbuffered.
    use std::io::Write;
    let _ = std::io::stdout().flush();
    match result {
        Ok(()) => 0,
        Err(Fatal(msg)) => {
            eprintln!("{msg}");
            1
        }
    }
}
