//! `dspring-reachbench`: how fast peers reach each other in real-life conditions. Real nodes
//! in this process (libp2p on loopback, TCP and QUIC, a SQLite file and a thread each), each in
//! its own temporary data directory, mDNS off and no bootstrap node: there is no DHT in common,
//! so nodes know each other only from contact cards and from what they learn at runtime. A
//! restart is `stop` then `Node::start` on the same data directory, on new ports (port 0).
//!
//! Figures (each time as p50 / p90 over the repetitions):
//! 1. one peer restarts on a new port: from its start until a message it sends is read;
//! 2. two peers restart on new ports, sharing a third that stayed up: the same;
//! 3. after restarts, the group idle at both and their connections closed: a message's time;
//! 4. a member whose group went idle, with a mailbox: from the send until the member reads it,
//!    once with the sender able to dial the member and once with the member reachable only
//!    through its mailbox (it blocks the sender);
//! 5. a node in 1,000 idle two-member groups: heap and RSS per idle group, bytes sent per
//!    idle group and second (the heap counter and RSS are the process's: this figure runs
//!    first, with only its two nodes alive);
//! 6. the sender's upload per message (in message sizes) in groups of 16, 64 and 256 members;
//!    a size this machine cannot keep up with (every node is in this one process) is reported
//!    and replaced by half of it.
//!
//! Usage: `dspring-reachbench [--quick] [--repeats N] [--idle-groups N] [--sizes 16,64,256]
//! [--only 1,2,...]`. Prints one table (figure, measured, target, met?). Exits 0 when every
//! figure was measured, whether or not it met its target; non-zero when the benchmark itself
//! failed (a node did not start, a group was never joined). Linux only (memory from
//! `/proc/self`).

#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::{Duration, Instant};

// Shared with `dspring-netbench` (src/net.rs).
#[path = "../common.rs"]
mod common;
mod idle_groups;
mod idle_wake;
mod mailbox;
mod peer;
mod report;
mod restarts;
mod upload;

use peer::SHORT_IDLE;
use report::Row;

struct Options {
    quick: bool,
    repeats: usize,
    idle_groups: usize,
    idle_window: Duration,
    sizes: Vec<usize>,
    /// Figures to run (all when empty).
    only: Vec<u8>,
}

impl Options {
    fn runs(&self, figure: u8) -> bool {
        self.only.is_empty() || self.only.contains(&figure)
    }
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        quick: false,
        repeats: 20,
        idle_groups: 1000,
        idle_window: Duration::from_secs(30),
        sizes: vec![16, 64, 256],
        only: Vec::new(),
    };
    let list = |name: &str, value: Option<String>| -> Result<Vec<usize>, String> {
        value
            .ok_or(format!("{name} needs a comma-separated list"))?
            .split(',')
            .map(|v| {
                v.trim()
                    .parse::<usize>()
                    .map_err(|e| format!("{name}: {e}"))
            })
            .collect()
    };
    let number = |name: &str, value: Option<String>| -> Result<usize, String> {
        value
            .ok_or(format!("{name} needs a number"))?
            .parse::<usize>()
            .map_err(|e| format!("{name}: {e}"))
    };
    // What was given explicitly wins over --quick, wherever it stands.
    let (mut repeats, mut idle_groups, mut sizes) = (None, None, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => options.quick = true,
            "--repeats" => repeats = Some(number("--repeats", args.next())?),
            "--idle-groups" => idle_groups = Some(number("--idle-groups", args.next())?),
            "--sizes" => sizes = Some(list("--sizes", args.next())?),
            "--only" => {
                options.only = list("--only", args.next())?
                    .into_iter()
                    .map(|f| u8::try_from(f).unwrap_or(0))
                    .collect();
            }
            "-h" | "--help" => {
                return Err("usage: dspring-reachbench [--quick] [--repeats N] \
                     [--idle-groups N] [--sizes 16,64,256] [--only 1,2,3,4,5,6]"
                    .into());
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    if options.quick {
        options.repeats = 5;
        options.idle_groups = 100;
        options.idle_window = Duration::from_secs(10);
        options.sizes = vec![8, 16, 32];
    }
    options.repeats = repeats.unwrap_or(options.repeats);
    options.idle_groups = idle_groups.unwrap_or(options.idle_groups);
    options.sizes = sizes.unwrap_or(options.sizes);
    if options.repeats == 0 || options.idle_groups == 0 {
        return Err("--repeats and --idle-groups must be at least 1".into());
    }
    if options.sizes.iter().any(|&s| s < 2) {
        return Err("every group size in --sizes must be at least 2".into());
    }
    if options.only.iter().any(|f| !(1..=6).contains(f)) {
        return Err("--only takes figure numbers 1 to 6".into());
    }
    Ok(options)
}

async fn run(options: &Options) -> (Vec<Row>, bool) {
    let (mut rows, mut failed) = (Vec::new(), false);
    // Figure 5 first: its heap and RSS are the process's, read while no other node is alive.
    for figure in [5, 1, 2, 3, 4, 6] {
        if !options.runs(figure) {
            continue;
        }
        let started = Instant::now();
        let result = match figure {
            1 => restarts::restart_one(options).await,
            2 => restarts::restart_two(options).await,
            3 => idle_wake::idle_wake(options).await,
            4 => mailbox::mailbox_push(options).await,
            5 => idle_groups::idle_groups(options).await,
            _ => upload::upload_by_size(options).await,
        };
        eprintln!(
            "figure {figure} took {:.0} s",
            started.elapsed().as_secs_f64()
        );
        match result {
            Ok(mut figure_rows) => rows.append(&mut figure_rows),
            Err(message) => {
                eprintln!("figure {figure} failed: {message}");
                failed = true;
                rows.push(Row::new(
                    figure,
                    &format!("{figure}. (failed)"),
                    format!("benchmark failed: {message}"),
                    "",
                    None,
                ));
            }
        }
    }
    rows.sort_by_key(|r| r.figure);
    (rows, failed)
}

fn print_table(options: &Options, rows: &[Row], took: Duration) {
    println!(
        "Reach benchmark: nodes in one process on loopback (TCP and QUIC), each in its own data \
         directory, mDNS off, no bootstrap node (peers know each other from contact cards \
         only); restarts on new ports; {} runs per timed figure; idle time {} s in figures 3 \
         to 5; took {:.1} min",
        options.repeats,
        SHORT_IDLE.as_secs(),
        took.as_secs_f64() / 60.0
    );
    println!();
    println!("| figure | measured | target | met? |");
    println!("|---|---|---|---|");
    for row in rows {
        let met = match (row.met, &row.caveat) {
            (Some(true), Some(caveat)) => format!("yes {caveat}"),
            (Some(true), None) => "yes".into(),
            (Some(false), _) => "no".into(),
            (None, _) => "–".into(),
        };
        println!(
            "| {} | {} | {} | {met} |",
            row.name, row.measured, row.target
        );
    }
    println!();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut command = "cargo run --release -p dspring-bench --bin dspring-reachbench".to_string();
    if !args.is_empty() {
        command += &format!(" -- {}", args.join(" "));
    }
    println!("Command: {command}");
}

fn main() -> ExitCode {
    // The nodes' logs on stderr, between the figures' own lines, to look into a run.
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    let (options, runtime) = match common::start(parse_options) {
        Ok(started) => started,
        Err(code) => return code,
    };
    let started = Instant::now();
    let (rows, failed) = runtime.block_on(run(&options));
    print_table(&options, &rows, started.elapsed());
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
