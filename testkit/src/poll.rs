//! Waiting for a condition: poll until it holds or a timeout passes, then fail with what was last seen.

use std::future::Future;
use std::time::{Duration, Instant};

/// A wait for `what`, polled every `every` (100 ms unless set) for at most `timeout`.
#[must_use]
pub struct Wait<'a> {
    what: &'a str,
    timeout: Duration,
    every: Duration,
}

/// Starts describing a wait for `what` of at most `timeout`.
pub fn wait(what: &str, timeout: Duration) -> Wait<'_> {
    Wait { what, timeout, every: Duration::from_millis(100) }
}

impl Wait<'_> {
    /// Polls this often.
    pub fn every(self, every: Duration) -> Self {
        Wait { every, ..self }
    }

    /// Polls `check` until it returns `Ok`; past the timeout, panics with the last `Err`.
    pub fn until_ok<T>(self, mut check: impl FnMut() -> Result<T, String>) -> T {
        let start = Instant::now();
        loop {
            match check() {
                Ok(v) => return v,
                Err(e) if start.elapsed() > self.timeout => {
                    panic!("timed out after {:?} waiting for {}: {e}", self.timeout, self.what)
                }
                Err(_) => std::thread::sleep(self.every),
            }
        }
    }

    /// Polls `check` until it holds; past the timeout, panics with `diagnose()` (called only then).
    pub fn until(self, mut check: impl FnMut() -> bool, diagnose: impl FnOnce() -> String) {
        let start = Instant::now();
        while !check() {
            if start.elapsed() > self.timeout {
                panic!("timed out after {:?} waiting for {}\n{}", self.timeout, self.what, diagnose());
            }
            std::thread::sleep(self.every);
        }
    }

    /// [`Self::until_ok`] for async checks (sleeping on the runtime's timer).
    pub async fn until_ok_async<T, F: Future<Output = Result<T, String>>>(self, mut check: impl FnMut() -> F) -> T {
        let start = Instant::now();
        loop {
            match check().await {
                Ok(v) => return v,
                Err(e) if start.elapsed() > self.timeout => {
                    panic!("timed out after {:?} waiting for {}: {e}", self.timeout, self.what)
                }
                Err(_) => tokio::time::sleep(self.every).await,
            }
        }
    }

    /// [`Self::until`] for async checks (sleeping on the runtime's timer).
    pub async fn until_async(self, mut check: impl AsyncFnMut() -> bool, diagnose: impl FnOnce() -> String) {
        let start = Instant::now();
        while !check().await {
            if start.elapsed() > self.timeout {
                panic!("timed out after {:?} waiting for {}\n{}", self.timeout, self.what, diagnose());
            }
            tokio::time::sleep(self.every).await;
        }
    }

    /// Checks that `check` keeps holding for the whole timeout.
    pub fn holds(self, mut check: impl FnMut() -> bool) {
        let start = Instant::now();
        while start.elapsed() < self.timeout {
            assert!(check(), "{} stopped holding after {:?}", self.what, start.elapsed());
            std::thread::sleep(self.every);
        }
    }
}

/// A check's result: `Ok` when `ok`, else `Err` with `seen` (what the check saw, for the failure message).
pub fn check(ok: bool, seen: impl FnOnce() -> String) -> Result<(), String> {
    if ok { Ok(()) } else { Err(seen()) }
}
