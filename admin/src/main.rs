//! `tambo`, the administration command: users, configuration, DKIM keys
//! (chasquid-util's commands, also run as `chasquid-util`), the queue,
//! `sendmail`/`mailq`, and a small Maildir delivery agent.

mod compat;
mod maildir;
mod queue;
mod sendmail;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// tambo administration.
#[derive(Parser, Debug)]
#[command(
    name = "tambo",
    version,
    about = "tambo mail server administration",
    after_help = "chasquid-util's commands, with its options (see `tambo user-add --help`):\n  \
                  user-add, user-remove, authenticate, check-userdb, aliases-resolve,\n  \
                  domaininfo-remove, print-config, dkim-keygen, dkim-dns"
)]
struct Cli {
    /// Configuration directory.
    #[arg(short = 'C', long = "config_dir", default_value = "/etc/tambo", global = true)]
    config_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Inspect and act on the queue of the running server.
    #[command(subcommand)]
    Queue(QueueCommand),
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
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if invoked_as("chasquid-util") {
        std::process::exit(compat::main(&args, compat::args::Dialect::Chasquid));
    }
    if compat::is_compat_command(&args) {
        std::process::exit(compat::main(&args, compat::args::Dialect::Tambo));
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sendmail { args } => std::process::exit(sendmail::main(&args, &cli.config_dir)),
        Command::MaildirDeliver { dir, address } => maildir::deliver(&dir, &address),
        Command::Queue(cmd) => queue_command(&cli.config_dir, cmd),
    };
    if let Err(e) = result {
        eprintln!("tambo: {e:#}");
        // EX_TEMPFAIL for delivery problems is decided inside maildir.
        std::process::exit(1);
    }
}
