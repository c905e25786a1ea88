//! `tambo`, the administration command: users, configuration, and a small
//! Maildir delivery agent.

mod dkim;
mod maildir;
mod queue;
mod sendmail;
mod users;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// tambo administration.
#[derive(Parser, Debug)]
#[command(name = "tambo", version, about = "tambo mail server administration")]
struct Cli {
    /// Configuration directory.
    #[arg(short = 'C', long = "config_dir", default_value = "/etc/tambo", global = true)]
    config_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Ask the running server what an address resolves to (users,
    /// aliases, catch-all, the alias-resolve hook): each final recipient
    /// and how it is reached.
    #[command(name = "aliases-resolve")]
    AliasesResolve {
        /// The address.
        address: String,
        /// The control socket (default: run_dir/control.sock from the config).
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Add a user (or change their password).
    #[command(name = "user-add")]
    UserAdd {
        /// user@domain
        address: String,
        /// The password (prompted for when absent).
        #[arg(long)]
        password: Option<String>,
        /// The user may receive mail but never authenticate.
        #[arg(long = "receive_only")]
        receive_only: bool,
    },
    /// Remove a user.
    #[command(name = "user-remove")]
    UserRemove {
        /// user@domain
        address: String,
    },
    /// Check a user's password.
    Authenticate {
        /// user@domain
        address: String,
        /// The password (prompted for when absent).
        #[arg(long)]
        password: Option<String>,
    },
    /// Check that every users file parses.
    #[command(name = "check-userdb")]
    CheckUserdb,
    /// Print the effective configuration.
    #[command(name = "print-config")]
    PrintConfig,
    /// Inspect and act on the queue of the running server.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Create a DKIM key: domains/DOMAIN/dkim:SELECTOR.pem (mode 0640,
    /// group of authd's user when run as root; never overwritten), and
    /// print the TXT record to publish.
    #[command(name = "dkim-keygen")]
    DkimKeygen {
        /// The local domain.
        domain: String,
        /// The selector (default: today's date, YYYYMMDD).
        selector: Option<String>,
        /// Key type.
        #[arg(long, value_enum, default_value = "rsa2048")]
        algo: dkim::Algo,
    },
    /// Print the DNS TXT record of a domain's DKIM key(s).
    #[command(name = "dkim-dns")]
    DkimDns {
        /// The local domain.
        domain: String,
        /// Only this selector.
        selector: Option<String>,
    },
    /// Forget what is known of a domain's security levels (as
    /// chasquid-util does): a running server forgets it at once and removes
    /// its file in data_dir/domaininfo; without one, the file is removed.
    #[command(name = "domaininfo-remove")]
    DomaininfoRemove {
        /// The domain.
        domain: String,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Queue the message on stdin, like sendmail(8) (also run as
    /// `sendmail`): -i/-oi, -t, -f ADDR, recipients as arguments.
    Sendmail {
        /// sendmail's flags and recipients.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Delivery agent: write the message on stdin into DIR/ADDRESS/new/ as
    /// a Maildir file (used by the development setup).
    #[command(name = "maildir-deliver")]
    MaildirDeliver {
        /// The base directory.
        dir: PathBuf,
        /// The recipient address (already sanitised by deliverd).
        address: String,
    },
}

/// `tambo domaininfo-remove DOMAIN`: through the control socket when
/// tambod runs (queued forgets the domain at once and removes its file),
/// else by removing the file directly.
fn domaininfo_remove(config_dir: &std::path::Path, domain: &str, socket: Option<PathBuf>) -> anyhow::Result<()> {
    let config = tambo_common::config::load_config(config_dir, None).map_err(|e| anyhow::anyhow!("{e}"))?;
    let domain = tambo_common::names::normalize_domain(domain).map_err(|e| anyhow::anyhow!("{domain}: {e}"))?;
    let sockets = match socket {
        Some(s) => vec![s],
        None => config.control_sockets(config_dir),
    };
    let mut config = config;
    config.resolve_paths(config_dir);
    match tambo_common::unixsock::connect_first(&sockets) {
        Ok((stream, socket)) => {
            let req = tambo_ipc::proto::AdminRequest::DomainInfoRemove { domain };
            for r in queue::request_on(stream, &socket, &req)? {
                if let tambo_ipc::proto::AdminReply::Done(text) = r {
                    println!("{text}");
                }
            }
            return Ok(());
        }
        Err((_, e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) => {}
        Err(_) => {
            // Not allowed on the socket (or another problem): name it.
            queue::connect(&sockets)?;
        }
    }
    let dir = PathBuf::from(&config.data_dir).join("domaininfo");
    let removed = tambo_common::domaininfo::remove_record(&dir, &domain)?;
    if removed {
        println!("{domain}: removed (tambod is not running)");
    } else {
        println!("{domain}: nothing recorded");
    }
    Ok(())
}

/// `tambo queue …` actions.
#[derive(Subcommand, Debug)]
enum QueueCommand {
    /// List the queued messages (like mailq).
    List {
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Show one message: envelope, recipients, headers.
    Show {
        /// Queue ID.
        id: String,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Retry now: every message, or one.
    Flush {
        /// Queue ID (all messages when absent).
        id: Option<String>,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Keep a message from being delivered.
    Hold {
        /// Queue ID.
        id: String,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Release a held message.
    Release {
        /// Queue ID.
        id: String,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Delete a message for good, without telling the sender.
    Remove {
        /// Queue ID.
        id: String,
        #[command(flatten)]
        socket: SocketArg,
    },
}

/// Where the control socket is.
#[derive(clap::Args, Debug)]
struct SocketArg {
    /// The control socket (default: run_dir/control.sock from the config).
    #[arg(long)]
    socket: Option<PathBuf>,
}

/// `mailq`: the queue listing.
#[derive(Parser, Debug)]
#[command(name = "mailq", version, about = "list tambo's mail queue")]
struct MailqCli {
    /// Configuration directory.
    #[arg(short = 'C', long = "config_dir", default_value = "/etc/tambo")]
    config_dir: PathBuf,
    /// The control socket (default: run_dir/control.sock from the config).
    #[arg(long)]
    socket: Option<PathBuf>,
}

fn queue_command(config_dir: &std::path::Path, cmd: QueueCommand) -> anyhow::Result<()> {
    use tambo_ipc::proto::AdminRequest;
    let (socket, req) = match cmd {
        QueueCommand::List { socket } => (socket, AdminRequest::List),
        QueueCommand::Show { id, socket } => (socket, AdminRequest::Show { id }),
        QueueCommand::Flush { id, socket } => (socket, AdminRequest::Flush { id }),
        QueueCommand::Hold { id, socket } => (socket, AdminRequest::Hold { id }),
        QueueCommand::Release { id, socket } => (socket, AdminRequest::Release { id }),
        QueueCommand::Remove { id, socket } => (socket, AdminRequest::Remove { id }),
    };
    let paths = queue::socket_paths(config_dir, socket.socket)?;
    queue::run(&paths, req)
}

fn invoked_as(name: &str) -> bool {
    std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n == name))
        .unwrap_or(false)
}

fn main() {
    if invoked_as("sendmail") {
        let args: Vec<String> = std::env::args().skip(1).collect();
        std::process::exit(sendmail::main(&args, std::path::Path::new("/etc/tambo")));
    }
    if invoked_as("mailq") {
        let cli = MailqCli::parse();
        let result = queue::socket_paths(&cli.config_dir, cli.socket)
            .and_then(|p| queue::run(&p, tambo_ipc::proto::AdminRequest::List));
        if let Err(e) = result {
            eprintln!("mailq: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::UserAdd {
            address,
            password,
            receive_only,
        } => users::add(&cli.config_dir, &address, password, receive_only),
        Command::UserRemove { address } => users::remove(&cli.config_dir, &address),
        Command::Authenticate { address, password } => users::authenticate(&cli.config_dir, &address, password),
        Command::CheckUserdb => users::check(&cli.config_dir),
        Command::PrintConfig => tambo_common::config::load_config(&cli.config_dir, None)
            .map(|c| print!("{}", tambo_common::config::print_config(&c)))
            .map_err(|e| anyhow::anyhow!("{e}")),
        Command::DomaininfoRemove { domain, socket } => domaininfo_remove(&cli.config_dir, &domain, socket.socket),
        Command::AliasesResolve { address, socket } => queue::socket_paths(&cli.config_dir, socket)
            .and_then(|paths| queue::run(&paths, tambo_ipc::proto::AdminRequest::ResolveAddress { address })),
        Command::Sendmail { args } => std::process::exit(sendmail::main(&args, &cli.config_dir)),
        Command::MaildirDeliver { dir, address } => maildir::deliver(&dir, &address),
        Command::Queue(cmd) => queue_command(&cli.config_dir, cmd),
        Command::DkimKeygen { domain, selector, algo } => dkim::keygen(&cli.config_dir, &domain, selector, algo),
        Command::DkimDns { domain, selector } => dkim::dns(&cli.config_dir, &domain, selector),
    };
    if let Err(e) = result {
        eprintln!("tambo: {e:#}");
        // EX_TEMPFAIL for delivery problems is decided inside maildir.
        std::process::exit(1);
    }
}
