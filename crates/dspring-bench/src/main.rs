//! `dspring-bench`: one table of what each group operation costs in CPU and bytes, for groups
//! of 8 to 256 members, measured the way the DCGKA paper measures (spec §13): every member
//! runs in this one thread in turn, each member's calls are timed separately, and every
//! envelope handed to the network is counted once.
//!
//! Usage: `dspring-bench [--sizes 8,16,...] [--iterations N] [--quick] [--markdown]`

#![forbid(unsafe_code)]

#[cfg(feature = "compare")]
mod compare;
mod store;

use std::process::ExitCode;
use std::time::Instant;

use dspring_proto::{Device, Group, GroupId};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

struct Options {
    sizes: Vec<usize>,
    iterations: usize,
    markdown: bool,
    store: Option<store::StoreOptions>,
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        sizes: vec![8, 16, 32, 64, 128, 256],
        iterations: 3,
        markdown: false,
        store: Some(store::StoreOptions {
            messages: 10_000,
            unbatched: 1_000,
            batch: 100,
        }),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => {
                options.sizes = vec![8, 16];
                options.iterations = 1;
                options.store = Some(store::StoreOptions {
                    messages: 1_000,
                    unbatched: 100,
                    batch: 100,
                });
            }
            "--no-store" => options.store = None,
            "--markdown" => options.markdown = true,
            "--sizes" => {
                let list = args.next().ok_or("--sizes needs a list like 8,16,32")?;
                options.sizes = list
                    .split(',')
                    .map(|s| {
                        s.trim()
                            .parse::<usize>()
                            .map_err(|e| format!("bad size {s:?}: {e}"))
                    })
                    .collect::<Result<_, _>>()?;
                if options.sizes.iter().any(|n| *n < 2 || *n > 1024) {
                    return Err("sizes must be between 2 and 1024".into());
                }
            }
            "--iterations" => {
                let n = args.next().ok_or("--iterations needs a number")?;
                options.iterations = n.parse().map_err(|e| format!("bad iteration count: {e}"))?;
                if options.iterations == 0 {
                    return Err("--iterations must be at least 1".into());
                }
            }
            "-h" | "--help" => {
                return Err("usage: dspring-bench [--sizes 8,16,...] [--iterations N] [--quick] [--markdown] [--no-store]".into());
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(options)
}

/// One member in the benchmark.
struct Member {
    device: Device,
    group: Option<Group>,
}

/// The cost of one operation in one group.
#[derive(Default, Clone, Copy)]
struct Cost {
    /// The initiator's own call, ms.
    sender_call_ms: f64,
    /// The initiator's call plus processing every resulting ack, ms.
    sender_total_ms: f64,
    /// Mean over the other members of processing the operation and all its acks, ms.
    receiver_ms: f64,
    /// Every envelope handed to the network, a broadcast counted once.
    wire_bytes: usize,
    /// Application messages only: envelope size minus the plaintext.
    overhead: usize,
}

fn ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e3
}

/// Delivers `outbox` envelopes (sent by `from`) to every other member, then their replies,
/// until quiet; returns bytes and each member's processing time.
fn flood(
    members: &mut [Member],
    from: usize,
    outbox: Vec<Vec<u8>>,
    rng: &mut ChaCha20Rng,
    time: &mut [f64],
) -> Result<usize, String> {
    let mut bytes = 0;
    let mut queue: Vec<(usize, Vec<u8>)> = outbox.into_iter().map(|b| (from, b)).collect();
    let mut next = 0;
    while let Some((origin, envelope)) = queue.get(next).cloned() {
        next += 1;
        bytes += envelope.len();
        for (i, member) in members.iter_mut().enumerate() {
            if i == origin {
                continue;
            }
            let Some(group) = member.group.as_ref() else {
                continue;
            };
            let start = Instant::now();
            let staged = group
                .receive(&member.device, envelope.clone(), rng)
                .map_err(|e| format!("member {i}: {e}"))?;
            if let Some(t) = time.get_mut(i) {
                *t += ms(start);
            }
            member.device.consume_prekeys(&staged.consumed_prekeys);
            for out in staged.outbox {
                queue.push((i, out.bytes));
            }
            member.group = Some(staged.group).filter(Group::is_active);
        }
    }
    Ok(bytes)
}

fn bytes_of(staged: &dspring_proto::Staged) -> Vec<Vec<u8>> {
    staged.outbox.iter().map(|o| o.bytes.clone()).collect()
}

/// A settled group of `n` members plus one device that is not a member yet.
fn setup(n: usize, rng: &mut ChaCha20Rng) -> Result<(Vec<Member>, Cost), String> {
    let mut members: Vec<Member> = (0..=n)
        .map(|_| Member {
            device: Device::generate(4, rng),
            group: None,
        })
        .collect();
    let bundles: Vec<_> = members
        .iter()
        .take(n)
        .skip(1)
        .map(|m| {
            m.device
                .bundle(m.device.prekeys.one_time_ids().first().copied())
        })
        .collect();
    let mut time = vec![0.0; n + 1];
    let start = Instant::now();
    let creator = members.first().ok_or("no members")?;
    let staged = Group::create(&creator.device, GroupId([7; 32]), &bundles, rng)
        .map_err(|e| e.to_string())?;
    let sender_call_ms = ms(start);
    let create = bytes_of(&staged);
    let create_envelope = create.first().cloned().ok_or("create sent nothing")?;
    if let Some(m) = members.first_mut() {
        m.group = Some(staged.group);
    }
    let mut acks = Vec::new();
    for (i, member) in members.iter_mut().enumerate().take(n).skip(1) {
        let start = Instant::now();
        let staged = Group::join(
            &member.device,
            GroupId([7; 32]),
            create_envelope.clone(),
            rng,
        )
        .map_err(|e| format!("join {i}: {e}"))?;
        if let Some(t) = time.get_mut(i) {
            *t += ms(start);
        }
        member.device.consume_prekeys(&staged.consumed_prekeys);
        acks.push((i, bytes_of(&staged)));
        member.group = Some(staged.group);
    }
    let mut wire_bytes = create_envelope.len();
    for (i, out) in acks {
        wire_bytes += flood(&mut members, i, out, rng, &mut time)?;
    }
    let receivers: Vec<f64> = time.iter().take(n).skip(1).copied().collect();
    Ok((
        members,
        Cost {
            sender_call_ms,
            sender_total_ms: sender_call_ms + time.first().copied().unwrap_or(0.0),
            receiver_ms: mean(&receivers),
            wire_bytes,
            overhead: 0,
        },
    ))
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

fn snapshot(members: &[Member]) -> Vec<Member> {
    members
        .iter()
        .map(|m| Member {
            device: m.device.clone(),
            group: m.group.clone(),
        })
        .collect()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Update,
    Add,
    Remove,
    Message,
}

/// Runs `op` by member 0 on a copy of the settled group.
fn measure(
    base: &[Member],
    n: usize,
    op: Op,
    rng: &mut ChaCha20Rng,
) -> Result<(Cost, f64, f64), String> {
    let mut members = snapshot(base);
    let mut time = vec![0.0; n + 1];
    let initiator = members.first().ok_or("no members")?;
    let group = initiator
        .group
        .clone()
        .ok_or("member 0 is not in the group")?;
    let newcomer = members.get(n).ok_or("no spare device")?.device.clone();
    let start = Instant::now();
    let staged = match op {
        Op::Update => group.update(rng),
        Op::Add => {
            let bundle = newcomer.bundle(newcomer.prekeys.one_time_ids().first().copied());
            group.add(&initiator.device, &bundle, rng)
        }
        Op::Remove => {
            let target = members.get(n - 1).ok_or("no member to remove")?.device.id();
            group.remove(target, rng)
        }
        Op::Message => group.send(&[0x42; 32]),
    }
    .map_err(|e| e.to_string())?;
    let sender_call_ms = ms(start);
    let out = bytes_of(&staged);
    if let Some(m) = members.first_mut() {
        m.group = Some(staged.group);
    }
    let overhead = if op == Op::Message {
        out.first().map_or(0, |b| b.len().saturating_sub(32))
    } else {
        0
    };
    let mut wire_bytes = 0;
    let mut newcomer_replies = Vec::new();
    if op == Op::Add {
        let welcome = out.first().cloned().ok_or("add sent nothing")?;
        let member = members.get_mut(n).ok_or("no spare device")?;
        let start = Instant::now();
        let staged = Group::join(&member.device, GroupId([7; 32]), welcome, rng)
            .map_err(|e| format!("newcomer: {e}"))?;
        if let Some(t) = time.get_mut(n) {
            *t += ms(start);
        }
        newcomer_replies = bytes_of(&staged);
        member.group = Some(staged.group);
    }
    wire_bytes += flood(&mut members, 0, out, rng, &mut time)?;
    wire_bytes += flood(&mut members, n, newcomer_replies, rng, &mut time)?;
    let receivers: Vec<f64> = time
        .iter()
        .enumerate()
        .skip(1)
        .filter(|(i, _)| *i < n || op == Op::Add)
        .map(|(_, t)| *t)
        .collect();
    let receiver_ms = mean(&receivers);
    let decrypt_us = receiver_ms * 1e3;
    Ok((
        Cost {
            sender_call_ms,
            sender_total_ms: sender_call_ms + time.first().copied().unwrap_or(0.0),
            receiver_ms,
            wire_bytes,
            overhead,
        },
        sender_call_ms * 1e3,
        decrypt_us,
    ))
}

struct Row {
    scheme: &'static str,
    op: &'static str,
    n: usize,
    cost: Cost,
    encrypt_us: Option<f64>,
    decrypt_us: Option<f64>,
}

fn average(costs: &[Cost]) -> Cost {
    let k = costs.len().max(1) as f64;
    Cost {
        sender_call_ms: costs.iter().map(|c| c.sender_call_ms).sum::<f64>() / k,
        sender_total_ms: costs.iter().map(|c| c.sender_total_ms).sum::<f64>() / k,
        receiver_ms: costs.iter().map(|c| c.receiver_ms).sum::<f64>() / k,
        wire_bytes: costs.first().map_or(0, |c| c.wire_bytes),
        overhead: costs.first().map_or(0, |c| c.overhead),
    }
}

fn run(options: &Options) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    let mut rng = ChaCha20Rng::seed_from_u64(2026);
    for &n in &options.sizes {
        let mut creates = Vec::new();
        let mut base = None;
        for _ in 0..options.iterations {
            let (members, cost) = setup(n, &mut rng)?;
            creates.push(cost);
            base = Some(members);
        }
        let base = base.ok_or("no iterations")?;
        rows.push(Row {
            scheme: "dspring",
            op: "create",
            n,
            cost: average(&creates),
            encrypt_us: None,
            decrypt_us: None,
        });
        for (op, name) in [
            (Op::Update, "update"),
            (Op::Add, "add"),
            (Op::Remove, "remove"),
            (Op::Message, "message"),
        ] {
            let mut costs = Vec::new();
            let mut enc = Vec::new();
            let mut dec = Vec::new();
            // Messages are cheap: repeat them more for a stable mean.
            let repeat = if op == Op::Message {
                options.iterations * 20
            } else {
                options.iterations
            };
            for _ in 0..repeat {
                let (cost, e, d) = measure(&base, n, op, &mut rng)?;
                costs.push(cost);
                enc.push(e);
                dec.push(d);
            }
            rows.push(Row {
                scheme: "dspring",
                op: name,
                n,
                cost: average(&costs),
                encrypt_us: (op == Op::Message).then(|| mean(&enc)),
                decrypt_us: (op == Op::Message).then(|| mean(&dec)),
            });
        }
        #[cfg(feature = "compare")]
        for (scheme, measure) in [
            ("openmls", compare::openmls as compare::Measure),
            ("p2panda", compare::p2panda as compare::Measure),
        ] {
            for op in ["create", "update", "add", "remove", "message"] {
                let mut costs = Vec::new();
                let mut enc = Vec::new();
                let mut dec = Vec::new();
                for _ in 0..options.iterations {
                    let (cost, e, d) =
                        measure(op, n).map_err(|e| format!("{scheme} {op} n={n}: {e}"))?;
                    costs.push(cost);
                    enc.extend(e);
                    dec.extend(d);
                }
                rows.push(Row {
                    scheme,
                    op,
                    n,
                    cost: average(&costs),
                    encrypt_us: (!enc.is_empty()).then(|| mean(&enc)),
                    decrypt_us: (!dec.is_empty()).then(|| mean(&dec)),
                });
            }
        }
    }
    Ok(rows)
}

fn print(rows: &[Row], markdown: bool) {
    let header = [
        "scheme",
        "op",
        "n",
        "sender call ms",
        "sender+acks ms",
        "CPU/receiver ms",
        "wire bytes",
        "app overhead B",
        "encrypt µs",
        "decrypt µs",
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let message = r.op == "message";
            vec![
                r.scheme.to_string(),
                r.op.to_string(),
                r.n.to_string(),
                format!("{:.3}", r.cost.sender_call_ms),
                format!("{:.3}", r.cost.sender_total_ms),
                format!("{:.3}", r.cost.receiver_ms),
                r.cost.wire_bytes.to_string(),
                if message {
                    r.cost.overhead.to_string()
                } else {
                    "-".into()
                },
                r.encrypt_us.map_or("-".into(), |v| format!("{v:.1}")),
                r.decrypt_us.map_or("-".into(), |v| format!("{v:.1}")),
            ]
        })
        .collect();
    if markdown {
        println!("| {} |", header.join(" | "));
        println!("|{}", "---|".repeat(header.len()));
        for row in &cells {
            println!("| {} |", row.join(" | "));
        }
    } else {
        let widths: Vec<usize> = (0..header.len())
            .map(|i| {
                cells
                    .iter()
                    .filter_map(|r| r.get(i))
                    .map(|c| c.chars().count())
                    .chain(header.get(i).map(|h| h.chars().count()))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |row: Vec<String>| {
            row.iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:>w$}"))
                .collect::<Vec<_>>()
                .join("  ")
        };
        println!("{}", line(header.iter().map(|h| h.to_string()).collect()));
        for row in cells {
            println!("{}", line(row));
        }
    }
}

/// The DCGKA paper's published figures (spec §13), printed beside the measured table.
fn print_published() {
    println!();
    println!(
        "published, not measured here: DCGKA paper's Java prototype (authors' CSVs, 25 iterations)"
    );
    println!("total bytes on the wire        create    add  remove  update  message");
    for (n, row) in [
        (8, [2_562, 3_746, 2_105, 2_389, 171]),
        (16, [5_348, 7_203, 4_649, 4_934, 171]),
        (32, [10_916, 14_483, 9_738, 10_022, 171]),
        (64, [22_115, 30_580, 19_914, 20_198, 171]),
        (128, [44_454, 77_306, 40_269, 40_553, 171]),
    ] {
        println!(
            "  n = {n:<3}                   {:>8} {:>6} {:>7} {:>7} {:>8}",
            row[0], row[1], row[2], row[3], row[4]
        );
    }
    println!(
        "CPU per client thread, ms (sender = processing the acks only; initiator's call not counted)"
    );
    println!("                               create    add  remove  update  message");
    for (n, role, row) in [
        (8, "sender", [2.68, 2.82, 2.05, 2.39, 0.07]),
        (8, "recipient", [3.84, 4.85, 2.33, 3.01, 0.47]),
        (64, "sender", [22.44, 25.49, 22.31, 25.31, 0.10]),
        (64, "recipient", [24.05, 27.43, 22.94, 26.57, 0.40]),
        (128, "sender", [57.95, 66.96, 63.68, 63.44, 0.08]),
        (128, "recipient", [61.76, 68.85, 65.97, 66.69, 0.50]),
    ] {
        println!(
            "  n = {n:<3} {role:<9}         {:>8.2} {:>6.2} {:>7.2} {:>7.2} {:>8.2}",
            row[0], row[1], row[2], row[3], row[4]
        );
    }
    println!("application message overhead: paper 139 B (171 B for a 32-byte message)");
}

fn main() -> ExitCode {
    let options = match parse_options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    eprintln!(
        "measuring dspring for n = {:?}, {} iteration(s), single thread, wall time per member call",
        options.sizes, options.iterations
    );
    match run(&options) {
        Ok(rows) => {
            print(&rows, options.markdown);
            print_published();
        }
        Err(message) => {
            eprintln!("benchmark failed: {message}");
            return ExitCode::FAILURE;
        }
    }
    if let Some(store_options) = &options.store {
        eprintln!("measuring the store (durable commits on the working directory's disk)");
        match store::run(store_options) {
            Ok(report) => store::print(&report),
            Err(message) => {
                eprintln!("store benchmark failed: {message}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
