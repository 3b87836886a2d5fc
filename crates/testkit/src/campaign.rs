//! A bounded, reproducible fuzzing run on the stable toolchain: the regression
//! corpus first, then mutated seeds from a seeded generator. Every case must end
//! without a panic, within the time limit, without holding more than the
//! allocation limit, and with the target's own checks passed.

use crate::alloc;
use crate::mutate::{Mutator, StructuredMutation};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a target says of one input: whether the code under test took it or refused
/// it with an error, or (`Err`) how it broke a promise (an error that does not name
/// its file, say).
pub type Verdict = Result<Outcome, String>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Refused,
}

/// The settings of one run.
#[derive(Clone, Debug)]
pub struct Campaign {
    pub name: String,
    /// Generated cases, after the regression corpus.
    pub cases: usize,
    pub seed: u64,
    /// The most bytes one case may hold at once.
    pub allocation_limit: usize,
    /// A case running longer than this is a failure.
    pub time_limit: Duration,
    /// A case running longer than this is a hang: the input is saved and the process aborts.
    pub hang_limit: Duration,
    pub max_input_len: usize,
    /// Inputs that once broke the target; each is run first.
    pub regressions: Option<PathBuf>,
    /// Where failing inputs are written, to be added to the regression corpus.
    pub failures: PathBuf,
    /// A mutation that knows the targets' format, used for half the cases.
    pub structured: Option<StructuredMutation>,
}

impl Campaign {
    /// A run of `cases` cases (`KERNO_FUZZ_CASES` overrides it, `KERNO_FUZZ_SEED` the
    /// seed), with a 64 MiB allocation limit, a 1 s time limit and a 20 s hang limit.
    pub fn new(name: &str, cases: usize, failures: impl Into<PathBuf>) -> Self {
        Self {
            name: name.to_string(),
            cases: from_env("KERNO_FUZZ_CASES").unwrap_or(cases),
            seed: from_env("KERNO_FUZZ_SEED").unwrap_or(1),
            allocation_limit: 64 << 20,
            time_limit: Duration::from_secs(1),
            hang_limit: Duration::from_secs(20),
            max_input_len: 1 << 16,
            regressions: None,
            failures: failures.into(),
            structured: None,
        }
    }

    /// Makes half the generated cases with `mutation` (see [`Mutator::with_structured`]).
    pub fn structured(mut self, mutation: StructuredMutation) -> Self {
        self.structured = Some(mutation);
        self
    }

    pub fn regressions(mut self, dir: impl Into<PathBuf>) -> Self {
        self.regressions = Some(dir.into());
        self
    }

    /// Runs the corpus and the generated cases through `target`.
    pub fn run(&self, seeds: &[Vec<u8>], target: impl Fn(&[u8]) -> Verdict) -> Report {
        let start = Instant::now();
        let mut report = Report {
            name: self.name.clone(),
            ..Report::default()
        };
        let watchdog = Watchdog::start(self.hang_limit, self.failures.join(&self.name));
        for (label, input) in self.corpus() {
            report.regressions += 1;
            self.run_case(&watchdog, &label, &input, &target, &mut report);
        }
        let mut mutator = Mutator::new(ChaCha8Rng::seed_from_u64(self.seed), self.max_input_len);
        if let Some(mutation) = self.structured {
            mutator = mutator.with_structured(mutation);
        }
        for case in 0..self.cases {
            let input = mutator.next_input(seeds);
            report.cases += 1;
            self.run_case(
                &watchdog,
                &format!("case {case}"),
                &input,
                &target,
                &mut report,
            );
        }
        report.seconds = start.elapsed().as_secs_f64();
        watchdog.stop();
        report
    }

    fn corpus(&self) -> Vec<(String, Vec<u8>)> {
        let Some(dir) = &self.regressions else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.sort();
        files
            .into_iter()
            .filter(|p| p.is_file())
            .map(|p| {
                let bytes = std::fs::read(&p).expect("the regression corpus is readable");
                (p.display().to_string(), bytes)
            })
            .collect()
    }

    fn run_case(
        &self,
        watchdog: &Watchdog,
        label: &str,
        input: &[u8],
        target: &impl Fn(&[u8]) -> Verdict,
        report: &mut Report,
    ) {
        watchdog.begin(input);
        let case_start = Instant::now();
        let (outcome, peak) =
            alloc::peak_during(|| catch_unwind(AssertUnwindSafe(|| target(input))));
        let elapsed = case_start.elapsed();
        watchdog.end();
        report.slowest = report.slowest.max(elapsed);
        let Some(peak) = peak else {
            panic!("the fuzz test binary must install kerno_testkit::alloc::TrackingAllocator");
        };
        let problem = match outcome {
            Err(panic) => Some(format!("panicked: {}", panic_text(&*panic))),
            Ok(Err(broken)) => Some(broken),
            Ok(Ok(_)) if peak > self.allocation_limit => Some(format!(
                "held {peak} bytes at once for a {}-byte input",
                input.len()
            )),
            Ok(Ok(_)) if elapsed > self.time_limit => Some(format!(
                "took {:.2} s for a {}-byte input",
                elapsed.as_secs_f64(),
                input.len()
            )),
            Ok(Ok(Outcome::Accepted)) => {
                report.accepted += 1;
                None
            }
            Ok(Ok(Outcome::Refused)) => {
                report.refused += 1;
                None
            }
        };
        report.peak_bytes = report.peak_bytes.max(peak);
        if let Some(problem) = problem {
            let saved = save_failure(&self.failures.join(&self.name), input);
            report
                .failures
                .push(format!("{label}: {problem} (input saved to {saved})"));
        }
    }
}

/// What a run did and found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub name: String,
    pub regressions: usize,
    pub cases: usize,
    pub seconds: f64,
    pub slowest: Duration,
    /// Inputs taken as valid, and refused with a clear error.
    pub accepted: usize,
    pub refused: usize,
    /// The most bytes any case held at once.
    pub peak_bytes: usize,
    pub failures: Vec<String>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} regression inputs + {} generated cases in {:.2} s: {} accepted, {} refused \
             with an error, {} failures; slowest case {:.1} ms, most memory held {} KiB",
            self.name,
            self.regressions,
            self.cases,
            self.seconds,
            self.accepted,
            self.refused,
            self.failures.len(),
            self.slowest.as_secs_f64() * 1e3,
            self.peak_bytes.div_ceil(1024)
        )?;
        for failure in &self.failures {
            write!(f, "\n  {failure}")?;
        }
        Ok(())
    }
}

fn from_env<T: std::str::FromStr>(key: &str) -> Option<T> {
    std::env::var(key).ok().and_then(|v| v.parse().ok())
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(not a string)".to_string())
}

/// Writes a failing input under a name made of its hash; returns where.
fn save_failure(dir: &Path, input: &[u8]) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    input.hash(&mut hasher);
    let path = dir.join(format!("{:016x}.bin", hasher.finish()));
    match std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, input)) {
        Ok(()) => path.display().to_string(),
        Err(e) => format!("nowhere: {e}"),
    }
}

/// The case under way: when it began, and its input.
type CurrentCase = Arc<Mutex<Option<(Instant, Vec<u8>)>>>;

/// Aborts the process when one case runs past the hang limit, after saving its input.
struct Watchdog {
    current: CurrentCase,
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    fn start(limit: Duration, failures: PathBuf) -> Self {
        let current = CurrentCase::default();
        let done = Arc::new(AtomicBool::new(false));
        let thread = {
            let (current, done) = (current.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    let guard = current.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some((began, input)) = guard.as_ref() {
                        if began.elapsed() > limit {
                            let saved = save_failure(&failures, input);
                            eprintln!("fuzz case hung for over {limit:?}; input saved to {saved}");
                            std::process::abort();
                        }
                    }
                }
            })
        };
        Self {
            current,
            done,
            thread: Some(thread),
        }
    }

    fn begin(&self, input: &[u8]) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), input.to_vec()));
    }

    fn end(&self) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn stop(mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
