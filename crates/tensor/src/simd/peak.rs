//! The machine's f32 FMA peak, measured with a loop that never leaves the registers.

use super::{on_instruction_set, Isa};
use std::hint::black_box;
use std::time::Instant;

/// Independent accumulator chains: enough to cover FMA latency × issue width.
const CHAINS: usize = 12;

/// Runs `iterations` × `CHAINS` FMAs on vectors of `lanes` floats; returns FLOPs done.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn avx512_loop(iterations: u64) -> f64 {
    use std::arch::x86_64::*;
    let (a, b) = (
        _mm512_set1_ps(black_box(0.999_999)),
        _mm512_set1_ps(black_box(1e-7)),
    );
    let mut acc = [_mm512_set1_ps(1.0); CHAINS];
    for _ in 0..iterations {
        for v in acc.iter_mut() {
            *v = _mm512_fmadd_ps(*v, a, b);
        }
    }
    black_box(acc);
    (iterations * CHAINS as u64 * 16 * 2) as f64
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn avx2_loop(iterations: u64) -> f64 {
    use std::arch::x86_64::*;
    let (a, b) = (
        _mm256_set1_ps(black_box(0.999_999)),
        _mm256_set1_ps(black_box(1e-7)),
    );
    let mut acc = [_mm256_set1_ps(1.0); CHAINS];
    for _ in 0..iterations {
        for v in acc.iter_mut() {
            *v = _mm256_fmadd_ps(*v, a, b);
        }
    }
    black_box(acc);
    (iterations * CHAINS as u64 * 8 * 2) as f64
}

fn portable_loop(iterations: u64) -> f64 {
    let (a, b) = (black_box(0.999_999f32), black_box(1e-7f32));
    let mut acc = [[1.0f32; 4]; CHAINS];
    for _ in 0..iterations {
        for chain in acc.iter_mut() {
            for v in chain.iter_mut() {
                *v = *v * a + b;
            }
        }
    }
    black_box(acc);
    (iterations * CHAINS as u64 * 4 * 2) as f64
}

/// GFLOP/s of one thread running `isa`'s widest FMA for about `seconds`.
///
/// # Panics
/// When this CPU does not support `isa`.
pub fn fma_peak_gflops(isa: Isa, seconds: f64) -> f64 {
    let run = |iterations: u64| -> f64 {
        on_instruction_set!(isa;
            avx512 => avx512_loop(iterations);
            avx2 => avx2_loop(iterations);
            _ => portable_loop(iterations)
        )
    };
    // Calibrate the iteration count, then keep the best of a few timed runs.
    let mut iterations = 1 << 16;
    loop {
        let start = Instant::now();
        run(iterations);
        if start.elapsed().as_secs_f64() > seconds / 10.0 || iterations > 1 << 40 {
            break;
        }
        iterations *= 2;
    }
    (0..5)
        .map(|_| {
            let start = Instant::now();
            let flops = run(iterations);
            flops / start.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}
