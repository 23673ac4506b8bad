//! `dspring`: the command line of Digital Spring. `dspring daemon` runs a node with its local
//! API; every other command is a call to that API (see `api::METHODS`).

#![forbid(unsafe_code)]

/// `println!` that ignores a closed stdout (`dspring status | head -1`), where `println!`
/// would panic: the reader has what it wanted.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

mod api;
mod client;
mod config;
mod daemon;
mod demo;
mod home;
mod human;
mod openapi;

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::{Value, json};

use client::{Client, ClientError};
use home::Home;
use human::{describe_event, long_work, print_human, qr_code, text_of};

#[derive(Parser)]
#[command(
    name = "dspring",
    version,
    about = "Private group messaging without a middleman"
)]
struct Cli {
    /// The profile (one identity and its data) to use.
    #[arg(long, global = true, default_value = "default")]
    profile: String,
    /// The data directory (default: $XDG_DATA_HOME/dspring/<profile>).
    #[arg(long, global = true, env = "DSPRING_HOME")]
    data_dir: Option<PathBuf>,
    /// Print results as JSON (follow: one JSON object per line).
    #[arg(long, global = true)]
    json: bool,
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only errors in the log.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the node and its local API in the foreground until SIGINT or SIGTERM.
    Daemon {
        /// The API's port on 127.0.0.1 (0: any free port; the daemon writes it to
        /// `api-address` in the data directory). Default: `config.toml`'s, else 0.
        #[arg(long)]
        api_port: Option<u16>,
        /// Also serve as a mailbox for this node's contacts.
        #[arg(long)]
        mailbox: bool,
        /// No mDNS discovery on the local network.
        #[arg(long)]
        no_mdns: bool,
        /// A libp2p address to listen on, repeatable (default: `config.toml`'s, else any
        /// free TCP and QUIC port on every interface), e.g. `/ip4/0.0.0.0/tcp/4001`.
        #[arg(long)]
        listen: Vec<String>,
        /// A node to join the DHT through, repeatable, added to `config.toml`'s: an address
        /// ending in `/p2p/<peer id>`, as that node's `dspring id` prints under "dial".
        #[arg(long)]
        bootstrap: Vec<String>,
        /// Runs in the background: returns once the daemon answers, its log in `daemon.log`
        /// in the data directory. Stop it with `kill` (SIGTERM) on the pid it prints.
        #[arg(long)]
        detach: bool,
        /// Set by `--detach` on the daemon it starts: leave the terminal's session.
        #[arg(long, hide = true)]
        detached: bool,
    },
    /// Sets up this profile: its data directory, API token, `config.toml` (every setting at
    /// its default, documented) and identity. `dspring daemon` does this too on first start.
    Init,
    /// Runs a small real network on loopback (five nodes, one a mailbox) through a narrated
    /// scenario; exits 0 only if every check held.
    Demo,
    /// This node's member id and contact card.
    Id {
        /// Also show the card as a QR code (for a phone's camera).
        #[arg(long)]
        qr: bool,
    },
    /// People this node knows.
    #[command(subcommand)]
    Contact(ContactCommand),
    /// Groups.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Mailboxes: nodes that keep your groups' ciphertext while you are offline.
    #[command(subcommand)]
    Mailbox(MailboxCommand),
    /// Groups people who are not your contacts added you to (with `join_from = "contacts"`).
    #[command(subcommand)]
    Invitation(InvitationCommand),
    /// Sends a message to a group (`-` reads it from standard input).
    Send { group: String, text: String },
    /// A group's messages after event cursor `--after` (the cursor is the `#` number shown).
    Read {
        group: String,
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Prints events as they happen (from cursor `--after`), until the daemon stops.
    Follow {
        /// Only this group's events (a name or an id).
        group: Option<String>,
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
    /// This node's state: groups, contacts, connections, traffic.
    Status {
        /// First waits for long work to end (catch-ups, news from mailboxes, the first DHT
        /// bootstrap), showing its progress on a terminal.
        #[arg(long)]
        wait: bool,
        /// Gives up waiting after this many seconds (exit code 5).
        #[arg(long, requires = "wait")]
        timeout: Option<u64>,
    },
}

#[derive(Subcommand)]
enum ContactCommand {
    /// Adds a person from their contact card (`dspring id` prints one).
    Add {
        card: String,
        #[arg(long)]
        name: String,
    },
    List,
    /// A contact's id, name, and the safety number to compare with them (in person or on a
    /// call: both of you see the same number if each holds the other's real key).
    Show {
        contact: String,
    },
    /// Marks a contact verified once the safety number they read out matches yours.
    Verify {
        contact: String,
        /// The safety number as they read it out (spaces optional).
        #[arg(required_unless_present = "undo")]
        safety_number: Option<String>,
        /// Marks the contact not verified.
        #[arg(long, conflicts_with = "safety_number")]
        undo: bool,
    },
}

#[derive(Subcommand)]
enum InvitationCommand {
    List,
    /// Joins the group (its id, as `invitation list` shows it).
    Accept {
        group: String,
    },
    Decline {
        group: String,
    },
}

#[derive(Subcommand)]
enum MailboxCommand {
    /// Uses the mailbox behind this contact card. Its operator runs `dspring mailbox serve
    /// --on` (or `dspring daemon --mailbox`) and adds your card as a contact first.
    Use { card: String },
    /// Shows or changes this profile's mailbox settings (config.toml, `[mailbox]`): whether
    /// its daemon serves as a mailbox for its contacts, and how long it keeps what it holds.
    /// A running daemon takes them at its next start.
    Serve {
        /// Serve as a mailbox.
        #[arg(long, conflicts_with = "off")]
        on: bool,
        /// Stop serving as a mailbox.
        #[arg(long)]
        off: bool,
        /// Keep what the mailbox holds this many days (1 to 3650).
        #[arg(long)]
        retention_days: Option<u64>,
    },
}

#[derive(Subcommand)]
enum GroupCommand {
    /// Creates a group; members are contact names or ids.
    Create {
        name: String,
        #[arg(long = "member")]
        members: Vec<String>,
    },
    List,
    Show {
        group: String,
    },
    Add {
        group: String,
        member: String,
    },
    Remove {
        group: String,
        member: String,
    },
    /// Refreshes this member's keys in the group.
    Update {
        group: String,
    },
    /// Leaves the group: asks the others to remove you (one of their nodes does, within
    /// seconds when one is online); until then you still read the group.
    Leave {
        group: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        // Kademlia warns when it has no peers to bootstrap from, which a first node alone
        // on its network always is.
        (false, 0) => "warn,dspring=info,libp2p_kad=error",
        (false, 1) => "info",
        (false, _) => "debug",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::env::var_os("NO_COLOR").is_none() && std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    if let Command::Demo = cli.command {
        return match demo::run().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("demo failed: {error}");
                ExitCode::FAILURE
            }
        };
    }
    let home = match Home::locate(cli.data_dir.clone(), &cli.profile) {
        Ok(home) => home,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    if let Command::Daemon { detach: true, .. } = &cli.command {
        return match detach(&home, cli.json).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
        };
    }
    if let Command::Daemon {
        api_port,
        mailbox,
        no_mdns,
        listen,
        bootstrap,
        detach: false,
        detached,
    } = &cli.command
    {
        if *detached && let Err(error) = rustix::process::setsid() {
            eprintln!("error: leaving the terminal's session: {error}");
            return ExitCode::FAILURE;
        }
        let options = daemon::Options {
            api_port: *api_port,
            mailbox: *mailbox,
            no_mdns: *no_mdns,
            listen: listen.clone(),
            bootstrap: bootstrap.clone(),
        };
        return match daemon::run(&home, options).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
        };
    }
    if let Command::Mailbox(MailboxCommand::Serve {
        on,
        off,
        retention_days,
    }) = &cli.command
    {
        let serve = if *on {
            Some(true)
        } else if *off {
            Some(false)
        } else {
            None
        };
        return match config::Config::set_mailbox(home.dir(), serve, *retention_days) {
            Ok(config) => {
                let path = home.dir().join(config::CONFIG_FILE);
                if cli.json {
                    out!(
                        "{}",
                        json!({
                            "serve": config.mailbox.serve,
                            "retention_days": config.mailbox.retention_days,
                            "config": path.display().to_string(),
                        })
                    );
                } else {
                    out!(
                        "serve as a mailbox: {}; keep what it holds {} days ({}; a running \
                         daemon takes this at its next start)",
                        if config.mailbox.serve { "yes" } else { "no" },
                        config.mailbox.retention_days,
                        path.display()
                    );
                }
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
        };
    }
    if let Command::Init = cli.command {
        return match daemon::init(&home).await {
            Ok(result) => {
                if cli.json {
                    out!("{result}");
                } else {
                    let verb = if result.get("created") == Some(&Value::Bool(true)) {
                        "created"
                    } else {
                        "already set up:"
                    };
                    out!("{verb} {}", text_of(&result, "data_dir"));
                    out!("id:   {}", text_of(&result, "id"));
                    out!(
                        "Start the node with `dspring daemon` (settings: config.toml in that \
                         directory); then `dspring id` prints the contact card to share, with \
                         the addresses the node listens on."
                    );
                }
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
        };
    }
    match command(&cli, &home).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

/// How long `daemon --detach` waits for the background daemon to answer.
const DETACH_WAIT: std::time::Duration = std::time::Duration::from_secs(60);
/// The background daemon's log, in the data directory; the previous run's is kept as
/// `daemon.log.old`, so at most two runs' logs are kept.
const DAEMON_LOG: &str = "daemon.log";

/// `daemon --detach`: runs this program again without `--detach`, in its own process group
/// with its output in the log, and returns once that daemon proves it is up.
async fn detach(home: &Home, json: bool) -> Result<(), String> {
    if Client::connect(home).await.is_ok() {
        return Err(format!(
            "a daemon is already running for {}",
            home.dir().display()
        ));
    }
    daemon::prepare(home).map_err(|e| e.to_string())?;
    // Whatever the address file says is stale: no daemon answered for it.
    home.remove_address();
    let log = home.dir().join(DAEMON_LOG);
    let _ = std::fs::rename(&log, home.dir().join(format!("{DAEMON_LOG}.old")));
    let output = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let errors = output
        .try_clone()
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let program = std::env::current_exe().map_err(|e| format!("this program's path: {e}"))?;
    let mut child = std::process::Command::new(program)
        .args(std::env::args_os().skip(1).filter(|a| a != "--detach"))
        // It starts a session of its own: no controlling terminal, so neither a Ctrl-C
        // here nor the terminal closing (SIGHUP) reaches it.
        .arg("--detached")
        .stdin(std::process::Stdio::null())
        .stdout(output)
        .stderr(errors)
        .env("NO_COLOR", "1")
        .spawn()
        .map_err(|e| format!("starting the daemon: {e}"))?;
    let deadline = std::time::Instant::now() + DETACH_WAIT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(format!(
                "the daemon stopped ({status}); the end of {}:\n{}",
                log.display(),
                tail.join("\n")
            ));
        }
        if let Ok(client) = Client::connect(home).await {
            out!("daemon running, pid {}; log: {}", child.id(), log.display());
            // Its first DHT bootstrap and catch-ups start now.
            watch_long_work(&client, json).await;
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "the daemon (pid {}) did not answer within {} s; see {}",
                child.id(),
                DETACH_WAIT.as_secs(),
                log.display()
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The method and parameters a command calls.
fn request(command: &Command) -> Result<(&'static str, Value), ClientError> {
    Ok(match command {
        Command::Daemon { .. }
        | Command::Demo
        | Command::Init
        | Command::Follow { .. }
        | Command::Mailbox(MailboxCommand::Serve { .. }) => {
            return Err(ClientError::BadAnswer("not a method".into()));
        }
        Command::Id { .. } => ("id", json!({})),
        Command::Contact(ContactCommand::Add { card, name }) => {
            ("contact.add", json!({ "card": card, "name": name }))
        }
        Command::Contact(ContactCommand::List) => ("contact.list", json!({})),
        Command::Contact(ContactCommand::Show { contact }) => {
            ("contact.show", json!({ "contact": contact }))
        }
        Command::Contact(ContactCommand::Verify {
            contact,
            safety_number,
            undo,
        }) => (
            "contact.verify",
            json!({ "contact": contact, "safety_number": safety_number, "undo": undo }),
        ),
        Command::Group(GroupCommand::Create { name, members }) => {
            ("group.create", json!({ "name": name, "members": members }))
        }
        Command::Group(GroupCommand::List) => ("group.list", json!({})),
        Command::Group(GroupCommand::Show { group }) => ("group.show", json!({ "group": group })),
        Command::Group(GroupCommand::Add { group, member }) => {
            ("group.add", json!({ "group": group, "member": member }))
        }
        Command::Group(GroupCommand::Remove { group, member }) => {
            ("group.remove", json!({ "group": group, "member": member }))
        }
        Command::Group(GroupCommand::Leave { group }) => ("group.leave", json!({ "group": group })),
        Command::Group(GroupCommand::Update { group }) => {
            ("group.update", json!({ "group": group }))
        }
        Command::Send { group, text } => {
            let text = if text == "-" {
                let mut input = String::new();
                std::io::stdin()
                    .take(dspring_node::MAX_MESSAGE_BYTES as u64 + 1)
                    .read_to_string(&mut input)
                    .map_err(|e| ClientError::BadAnswer(format!("reading standard input: {e}")))?;
                input
            } else {
                text.clone()
            };
            ("send", json!({ "group": group, "text": text }))
        }
        Command::Read {
            group,
            after,
            limit,
        } => (
            "read",
            json!({ "group": group, "after": after, "limit": limit }),
        ),
        Command::Status { .. } => ("status", json!({})),
        Command::Mailbox(MailboxCommand::Use { card }) => ("mailbox.use", json!({ "card": card })),
        Command::Invitation(InvitationCommand::List) => ("invitation.list", json!({})),
        Command::Invitation(InvitationCommand::Accept { group }) => {
            ("invitation.accept", json!({ "group": group }))
        }
        Command::Invitation(InvitationCommand::Decline { group }) => {
            ("invitation.decline", json!({ "group": group }))
        }
    })
}

async fn command(cli: &Cli, home: &Home) -> Result<(), ClientError> {
    let client = Client::connect(home).await?;
    if let Command::Follow { group, after } = &cli.command {
        let json = cli.json;
        // A closed stdout (`dspring follow | head -1`) ends the command quietly: println!
        // would panic.
        let mut out = std::io::stdout().lock();
        return client
            .follow(*after, group.as_deref(), |event| {
                let line = if json {
                    event.to_string()
                } else {
                    describe_event(&event)
                };
                writeln!(out, "{line}").and_then(|()| out.flush()).is_ok()
            })
            .await;
    }
    let (method, params) = request(&cli.command)?;
    let result = match cli.command {
        Command::Status {
            wait: true,
            timeout,
        } => wait_for_long_work(&client, timeout.map(std::time::Duration::from_secs)).await?,
        _ => client.call(method, params).await?,
    };
    if cli.json {
        out!("{result}");
    } else {
        print_human(method, &result);
        if let Command::Id { qr: true } = cli.command {
            out!("{}", qr_code(text_of(&result, "card"))?);
        }
    }
    if starts_long_work(method) {
        watch_long_work(&client, cli.json).await;
    }
    Ok(())
}

/// Methods after which the daemon has long work to do: news from a new mailbox, the
/// catch-up of a group just joined.
fn starts_long_work(method: &str) -> bool {
    matches!(method, "mailbox.use" | "invitation.accept")
}

/// How long a command that started long work shows its progress before it leaves the work
/// to the daemon: a catch-up that waits for a member who is offline must not hold a terminal.
const WATCH_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

/// How long a command waits for the work it started to show in the status: a catch-up
/// shows once the first sync page is back, news once the mailbox answered, each after a
/// dial that can take seconds on a slow network.
const WORK_START_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// With a person at the terminal (stdout and stderr both a terminal, no `--json`), shows the
/// daemon's long work until it ends, for at most [`WATCH_LIMIT`]; otherwise returns at once.
/// Ctrl-C or the limit end only the watching, never the work.
async fn watch_long_work(client: &Client, json: bool) {
    if json || !std::io::stderr().is_terminal() || !std::io::stdout().is_terminal() {
        return;
    }
    let watch = async {
        let started = tokio::time::Instant::now();
        loop {
            let status = client.call("status", json!({})).await?;
            if long_work(&status).is_some() {
                break;
            }
            if started.elapsed() >= WORK_START_GRACE {
                eprint!("\r\x1b[2K");
                return Ok(false);
            }
            eprint!("\r\x1b[2Kwaiting for the daemon to begin…");
            tokio::time::sleep(WAIT_POLL).await;
        }
        wait_for_long_work(client, None).await.map(|_| true)
    };
    tokio::select! {
        watched = tokio::time::timeout(WATCH_LIMIT, watch) => match watched {
            Ok(Ok(true)) => eprintln!("\r\x1b[2Kdone"),
            Ok(Ok(false)) => {}
            Ok(Err(error)) => eprintln!("\r\x1b[2Kwatching the daemon's progress: {error}"),
            Err(_) => eprintln!(
                "\r\x1b[2Kstill running in the daemon; 'dspring status --wait' follows it"
            ),
        },
        _ = tokio::signal::ctrl_c() => {
            eprintln!("\r\x1b[2Kstopped watching; the daemon goes on");
        }
    }
}

/// How often `status --wait` asks the daemon: often enough for a smooth count.
const WAIT_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// Asks for the status until no long work is running, drawing what runs on one line of a
/// terminal's stderr; returns the last status.
async fn wait_for_long_work(
    client: &Client,
    timeout: Option<std::time::Duration>,
) -> Result<Value, ClientError> {
    let started = tokio::time::Instant::now();
    let terminal = std::io::stderr().is_terminal();
    let mut drawn = false;
    loop {
        let status = client.call("status", json!({})).await?;
        let running = long_work(&status);
        if terminal && (drawn || running.is_some()) {
            // Carriage return and "erase line": the progress redraws in place.
            eprint!("\r\x1b[2K{}", running.as_deref().unwrap_or(""));
            drawn = true;
        }
        let Some(running) = running else {
            return Ok(status);
        };
        if timeout.is_some_and(|limit| started.elapsed() >= limit) {
            if drawn {
                eprintln!();
            }
            return Err(ClientError::TimedOut(running));
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
}
