//! Keras' dtype policies: how layers compute, apart from how variables are kept.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A dtype policy, as `keras.mixed_precision.Policy`: `float32` (the default)
/// or `mixed_bfloat16`.
///
/// Under `mixed_bfloat16` every layer computes in bf16: its input, its kernel
/// and bias, its output, and the gradient with respect to its output are bf16
/// values (rounded to nearest, ties to even), their products summed in f32.
/// The variables (weights), their gradients, the optimizer's state and the
/// softmax with the loss stay f32, so a model trained either way is saved, and
/// loads, the same way.
///
/// ```
/// use kerno_model::Policy;
/// let policy: Policy = "mixed_bfloat16".parse().unwrap();
/// assert_eq!(policy, Policy::MixedBfloat16);
/// assert_eq!(policy.compute_dtype(), "bfloat16");
/// assert_eq!(policy.variable_dtype(), "float32");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    #[default]
    Float32,
    MixedBfloat16,
}

impl Policy {
    /// Keras' name: `float32`, `mixed_bfloat16`.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Float32 => "float32",
            Policy::MixedBfloat16 => "mixed_bfloat16",
        }
    }

    /// The type layers compute in.
    pub fn compute_dtype(self) -> &'static str {
        match self {
            Policy::Float32 => "float32",
            Policy::MixedBfloat16 => "bfloat16",
        }
    }

    /// The type variables are kept in: `float32` under every policy.
    pub fn variable_dtype(self) -> &'static str {
        "float32"
    }

    /// Whether layers round their operands and results to bf16.
    pub(crate) fn is_bf16(self) -> bool {
        self == Policy::MixedBfloat16
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Policy {
    type Err = String;

    /// Keras' names, and the command line's `f32` and `mixed-bf16`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "float32" | "f32" => Ok(Policy::Float32),
            "mixed_bfloat16" | "mixed-bf16" => Ok(Policy::MixedBfloat16),
            _ => Err(format!(
                "unknown dtype policy '{s}' (expected float32 or mixed_bfloat16)"
            )),
        }
    }
}
