//! The C library's allocator, tuned for a long-running agent whose passes allocate and free tens of
//! megabytes (the policy model of every pod): one arena, and freed pages handed back to the kernel after
//! passes, so the resident size follows what is live, not the largest pass so far.
//!
//! mimalloc was measured in its place (`make bench-policy`, 2026-12-06): the agent's RSS at 10,000 pods and
//! 1,000 policies was 109.5 MiB (peak 146.3) against glibc's 97.1 (peak 97.4) in the run before, so glibc
//! stays. What glibc keeps is fragmentation: 33.6 MiB in use, 52.6 MiB free inside the heap.

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
        }
    }
}

/// Hands freed pages back to the kernel at most every `every` (`malloc_trim(0)`, which also releases free
/// pages inside the heap, not only at its top; about a millisecond per 100 MiB of heap).
pub struct Trimmer {
    every: Duration,
    last: Option<Instant>,
    /// The heap in use when it was last logged, MiB.
    logged: f64,
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
        Trimmer { every, last: None, logged: 0.0 }
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
        // A line when what is live moved by a MiB or more: how the agent's footprint follows the cluster.
        if let Some(h) = heap().filter(|h| (h.in_use_mib - self.logged).abs() >= 1.0) {
            self.logged = h.in_use_mib;
            tracing::info!(in_use_mib = h.in_use_mib, free_mib = h.free_mib, mapped_mib = h.mapped_mib, "heap");
        }
    }
}
