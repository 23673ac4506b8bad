//! Giving freed heap back to the operating system.
//!
//! A node's heap peaks while it joins the DHT: a bootstrap and its bucket refreshes connect to
//! dozens of peers for some seconds, at about 140 KB each (libp2p's Noise and stream buffers).
//! glibc's allocator keeps what is freed mapped, so the process would stay at that peak for
//! good: in the network benchmark, 8.4 MiB resident per node against a live heap of 2.5 MiB.
//! Other allocators (musl's, macOS's) give memory back themselves; there this does nothing.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Connections closed since the last release before the next one is worth its cost: eight
/// closed connections free about 1 MiB.
pub(crate) const RELEASE_AFTER_CLOSED_CONNECTIONS: u32 = 8;

/// At most one release per process in this time (the maintenance interval, so that a node on
/// its own releases at its next round). A release walks every free chunk of the process's
/// heap and locks each arena while it does: in the network benchmark's process (100 nodes,
/// about 1 GiB mapped) 12 to 54 ms each. The heap is the process's, not a node's, so the
/// bound is too: when every node released on its own, the benchmark's process spent 2.7 s
/// of 110 in releases.
pub(crate) const MIN_RELEASE_INTERVAL: Duration = Duration::from_secs(10);

/// When this process last released memory.
static LAST_RELEASE: Mutex<Option<Instant>> = Mutex::new(None);

/// Decides when freed memory is worth returning: after enough connections have closed.
#[derive(Debug, Default)]
pub(crate) struct MemoryRelease {
    closed_since_release: u32,
}

impl MemoryRelease {
    pub(crate) fn connection_closed(&mut self) {
        self.closed_since_release = self.closed_since_release.saturating_add(1);
    }

    /// Whether enough has been freed since this node's last release, and the process has not
    /// released lately; if so, the release is counted as done.
    pub(crate) fn take_due(&mut self, now: Instant) -> bool {
        match LAST_RELEASE.lock() {
            Ok(mut last) => self.take_due_after(&mut last, now),
            Err(_) => false,
        }
    }

    fn take_due_after(&mut self, last_release: &mut Option<Instant>, now: Instant) -> bool {
        if self.closed_since_release < RELEASE_AFTER_CLOSED_CONNECTIONS
            || last_release
                .is_some_and(|at| now.saturating_duration_since(at) < MIN_RELEASE_INTERVAL)
        {
            return false;
        }
        *last_release = Some(now);
        self.closed_since_release = 0;
        true
    }
}

/// Hands whole free pages of the heap back to the kernel. Blocking: call it off the runtime's
/// worker threads.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub(crate) fn release_free_memory() {
    // SAFETY: malloc_trim takes no pointer and touches only glibc's own free lists, under each
    // arena's lock. No maintained crate offers a safe wrapper for it.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn release_free_memory() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_released_after_enough_closed_connections_and_not_too_often() {
        // The process's last release, kept here rather than in the static that nodes of
        // other tests may set.
        let mut last_release = None;
        let start = Instant::now();
        let mut node = MemoryRelease::default();
        for _ in 1..RELEASE_AFTER_CLOSED_CONNECTIONS {
            node.connection_closed();
        }
        assert!(!node.take_due_after(&mut last_release, start));
        node.connection_closed();
        assert!(node.take_due_after(&mut last_release, start));
        // The count starts again after a release.
        assert!(!node.take_due_after(&mut last_release, start));

        // Another node of the same process, with enough closed, waits for the interval.
        let mut other = MemoryRelease::default();
        for _ in 0..RELEASE_AFTER_CLOSED_CONNECTIONS {
            other.connection_closed();
        }
        assert!(!other.take_due_after(&mut last_release, start + MIN_RELEASE_INTERVAL / 2));
        assert!(other.take_due_after(&mut last_release, start + MIN_RELEASE_INTERVAL));
    }

    /// Resident memory of this process, bytes.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn resident() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_release_gives_freed_small_allocations_back() {
        const CHUNKS: usize = 16 * 1024;
        const CHUNK: usize = 4096;
        // Small chunks (glibc serves them from its arenas, not from mmap) written to, so
        // that they are resident; a last one above them keeps glibc from trimming the top of
        // the heap by itself when the others are freed.
        let chunks: Vec<Vec<u8>> = (0..CHUNKS).map(|i| vec![i as u8 | 1; CHUNK]).collect();
        let pin = vec![1u8; CHUNK];
        drop(chunks);
        let before = resident();
        release_free_memory();
        let after = resident();
        drop(pin);
        let freed = (CHUNKS * CHUNK) as u64;
        assert!(
            before.saturating_sub(after) > freed / 2,
            "resident {before} -> {after} after freeing {freed} bytes"
        );
    }
}
