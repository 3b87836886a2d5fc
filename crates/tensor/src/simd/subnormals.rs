//! Subnormal floats flushed to zero while the kernels run, through the thread's
//! floating-point control register: x86's MXCSR (FTZ and DAZ), aarch64's FPCR (FZ).

/// Runs `f` with subnormal floats flushed to zero, as TensorFlow runs its CPU
/// kernels: a subnormal operand costs x86's FMA units ~100×, and softmax
/// gradients of confident predictions are full of them.
pub(crate) fn flush_subnormals<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    let _restore = {
        /// Restores the saved control register, also when `f` panics.
        struct Restore(ControlWord);
        impl Drop for Restore {
            fn drop(&mut self) {
                // SAFETY: the word this thread's register held before `f`.
                unsafe { set_control_word(self.0) }
            }
        }
        let saved = control_word();
        // SAFETY: only the flushing bits differ from the thread's current word.
        unsafe { set_control_word(saved | FLUSH_TO_ZERO) };
        Restore(saved)
    };
    f()
}

#[cfg(target_arch = "x86_64")]
type ControlWord = u32;
/// MXCSR's FTZ (flush results) and DAZ (treat operands as zero).
#[cfg(target_arch = "x86_64")]
const FLUSH_TO_ZERO: ControlWord = 0x8040;

#[cfg(target_arch = "x86_64")]
fn control_word() -> ControlWord {
    let mut word: ControlWord = 0;
    // SAFETY: stmxcsr writes the 4-byte control word into `word`, a live u32.
    unsafe { std::arch::asm!("stmxcsr [{}]", in(reg) &mut word, options(nostack)) };
    word
}

/// # Safety
/// `word` is this thread's control word, or it with bits of [`FLUSH_TO_ZERO`] set.
#[cfg(target_arch = "x86_64")]
unsafe fn set_control_word(word: ControlWord) {
    // SAFETY: ldmxcsr reads 4 bytes from `word`, live; the caller's contract.
    unsafe { std::arch::asm!("ldmxcsr [{}]", in(reg) &word, options(nostack, readonly)) };
}

#[cfg(target_arch = "aarch64")]
type ControlWord = u64;
/// FPCR's FZ (flush operands and results).
#[cfg(target_arch = "aarch64")]
const FLUSH_TO_ZERO: ControlWord = 1 << 24;

#[cfg(target_arch = "aarch64")]
fn control_word() -> ControlWord {
    let word: ControlWord;
    // SAFETY: mrs only reads the floating-point control register.
    unsafe { std::arch::asm!("mrs {}, fpcr", out(reg) word, options(nostack, nomem)) };
    word
}

/// # Safety
/// `word` is this thread's control word, or it with bits of [`FLUSH_TO_ZERO`] set.
#[cfg(target_arch = "aarch64")]
unsafe fn set_control_word(word: ControlWord) {
    // SAFETY: msr writes FPCR alone; the caller's contract.
    unsafe { std::arch::asm!("msr fpcr, {}", in(reg) word, options(nostack)) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hint::black_box;

    #[test]
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn subnormal_results_are_zero_inside_flush_subnormals_alone() {
        let half_the_smallest_normal = || black_box(f32::MIN_POSITIVE) * black_box(0.5);
        assert!(half_the_smallest_normal().is_subnormal());
        // The product passed through black_box inside, so that it is computed there.
        let flushed = flush_subnormals(|| black_box(half_the_smallest_normal()));
        assert_eq!(flushed, 0.0);
        assert!(
            half_the_smallest_normal().is_subnormal(),
            "the control register is restored"
        );
    }
}
