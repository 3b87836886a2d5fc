//! The confusion matrix of a model on a test split: counts, per-class accuracy and
//! the pairs of classes most often taken for each other.

use serde_json::{json, Value};
use std::fmt::Write;
use std::path::Path;

/// How many of the most confused pairs the report lists.
const PAIRS_REPORTED: usize = 5;

#[derive(Clone, Debug)]
pub struct Confusion {
    /// `counts[true][predicted]`.
    pub counts: Vec<Vec<usize>>,
    pub names: Vec<String>,
}

impl Confusion {
    /// # Panics
    /// When a label or prediction is not below the number of names.
    pub fn new(labels: &[u8], predicted: &[usize], names: [&str; 10]) -> Self {
        let classes = names.len();
        let mut counts = vec![vec![0; classes]; classes];
        for (&label, &guess) in labels.iter().zip(predicted) {
            counts[usize::from(label)][guess] += 1;
        }
        Self {
            counts,
            names: names.iter().map(|n| n.to_string()).collect(),
        }
    }

    pub fn total(&self) -> usize {
        self.counts.iter().flatten().sum()
    }

    pub fn accuracy(&self) -> f64 {
        let right: usize = (0..self.counts.len()).map(|c| self.counts[c][c]).sum();
        right as f64 / self.total().max(1) as f64
    }

    /// Of each class's images, the fraction predicted as that class (its recall);
    /// `None` for a class with no images.
    pub fn class_accuracy(&self) -> Vec<Option<f64>> {
        self.counts
            .iter()
            .enumerate()
            .map(|(c, row)| {
                let n: usize = row.iter().sum();
                (n > 0).then(|| row[c] as f64 / n as f64)
            })
            .collect()
    }

    /// `(true, predicted, count)` of the wrong predictions, most frequent first.
    pub fn most_confused(&self) -> Vec<(usize, usize, usize)> {
        let mut pairs: Vec<(usize, usize, usize)> = self
            .counts
            .iter()
            .enumerate()
            .flat_map(|(t, row)| row.iter().enumerate().map(move |(p, &n)| (t, p, n)))
            .filter(|&(t, p, n)| t != p && n > 0)
            .collect();
        pairs.sort_by(|a, b| b.2.cmp(&a.2).then((a.0, a.1).cmp(&(b.0, b.1))));
        pairs
    }

    /// Per-class accuracy and the most confused pairs, as text.
    pub fn report(&self) -> String {
        let mut text = String::from("per-class accuracy:\n");
        for (c, accuracy) in self.class_accuracy().into_iter().enumerate() {
            let shown = accuracy.map_or_else(|| "no images".into(), |a| format!("{a:.4}"));
            let _ = writeln!(text, "  {:>11}: {shown}", self.names[c]);
        }
        text.push_str("most confused (true → predicted):\n");
        for (t, p, n) in self.most_confused().into_iter().take(PAIRS_REPORTED) {
            let _ = writeln!(text, "  {} → {}: {n} times", self.names[t], self.names[p]);
        }
        text
    }

    pub fn to_json(&self, drawn_to: &Path) -> Value {
        let pairs: Vec<Value> = self
            .most_confused()
            .into_iter()
            .take(PAIRS_REPORTED)
            .map(|(t, p, n)| json!({"true": t, "predicted": p, "count": n}))
            .collect();
        json!({
            "classes": self.names,
            "counts": self.counts,
            "class_accuracy": self.class_accuracy(),
            "most_confused": pairs,
            "drawn_to": drawn_to.display().to_string(),
        })
    }
}
