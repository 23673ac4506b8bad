//! Store benchmark: durable applies of received group messages (core receive + one store
//! transaction each), the same in batches, and the disk space per stored message, beside bare
//! SQLite inserts of the same envelopes with the same durability settings.

use std::path::Path;
use std::time::Instant;

use dspring_proto::{Device, Group, GroupId, Staged};
use dspring_store::Store;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

/// Group size of the benchmark: a small group, as most are; the state grows with it.
const GROUP_SIZE: usize = 8;
/// Message size the target is set for.
const MESSAGE_LEN: usize = 32;

pub struct StoreOptions {
    /// Messages in the batched run and the size measurement.
    pub messages: usize,
    /// Messages applied one transaction each.
    pub unbatched: usize,
    pub batch: usize,
}

pub struct StoreReport {
    pub unbatched_per_s: f64,
    pub batched_per_s: f64,
    pub bare_unbatched_per_s: f64,
    pub bare_batched_per_s: f64,
    pub bytes_per_message: f64,
    pub bytes_per_10k: u64,
    pub bare_bytes_per_message: f64,
    pub options_messages: usize,
    pub options_unbatched: usize,
    pub options_batch: usize,
}

struct Fixture {
    receiver: Device,
    joined: Staged,
    envelopes: Vec<Vec<u8>>,
}

fn fixture(messages: usize) -> Result<Fixture, String> {
    let mut rng = ChaCha20Rng::seed_from_u64(17);
    let devices: Vec<Device> = (0..GROUP_SIZE)
        .map(|_| Device::generate(1, &mut rng))
        .collect();
    let [sender, receiver, others @ ..] = devices.as_slice() else {
        return Err("group too small".into());
    };
    let mut bundles = vec![receiver.bundle(None)];
    bundles.extend(others.iter().map(|d| d.bundle(None)));
    let group_id = GroupId([0x5b; 32]);
    let created = Group::create(sender, group_id, &bundles, &mut rng).map_err(|e| e.to_string())?;
    let create = created
        .outbox
        .first()
        .ok_or("create produced no envelope")?
        .bytes
        .clone();
    let joined = Group::join(receiver, group_id, create, &mut rng).map_err(|e| e.to_string())?;
    let mut group = created.group;
    let mut envelopes = Vec::with_capacity(messages);
    for i in 0..messages {
        let mut text = [0u8; MESSAGE_LEN];
        text[..8].copy_from_slice(&(i as u64).to_le_bytes());
        let sent = group.send(&text).map_err(|e| e.to_string())?;
        envelopes.push(
            sent.outbox
                .first()
                .ok_or("send produced no envelope")?
                .bytes
                .clone(),
        );
        group = sent.group;
    }
    Ok(Fixture {
        receiver: receiver.clone(),
        joined,
        envelopes,
    })
}

fn files_size(path: &Path) -> u64 {
    ["", "-wal"]
        .iter()
        .filter_map(|suffix| {
            let mut name = path.as_os_str().to_owned();
            name.push(suffix);
            std::fs::metadata(name).ok().map(|m| m.len())
        })
        .sum()
}

/// Applies `envelopes` to the receiver's group in its store, `batch` per transaction; returns
/// applies per second.
fn apply_run(
    dir: &Path,
    fixture: &Fixture,
    envelopes: &[Vec<u8>],
    batch: usize,
) -> Result<(f64, Store), String> {
    let mut store = Store::open(dir, None).map_err(|e| e.to_string())?;
    store.apply(&fixture.joined).map_err(|e| e.to_string())?;
    let mut group = fixture.joined.group.clone();
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let start = Instant::now();
    for chunk in envelopes.chunks(batch.max(1)) {
        let mut steps = Vec::with_capacity(chunk.len());
        for bytes in chunk {
            let staged = group
                .receive(&fixture.receiver, bytes.clone(), &mut rng)
                .map_err(|e| e.to_string())?;
            group = staged.group.clone();
            steps.push(staged);
        }
        let refs: Vec<&Staged> = steps.iter().collect();
        store.apply_batch(&refs).map_err(|e| e.to_string())?;
    }
    let rate = envelopes.len() as f64 / start.elapsed().as_secs_f64();
    Ok((rate, store))
}

/// Bare SQLite with the store's durability settings for a delivery that sends nothing (WAL,
/// `synchronous = NORMAL`): one envelope row per message.
fn bare_run(path: &Path, envelopes: &[Vec<u8>], batch: usize) -> Result<(f64, u64), String> {
    let err = |e: rusqlite::Error| e.to_string();
    let mut conn = rusqlite::Connection::open(path).map_err(err)?;
    conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
        .map_err(err)?;
    conn.execute_batch(
        "PRAGMA synchronous = NORMAL; PRAGMA secure_delete = ON;
         CREATE TABLE log (id INTEGER PRIMARY KEY, bytes BLOB NOT NULL);",
    )
    .map_err(err)?;
    let start = Instant::now();
    for chunk in envelopes.chunks(batch.max(1)) {
        let tx = conn.transaction().map_err(err)?;
        for bytes in chunk {
            tx.prepare_cached("INSERT INTO log (bytes) VALUES (?1)")
                .map_err(err)?
                .execute([bytes])
                .map_err(err)?;
        }
        tx.commit().map_err(err)?;
    }
    let rate = envelopes.len() as f64 / start.elapsed().as_secs_f64();
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .map_err(err)?;
    drop(conn);
    Ok((rate, files_size(path)))
}

pub fn run(options: &StoreOptions) -> Result<StoreReport, String> {
    let fixture = fixture(options.messages.max(options.unbatched))?;
    // On the working directory's disk, not a RAM disk, so that syncs are real.
    let scratch = tempfile::tempdir_in(".").map_err(|e| format!("scratch directory: {e}"))?;
    let unbatched_envelopes = fixture
        .envelopes
        .get(..options.unbatched)
        .ok_or("not enough messages")?;
    let all = fixture
        .envelopes
        .get(..options.messages)
        .ok_or("not enough messages")?;

    let (unbatched_per_s, _) = apply_run(
        &scratch.path().join("unbatched"),
        &fixture,
        unbatched_envelopes,
        1,
    )?;

    // Size: the database after the join alone, then after every message (checkpointed).
    let base_dir = scratch.path().join("base");
    let base = {
        let mut store = Store::open(&base_dir, None).map_err(|e| e.to_string())?;
        store.apply(&fixture.joined).map_err(|e| e.to_string())?;
        store.checkpoint().map_err(|e| e.to_string())?;
        files_size(store.path())
    };
    let (batched_per_s, store) = apply_run(
        &scratch.path().join("batched"),
        &fixture,
        all,
        options.batch,
    )?;
    store.checkpoint().map_err(|e| e.to_string())?;
    let full = files_size(store.path());
    drop(store);
    let bytes_per_message = full.saturating_sub(base) as f64 / all.len() as f64;

    let (bare_unbatched_per_s, _) = bare_run(
        &scratch.path().join("bare1.sqlite3"),
        unbatched_envelopes,
        1,
    )?;
    let (bare_batched_per_s, bare_size) =
        bare_run(&scratch.path().join("bare2.sqlite3"), all, options.batch)?;
    Ok(StoreReport {
        unbatched_per_s,
        batched_per_s,
        bare_unbatched_per_s,
        bare_batched_per_s,
        bytes_per_message,
        bytes_per_10k: (bytes_per_message * 10_000.0) as u64,
        bare_bytes_per_message: bare_size as f64 / all.len() as f64,
        options_messages: options.messages,
        options_unbatched: options.unbatched,
        options_batch: options.batch,
    })
}

pub fn print(report: &StoreReport) {
    println!();
    println!(
        "store: received {MESSAGE_LEN}-byte messages in a group of {GROUP_SIZE}, each core receive \
         committed (WAL; a step that sends nothing commits with synchronous=NORMAL: safe from a \
         process crash at once, from power loss at the next sync); {} messages batched {} per \
         transaction, {} unbatched",
        report.options_messages, report.options_batch, report.options_unbatched
    );
    println!(
        "| {:<44} | {:>17} | {:>17} | {:>14} |",
        "scheme", "applies/s (1/tx)", "applies/s (batch)", "bytes/message"
    );
    println!("|{:-<46}|{:->19}|{:->19}|{:->16}|", "", "", "", "");
    println!(
        "| {:<44} | {:>17.0} | {:>17.0} | {:>14.0} |",
        "dspring-store (receive + decrypt + apply)",
        report.unbatched_per_s,
        report.batched_per_s,
        report.bytes_per_message
    );
    println!(
        "| {:<44} | {:>17.0} | {:>17.0} | {:>14.0} |",
        "bare SQLite insert of the envelope",
        report.bare_unbatched_per_s,
        report.bare_batched_per_s,
        report.bare_bytes_per_message
    );
    println!(
        "| {:<44} | {:>17} | {:>17} | {:>14} |",
        "target (issue #3)", "", ">= 5000", "< 400"
    );
    println!(
        "database growth per 10,000 messages: {:.2} MiB",
        report.bytes_per_10k as f64 / (1024.0 * 1024.0)
    );
}
