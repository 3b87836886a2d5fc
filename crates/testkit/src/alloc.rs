//! A global allocator that counts the allocations of chosen threads and measures,
//! per thread, the most bytes a piece of code held at once. Install it in a test
//! binary with `#[global_allocator] static A: TrackingAllocator = TrackingAllocator;`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct TrackingAllocator;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    // Constant-initialised and without destructors, so reading them never allocates.
    static COUNTED: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

/// Adds an allocation to [`allocations`] when this thread is counted.
fn count() {
    if COUNTED.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

fn record(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call is passed on unchanged to the system allocator; the
// bookkeeping around it neither allocates nor touches the memory.
unsafe impl GlobalAlloc for TrackingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        record(layout.size() as isize);
        // SAFETY: the caller's contract for `alloc` is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        record(-(layout.size() as isize));
        // SAFETY: `ptr` came from `System` with this layout, through `alloc`/`realloc`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        record(new_size as isize - layout.size() as isize);
        // SAFETY: as for `dealloc`, and `new_size` is the caller's valid request.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Counts this thread's allocations in [`allocations`] from now on: the threads
/// of the pool under test (`ThreadPoolBuilder::start_handler`), and not the test
/// harness's own, which allocate when they please (libtest's notice of a test
/// running over 60 s, under an emulator).
pub fn count_this_thread() {
    COUNTED.with(|counted| counted.set(true));
}

/// Allocations (and reallocations) so far on the threads that called
/// [`count_this_thread`].
pub fn allocations() -> usize {
    ALLOCATIONS.load(Ordering::Relaxed)
}

/// Runs `f` and returns its result with the most bytes this thread held at once
/// during it, beyond what it held before. `None` when [`TrackingAllocator`] is not
/// the global allocator, so that a check cannot pass by measuring nothing.
pub fn peak_during<R>(f: impl FnOnce() -> R) -> (R, Option<usize>) {
    let before = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(before));
    let probe = std::hint::black_box(vec![0u8; 64]);
    let tracking = LIVE.with(Cell::get) >= before + 64;
    drop(probe);
    PEAK.with(|p| p.set(before));
    let result = f();
    let peak = PEAK.with(Cell::get) - before;
    (result, tracking.then_some(peak.max(0) as usize))
}
