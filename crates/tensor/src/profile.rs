//! Per-kernel timing, for `kerno profile`: while profiling is on, every span
//! records when it began and ended on the thread that ran it. While it is off
//! (always, outside `kerno profile`), opening a span costs one relaxed atomic load
//! and a branch, and nothing is recorded.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Instant;

static ENABLED: AtomicBool = AtomicBool::new(false);
/// Every thread's log, in the order the threads first recorded a span.
static LOGS: Mutex<Vec<Arc<Mutex<ThreadLog>>>> = Mutex::new(Vec::new());
/// Events reserved per thread, so that recording does not reallocate mid-step.
const RESERVED_EVENTS: usize = 1 << 16;

thread_local! {
    static LOG: RefCell<Option<Arc<Mutex<ThreadLog>>>> = const { RefCell::new(None) };
    static DEPTH: Cell<u16> = const { Cell::new(0) };
}

/// What a span covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Level {
    /// One whole training step.
    Step,
    /// One kernel of a step (a GEMM, the loss, an optimizer update...).
    Kernel,
    /// One thread's share of a parallel kernel.
    Task,
}

/// A span's name and the work it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Work {
    pub name: &'static str,
    pub level: Level,
    /// 1-based layer, where the kernel belongs to one.
    pub layer: Option<u16>,
    /// Floating-point operations (a multiply-add is two).
    pub flops: u64,
    /// Bytes read and written, counting each operand once.
    pub bytes: u64,
}

impl Work {
    pub fn new(name: &'static str, level: Level) -> Self {
        Self {
            name,
            level,
            layer: None,
            flops: 0,
            bytes: 0,
        }
    }

    pub fn kernel(name: &'static str) -> Self {
        Self::new(name, Level::Kernel)
    }

    pub fn layer(mut self, index: usize) -> Self {
        self.layer = Some((index + 1) as u16);
        self
    }

    pub fn flops(mut self, flops: u64) -> Self {
        self.flops = flops;
        self
    }

    pub fn bytes(mut self, bytes: u64) -> Self {
        self.bytes = bytes;
        self
    }
}

/// One finished span.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Event {
    pub work: Work,
    /// Index into [`Recording::threads`].
    pub thread: usize,
    /// Spans open on the same thread around this one.
    pub depth: u16,
    /// Nanoseconds since profiling was first enabled.
    pub start_ns: u64,
    pub end_ns: u64,
}

impl Event {
    pub fn nanos(&self) -> u64 {
        self.end_ns - self.start_ns
    }
}

/// What was recorded: the events, and the name of each thread that recorded any.
#[derive(Clone, Debug, Default)]
pub struct Recording {
    pub events: Vec<Event>,
    pub threads: Vec<String>,
}

struct ThreadLog {
    index: usize,
    name: String,
    events: Vec<Event>,
}

fn clock_origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    clock_origin().elapsed().as_nanos() as u64
}

/// Starts recording spans, on every thread.
pub fn enable() {
    clock_origin();
    ENABLED.store(true, Ordering::Relaxed);
}

/// Stops recording; what was recorded stays until [`take`].
pub fn disable() {
    ENABLED.store(false, Ordering::Relaxed);
}

/// Everything recorded so far, sorted by start time; the logs are emptied.
pub fn take() -> Recording {
    let logs = LOGS.lock().unwrap_or_else(PoisonError::into_inner);
    let mut recording = Recording::default();
    for log in logs.iter() {
        let mut log = log.lock().unwrap_or_else(PoisonError::into_inner);
        recording.events.append(&mut log.events);
        recording.threads.push(log.name.clone());
    }
    recording.events.sort_by_key(|e| (e.start_ns, e.depth));
    recording
}

/// This thread's log, made on its first span.
fn with_log(f: impl FnOnce(&mut ThreadLog)) {
    LOG.with(|cell| {
        let mut slot = cell.borrow_mut();
        let log = slot.get_or_insert_with(|| {
            let mut logs = LOGS.lock().unwrap_or_else(PoisonError::into_inner);
            let index = logs.len();
            let name = std::thread::current()
                .name()
                .map_or_else(|| format!("thread {index}"), str::to_string);
            let log = Arc::new(Mutex::new(ThreadLog {
                index,
                name,
                events: Vec::with_capacity(RESERVED_EVENTS),
            }));
            logs.push(log.clone());
            log
        });
        f(&mut log.lock().unwrap_or_else(PoisonError::into_inner));
    });
}

/// An open span; it records itself when dropped.
#[must_use = "a span measures until it is dropped"]
pub struct Span {
    open: Option<(Work, u64)>,
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some((work, start_ns)) = self.open.take() {
            let end_ns = now_ns();
            let depth = DEPTH.with(|d| {
                let depth = d.get() - 1;
                d.set(depth);
                depth
            });
            with_log(|log| {
                let thread = log.index;
                log.events.push(Event {
                    work,
                    thread,
                    depth,
                    start_ns,
                    end_ns,
                });
            });
        }
    }
}

/// Opens a span for the work `describe` returns (called only while profiling is on).
#[inline]
pub fn span(describe: impl FnOnce() -> Work) -> Span {
    if !ENABLED.load(Ordering::Relaxed) {
        return Span { open: None };
    }
    DEPTH.with(|d| d.set(d.get() + 1));
    Span {
        open: Some((describe(), now_ns())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The only test touching the global switch, so no other test sees it on.
    #[test]
    fn spans_record_only_while_enabled_and_nest() {
        drop(span(|| Work::kernel("before")));
        enable();
        {
            let _outer = span(|| Work::new("outer", Level::Step));
            drop(span(|| Work::kernel("inner").layer(0).flops(10)));
        }
        disable();
        drop(span(|| Work::kernel("after")));
        let recording = take();
        // Other tests may run kernels meanwhile, on other threads.
        let me = std::thread::current().name().map(str::to_string);
        let mine: Vec<Event> = recording
            .events
            .iter()
            .filter(|e| Some(&recording.threads[e.thread]) == me.as_ref())
            .copied()
            .collect();
        let names: Vec<_> = mine.iter().map(|e| e.work.name).collect();
        assert_eq!(names, ["outer", "inner"]);
        let (outer, inner) = (mine[0], mine[1]);
        assert_eq!((outer.depth, inner.depth), (0, 1));
        assert!(outer.start_ns <= inner.start_ns && inner.end_ns <= outer.end_ns);
        assert_eq!(inner.work.layer, Some(1));
    }
}
