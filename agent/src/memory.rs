//! How the agent gives heap memory back to the system: glibc's arenas
//! limited at start ([`limit_arenas`]), freed pages returned
//! ([`release_freed_memory`]) after start-up's passes over the cache and
//! after each large unit of work ([`TrimAfterLarge`]).
//!
//! Why: with 10,000 cached reservations, start-up and the `from=0` resync
//! (ten pages of 1,000 reservations) allocate tens of MiB that are freed
//! again at once; glibc keeps freed memory in the arena of the thread that
//! freed it (one arena per thread, up to 8 × cores of them), so the idle
//! agent stayed near its start-up peak (BENCHMARKS.md, figure 5b).

use async_trait::async_trait;
use sources::{ReservationSource, Work};

/// Heap arenas the daemon allows when the environment does not say
/// (`MALLOC_ARENA_MAX`): the engine, its jobs and the delivery task run on
/// tokio's workers (one per core), and sled's threads write little. One:
/// a second arena kept ~2 MiB more of freed start-up memory with 10,000
/// cached (36.8 against 38.9 MiB), and figure 1 with one arena was no
/// slower (bench/notes.md, section 5c).
pub const DAEMON_ARENAS: i32 = 1;

/// A unit of work of at least this many reservations (or due ids) is
/// large: the memory of its answer is returned once it is taken.
pub const LARGE_UNIT: usize = 100;

/// Return freed heap pages to the system. Start-up decodes every cached
/// record (10,000 on a busy node) and glibc keeps that memory otherwise,
/// which would leave the idle agent at its start-up peak.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of glibc's allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Allow at most `n` glibc heap arenas, unless `MALLOC_ARENA_MAX` is set
/// (the operator's choice wins). Call it first thing in `main`, before any
/// thread starts: threads made before keep the arenas they got. Returns
/// whether the limit was set.
pub fn limit_arenas(n: i32) -> bool {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return false;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes a tunable of glibc's allocator; it
    // returns 0 on a value it refuses, changing nothing.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, n) == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = n;
        false
    }
}

/// Whether `work` is large enough that its memory is worth returning once
/// it has been taken.
pub fn is_large(work: &Work) -> bool {
    match work {
        Work::Poll { reservations, .. } => reservations.len() >= LARGE_UNIT,
        Work::Due(ids) => ids.len() >= LARGE_UNIT,
    }
}

/// A source that returns freed memory to the system after each large unit
/// of work (see [`is_large`]), when the engine asks for the next unit: by
/// then it has taken the last one (judged it, started its jobs, committed)
/// and dropped the answer.
pub struct TrimAfterLarge<S> {
    inner: S,
    /// The last unit handed over was large and has not been trimmed after.
    pending: bool,
    trims: u64,
}

impl<S: ReservationSource> TrimAfterLarge<S> {
    pub fn new(inner: S) -> Self {
        TrimAfterLarge {
            inner,
            pending: false,
            trims: 0,
        }
    }

    /// How many times it returned memory so far.
    pub fn trims(&self) -> u64 {
        self.trims
    }
}

#[async_trait]
impl<S: ReservationSource> ReservationSource for TrimAfterLarge<S> {
    async fn next(&mut self) -> Option<Work> {
        if std::mem::take(&mut self.pending) {
            let started = std::time::Instant::now();
            release_freed_memory();
            self.trims += 1;
            tracing::debug!(
                took_us = started.elapsed().as_micros() as u64,
                "returned freed memory after a large unit of work"
            );
        }
        let work = self.inner.next().await?;
        self.pending = is_large(&work);
        Some(work)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands over the given units, then ends.
    struct Units(std::vec::IntoIter<Work>);

    #[async_trait]
    impl ReservationSource for Units {
        async fn next(&mut self) -> Option<Work> {
            self.0.next()
        }
    }

    fn due(n: usize) -> Work {
        Work::Due((0..n).map(|i| format!("{i}-1")).collect())
    }

    #[tokio::test]
    async fn hands_every_unit_over_and_trims_after_large_ones_only() {
        let units = vec![due(1), due(LARGE_UNIT), due(2), due(LARGE_UNIT + 5)];
        let mut s = TrimAfterLarge::new(Units(units.into_iter()));
        let mut sizes = Vec::new();
        let mut trims = Vec::new();
        while let Some(w) = s.next().await {
            trims.push(s.trims());
            match w {
                Work::Due(ids) => sizes.push(ids.len()),
                Work::Poll { .. } => panic!("only due units were given"),
            }
        }
        assert_eq!(sizes, [1, LARGE_UNIT, 2, LARGE_UNIT + 5]);
        // Trimmed when the unit after a large one is asked for (and at the
        // end, after the last large one).
        assert_eq!(trims, [0, 0, 1, 1]);
        assert_eq!(s.trims(), 2);
    }
}
