//! Keeping the pool's threads awake through a run of parallel kernels.

use rayon::Yield;
use std::sync::atomic::{AtomicBool, Ordering};

/// Runs `body` on this thread while the other threads of the current pool spin,
/// ready to take their part of each parallel kernel `body` starts, instead of
/// falling asleep between kernels. Waking a sleeping thread costs tens of
/// microseconds per kernel here (the system call, then the wait to be scheduled),
/// as much as a small kernel. OpenMP runtimes keep their threads spinning likewise.
pub fn with_workers_awake<R>(body: impl FnOnce() -> R) -> R {
    let helpers = rayon::current_num_threads().saturating_sub(1);
    if helpers == 0 {
        return body();
    }
    let done = AtomicBool::new(false);
    let caller = rayon::current_thread_index();
    rayon::in_place_scope(|scope| {
        for _ in 0..helpers {
            scope.spawn(|_| {
                // The caller may pick this job up itself while it waits for another
                // thread's part of a kernel: it must not spin then.
                if rayon::current_thread_index() == caller {
                    return;
                }
                while !done.load(Ordering::Acquire) {
                    if rayon::yield_now() != Some(Yield::Executed) {
                        std::hint::spin_loop();
                    }
                }
            });
        }
        let _stop = StopOnDrop(&done);
        body()
    })
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
    use rayon::prelude::*;

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
    }

    #[test]
    fn runs_parallel_work_inside_and_returns_its_value() {
        for threads in [1, 2, 3] {
            let sum = pool(threads).install(|| {
                with_workers_awake(|| {
                    (0..20)
                        .map(|_| (0..10_000u64).into_par_iter().sum::<u64>())
                        .sum::<u64>()
                })
            });
            assert_eq!(sum, 20 * 49_995_000, "{threads} threads");
        }
    }

    #[test]
    fn works_from_a_thread_outside_the_pool() {
        // Not installed: the global pool's threads spin, this thread drives.
        let sum = with_workers_awake(|| (0..1000u32).into_par_iter().sum::<u32>());
        assert_eq!(sum, 499_500);
    }

    #[test]
    fn a_panic_in_the_body_stops_the_spinning_threads() {
        let result = pool(2)
            .install(|| std::panic::catch_unwind(|| with_workers_awake(|| panic!("body failed"))));
        assert!(result.is_err());
    }
}
