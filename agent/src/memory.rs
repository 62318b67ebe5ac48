//! The C library's allocator, tuned for a long-running agent whose passes allocate and free megabytes:
//! one arena, large blocks mapped on their own, and freed pages handed back to the kernel after passes,
//! so the resident size follows what is live, not the largest pass so far.
//!
//! What fills a heap with free pages it cannot hand back is a large burst of small short-lived blocks
//! interleaved with long-lived ones. The agent had two: reading nft's JSON listing into a tree of values
//! (the counters every 5 s, the drift check every resync; now parsed typed, `kernel/listing.rs`), and
//! parsing every pod's managed fields only to drop them (now skipped unparsed, `tabby_api::pod`). On the
//! node whose pod is under 1,000 policies that took the agent from 95.5 MiB (50 MiB free inside the heap)
//! to 57.6 MiB (`make bench-policy`, 2026-12-06).
//!
//! mimalloc was measured in glibc's place the same day, before those changes: RSS 109.5 MiB (peak 146.3)
//! against glibc's 97.1 (peak 97.4), so glibc stays.

use std::time::{Duration, Instant};

/// One glibc malloc arena for the whole process, unless `MALLOC_ARENA_MAX` says otherwise. glibc gives
/// each thread that allocates its own arena (up to 8 per core), and every arena keeps its own free
/// pages: with the runtime's workers and blocking threads that was a third of the agent's RSS at 10k pods
/// (64.8 MiB against 43.1 with one arena). Small allocations still avoid the arena lock through glibc's
/// per-thread cache. Call before any thread starts.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a tunable; it is called before the runtime starts other threads.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
            // Blocks of 256 KiB and more (a listing of the nftables table, a page of a list) are mapped on
            // their own and handed back when freed. Setting it also stops glibc from raising the threshold
            // to the largest block freed so far, which put every later listing in the heap.
            libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        }
    }
}

/// Hands freed pages back to the kernel at most every `every` (`malloc_trim(0)`, which also releases free
/// pages inside the heap, not only at its top; about a millisecond per 100 MiB of heap). The agent trims
/// at most every 2 s: the RSS someone reads between two trims is what is live plus what the passes since
/// the last one touched.
pub struct Trimmer {
    every: Duration,
    last: Option<Instant>,
    /// The heap in use and free inside it when it was last logged, MiB.
    logged: (f64, f64),
}

/// The C library's heap: in use, free inside it (what fragmentation keeps, resident or handed back),
/// and mapped on its own (large blocks), in MiB.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Heap {
    pub in_use_mib: f64,
    pub free_mib: f64,
    pub mapped_mib: f64,
}

/// The heap's figures (`mallinfo2`); `None` off glibc.
pub fn heap() -> Option<Heap> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads the allocator's own counters.
        let m = unsafe { libc::mallinfo2() };
        let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
        Some(Heap { in_use_mib: mib(m.uordblks + m.hblkhd), free_mib: mib(m.fordblks), mapped_mib: mib(m.hblkhd) })
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
}

impl Trimmer {
    pub fn new(every: Duration) -> Trimmer {
        Trimmer { every, last: None, logged: (0.0, 0.0) }
    }

    /// After a pass: trims when the last trim is older than `every`.
    pub fn after_pass(&mut self) {
        if self.last.is_some_and(|t| t.elapsed() < self.every) {
            return;
        }
        self.last = Some(Instant::now());
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only returns free memory of the allocator's own arenas to the kernel.
        unsafe {
            libc::malloc_trim(0);
        }
        // A line when what is live or what is free in the heap moved by a MiB or more: how the agent's
        // footprint follows the cluster.
        let moved = |h: &Heap| (h.in_use_mib - self.logged.0).abs() >= 1.0 || (h.free_mib - self.logged.1).abs() >= 1.0;
        if let Some(h) = heap().filter(moved) {
            self.logged = (h.in_use_mib, h.free_mib);
            tracing::info!(in_use_mib = h.in_use_mib, free_mib = h.free_mib, mapped_mib = h.mapped_mib, "heap");
        }
    }
}
