//! Keeping the pool's threads awake through a run of parallel kernels, and
//! parallel loops whose threads never sleep while they wait for each other.

use crate::simd::BlockMut;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

/// Runs `body` on this thread while the other threads of the current pool spin,
/// ready to take their part of each parallel kernel `body` starts, instead of
/// falling asleep between kernels. Waking a sleeping thread costs tens of
/// microseconds per kernel here (the system call, then the wait to be scheduled),
/// as much as a small kernel. OpenMP runtimes keep their threads spinning likewise.
///
/// A thread that comes to its spinning job while it waits inside part of one of
/// kerno's kernels leaves it at once (and sleeps between kernels, as without this
/// function). Inside rayon's own parallel iterators it cannot tell, and would spin
/// there until `body` ends: parallel work in `body` should be kerno's kernels.
pub fn with_workers_awake<R>(body: impl FnOnce() -> R) -> R {
    let helpers = rayon::current_num_threads().saturating_sub(1);
    if helpers == 0 {
        return body();
    }
    let done = AtomicBool::new(false);
    rayon::in_place_scope(|scope| {
        // One job on each thread of the pool, its own: a job spawned once for any
        // thread could be taken by the caller itself, while it waits for another
        // thread's part of a kernel, leaving the others to fall asleep.
        scope.spawn_broadcast(|_, _| {
            // A thread that drives a body (this one's caller, or another's when two
            // models train at once) or already spins must not spin here: two
            // callers spinning for each other's bodies would wait forever. Nor one
            // that took this job while waiting inside part of a parallel loop (it
            // stole that part before this job reached it): spinning on top of the
            // part until the body ends, it would hold up the body waiting for the
            // part, and `kerno train` hung so. It then sleeps between kernels.
            if OCCUPIED.get() {
                return;
            }
            let _occupied = Occupied::enter();
            // No `spin_loop` (PAUSE) in these loops: under KVM a PAUSE loop makes
            // the host deschedule the virtual CPU (pause-loop exiting), and its part
            // of the next kernel then ran much slower.
            while !done.load(Ordering::Acquire) {
                rayon::yield_now();
            }
        });
        let _stop = StopOnDrop(&done);
        let _occupied = Occupied::enter();
        body()
    })
}

thread_local! {
    /// Whether this thread runs the body of a `with_workers_awake`, spins for one,
    /// or runs part of a parallel loop.
    static OCCUPIED: Cell<bool> = const { Cell::new(false) };
}

/// Marks this thread occupied until dropped, then restores what it was.
struct Occupied(bool);

impl Occupied {
    fn enter() -> Self {
        Occupied(OCCUPIED.replace(true))
    }
}

impl Drop for Occupied {
    fn drop(&mut self) {
        OCCUPIED.set(self.0);
    }
}

/// Data a parallel loop splits into chunks: a slice, or slices of one length
/// split together.
pub(crate) trait Chunks: Send + Sized {
    fn len(&self) -> usize;
    fn split_at(self, mid: usize) -> (Self, Self);
}

impl<T: Send> Chunks for &mut [T] {
    fn len(&self) -> usize {
        <[T]>::len(self)
    }
    fn split_at(self, mid: usize) -> (Self, Self) {
        self.split_at_mut(mid)
    }
}

impl<T: Sync> Chunks for &[T] {
    fn len(&self) -> usize {
        <[T]>::len(self)
    }
    fn split_at(self, mid: usize) -> (Self, Self) {
        <[T]>::split_at(self, mid)
    }
}

impl<A: Chunks, B: Chunks> Chunks for (A, B) {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn split_at(self, mid: usize) -> (Self, Self) {
        let ((a0, a1), (b0, b1)) = (self.0.split_at(mid), self.1.split_at(mid));
        ((a0, b0), (a1, b1))
    }
}

/// Data that may be absent: split where it is there.
impl<C: Chunks> Chunks for Option<C> {
    fn len(&self) -> usize {
        self.as_ref().map_or(0, C::len)
    }
    fn split_at(self, mid: usize) -> (Self, Self) {
        match self {
            Some(data) => {
                let (left, right) = data.split_at(mid);
                (Some(left), Some(right))
            }
            None => (None, None),
        }
    }
}

/// Data split in units of `.1` elements (the last unit may be shorter): a
/// chunk of `len` is `len` units, so that data of other unit sizes split with it.
pub(crate) struct Units<C>(pub C, pub usize);

impl<C: Chunks> Chunks for Units<C> {
    fn len(&self) -> usize {
        self.0.len().div_ceil(self.1.max(1))
    }
    fn split_at(self, mid: usize) -> (Self, Self) {
        let at = (mid * self.1).min(self.0.len());
        let (left, right) = self.0.split_at(at);
        (Units(left, self.1), Units(right, self.1))
    }
}

/// A block of a matrix split into blocks of whole rows.
pub(crate) struct ByRows<'a>(pub BlockMut<'a>);

/// A block of a matrix split into blocks of whole columns.
pub(crate) struct ByCols<'a>(pub BlockMut<'a>);

impl Chunks for ByRows<'_> {
    fn len(&self) -> usize {
        self.0.rows()
    }
    fn split_at(self, mid: usize) -> (Self, Self) {
        let (top, bottom) = self.0.split_at_row(mid);
        (ByRows(top), ByRows(bottom))
    }
}

impl Chunks for ByCols<'_> {
    fn len(&self) -> usize {
        self.0.cols()
    }
    fn split_at(self, mid: usize) -> (Self, Self) {
        let (left, right) = self.0.split_at_col(mid);
        (ByCols(left), ByCols(right))
    }
}

/// Runs `work(i, chunk)` on each chunk of `len` elements of `data` (the last one
/// shorter), over the pool's threads. Like `par_chunks_mut(len).enumerate()`, but
/// a thread that finishes its half first spins, running any pending work, until
/// the other half is done, rather than falling asleep and being woken tens of
/// microseconds after the end.
pub(crate) fn for_each_chunk<C: Chunks>(data: C, len: usize, work: &(impl Fn(usize, C) + Sync)) {
    let len = len.max(1);
    let chunks = data.len().div_ceil(len);
    split_halves(data, 0, chunks, len, work)
}

/// [`for_each_chunk`] on the calling thread, the chunks in order.
pub(crate) fn for_each_chunk_in_order<C: Chunks>(
    mut data: C,
    len: usize,
    mut work: impl FnMut(usize, C),
) {
    let len = len.max(1);
    let mut index = 0;
    while data.len() > 0 {
        let at = len.min(data.len());
        let (chunk, rest) = data.split_at(at);
        work(index, chunk);
        (data, index) = (rest, index + 1);
    }
}

fn split_halves<C: Chunks>(
    data: C,
    first: usize,
    chunks: usize,
    len: usize,
    work: &(impl Fn(usize, C) + Sync),
) {
    let _occupied = Occupied::enter();
    if chunks <= 1 {
        if data.len() > 0 {
            work(first, data);
        }
        return;
    }
    let half = chunks / 2;
    let mid = (half * len).min(data.len());
    let (left, right) = data.split_at(mid);
    join_awake(
        || split_halves(left, first, half, len, work),
        || split_halves(right, first + half, chunks - half, len, work),
    );
}

/// `rayon::join(a, b)`, except that the calling thread, once `a` is done, spins
/// (running any pending work, `b` too if no other thread took it) until `b` is
/// done, rather than falling asleep and being woken tens of microseconds after
/// `b` ends.
pub fn join_awake<RA: Send, RB: Send>(
    a: impl FnOnce() -> RA + Send,
    b: impl FnOnce() -> RB + Send,
) -> (RA, RB) {
    let b_done = AtomicBool::new(false);
    rayon::join(
        || {
            let _occupied = Occupied::enter();
            let a = a();
            while !b_done.load(Ordering::Acquire) {
                rayon::yield_now();
            }
            a
        },
        || {
            let _occupied = Occupied::enter();
            // Set also when `b` panics, so that the other side stops waiting.
            let _done = StopOnDrop(&b_done);
            b()
        },
    )
}

/// Stops the spinning threads when `body` ends, also by a panic, so the scope can end.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
    }

    /// Both halves run and return, on one thread or two, and a panic in either
    /// reaches the caller instead of leaving the other half waiting.
    #[test]
    fn join_awake_returns_both_halves_and_their_panics() {
        for threads in [1, 2] {
            let pool = pool(threads);
            let (a, b) = pool.install(|| join_awake(|| parallel_sum(1000), || parallel_sum(10)));
            assert_eq!((a, b), (499_500, 45));
            for a_panics in [false, true] {
                let joined = pool.install(|| {
                    std::panic::catch_unwind(|| {
                        join_awake(
                            || assert!(!a_panics, "a failed"),
                            || assert!(a_panics, "b failed"),
                        )
                    })
                });
                assert!(joined.is_err(), "{threads} threads, a panics: {a_panics}");
            }
        }
    }

    /// `0 + 1 + … + (n - 1)`, summed over the pool in chunks.
    fn parallel_sum(n: u64) -> u64 {
        let values: Vec<u64> = (0..n).collect();
        let total = AtomicU64::new(0);
        for_each_chunk(&values[..], 100, &|_, chunk| {
            total.fetch_add(chunk.iter().sum(), Ordering::Relaxed);
        });
        total.into_inner()
    }

    #[test]
    fn runs_parallel_work_inside_and_returns_its_value() {
        for threads in [1, 2, 3] {
            let sum = pool(threads).install(|| {
                with_workers_awake(|| (0..20).map(|_| parallel_sum(10_000)).sum::<u64>())
            });
            assert_eq!(sum, 20 * 49_995_000, "{threads} threads");
        }
    }

    #[test]
    fn works_from_a_thread_outside_the_pool() {
        // Not installed: the global pool's threads spin, this thread drives.
        let sum = with_workers_awake(|| parallel_sum(1000));
        assert_eq!(sum, 499_500);
    }

    #[test]
    fn for_each_chunk_visits_every_chunk_once_with_its_index() {
        for threads in [1, 2, 3] {
            for (n, len) in [
                (0, 4),
                (1, 4),
                (1000, 64),
                (1000, 1000),
                (1000, 3000),
                (7, 1),
            ] {
                let source: Vec<u32> = (0..n as u32).collect();
                let mut out = vec![0u32; n];
                let mut index = vec![usize::MAX; n];
                pool(threads).install(|| {
                    for_each_chunk(
                        (&mut out[..], (&mut index[..], &source[..])),
                        len,
                        &|i, (out, (index, source))| {
                            assert!(out.len() <= len && !out.is_empty());
                            out.copy_from_slice(source);
                            index.fill(i);
                        },
                    )
                });
                assert_eq!(out, source, "{threads} threads, {n}/{len}");
                assert!(index.iter().enumerate().all(|(k, &i)| i == k / len));
            }
        }
    }

    #[test]
    fn for_each_chunk_in_order_visits_the_chunks_in_order() {
        for (n, len) in [(0, 4), (1, 4), (1000, 64), (1000, 3000), (7, 1)] {
            let mut data: Vec<usize> = vec![0; n];
            let mut seen = Vec::new();
            for_each_chunk_in_order(&mut data[..], len, |i, chunk| {
                assert!(chunk.len() <= len && !chunk.is_empty());
                chunk.fill(i);
                seen.push(i);
            });
            assert_eq!(seen, (0..n.div_ceil(len)).collect::<Vec<_>>(), "{n}/{len}");
            assert!(data.iter().enumerate().all(|(k, &i)| i == k / len));
        }
    }

    #[test]
    fn a_panic_in_the_body_stops_the_spinning_threads() {
        let result = pool(2)
            .install(|| std::panic::catch_unwind(|| with_workers_awake(|| panic!("body failed"))));
        assert!(result.is_err());
    }
}
