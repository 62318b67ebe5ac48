//! The allocator, for a long-running agent whose passes allocate and free tens of megabytes (the policy
//! model of every pod) while it keeps others (its caches, what it programmed): mimalloc, which groups
//! objects by size in pages it hands back to the kernel once they are empty. glibc's malloc, even with
//! one arena and `malloc_trim` after passes, kept a heap of 86 MiB for 33.6 MiB in use at 10,000 pods
//! and 1,000 policies (`make bench-policy`): small long-lived objects pin the pages around the freed
//! ones. After passes (at most every 10 s) freed memory is handed back at once (`mi_collect`), and a
//! `heap` line reports what the allocator holds when that moved by a MiB.

/// The process's allocator (the binary's and the tests').
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::{Duration, Instant};

/// One glibc malloc arena, unless `MALLOC_ARENA_MAX` says otherwise: what C code still allocates through
/// glibc (the Rust side is mimalloc's) does not get an arena per thread (up to 8 per core, each keeping
/// its own free pages). Call before any thread starts.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a tunable; it is called before the runtime starts other threads.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

/// Hands freed pages back to the kernel at most every `every` (`mi_collect`, and `malloc_trim(0)` for
/// glibc's heap).
pub struct Trimmer {
    every: Duration,
    last: Option<Instant>,
    /// What the allocator held when that was last logged, MiB.
    logged: f64,
}

/// What the allocator holds from the kernel (mimalloc's committed memory), in MiB, and what the C
/// library's own heap (C code's allocations) has in use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Heap {
    pub committed_mib: f64,
    pub peak_committed_mib: f64,
    pub libc_in_use_mib: f64,
}

/// The allocator's figures.
pub fn heap() -> Heap {
    let (mut elapsed, mut user, mut system, mut rss, mut peak_rss, mut commit, mut peak_commit, mut faults) =
        (0, 0, 0, 0, 0, 0, 0, 0);
    // SAFETY: mi_process_info only writes the counters it is given.
    unsafe {
        libmimalloc_sys::mi_process_info(
            &mut elapsed,
            &mut user,
            &mut system,
            &mut rss,
            &mut peak_rss,
            &mut commit,
            &mut peak_commit,
            &mut faults,
        );
    }
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallinfo2 only reads the C allocator's own counters.
    let libc = unsafe {
        let m = libc::mallinfo2();
        m.uordblks + m.hblkhd
    };
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let libc = 0;
    Heap { committed_mib: mib(commit), peak_committed_mib: mib(peak_commit), libc_in_use_mib: mib(libc) }
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
        // SAFETY: mi_collect only frees the allocator's own empty pages (force: at once, every thread's).
        unsafe {
            libmimalloc_sys::mi_collect(true);
        }
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only returns free memory of the C allocator's arenas to the kernel.
        unsafe {
            libc::malloc_trim(0);
        }
        // A line when what the allocator holds moved by a MiB or more: how the footprint follows the cluster.
        let h = heap();
        if (h.committed_mib - self.logged).abs() >= 1.0 {
            self.logged = h.committed_mib;
            tracing::info!(
                committed_mib = h.committed_mib,
                peak_committed_mib = h.peak_committed_mib,
                libc_in_use_mib = h.libc_in_use_mib,
                "heap"
            );
        }
    }
}
