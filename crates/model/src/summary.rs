//! `summary()`: Keras' model table.

use crate::layers::keras_shape;
use crate::sequential::Sequential;

const WIDTHS: [usize; 3] = [33, 24, 15];

impl Sequential {
    /// The model as Keras' `model.summary()` prints it.
    pub fn summary(&self) -> String {
        let line = |left: &str, mid: &str, right: &str, fill: &str| {
            let cells: Vec<String> = WIDTHS.iter().map(|&w| fill.repeat(w)).collect();
            format!("{left}{}{right}\n", cells.join(mid))
        };
        let row = |sep: &str, cells: [String; 3]| {
            let text = [
                format!(" {:<w$}", cells[0], w = WIDTHS[0] - 1),
                format!(" {:<w$}", cells[1], w = WIDTHS[1] - 1),
                format!("{:>w$} ", cells[2], w = WIDTHS[2] - 1),
            ];
            format!("{sep}{}{sep}\n", text.join(sep))
        };
        let mut out = String::from("Model: \"sequential\"\n");
        out += &line("┏", "┳", "┓", "━");
        out += &row(
            "┃",
            [
                "Layer (type)".into(),
                "Output Shape".into(),
                "Param #".into(),
            ],
        );
        out += &line("┡", "╇", "┩", "━");
        for (i, layer) in self.layers.iter().enumerate() {
            if i > 0 {
                out += &line("├", "┼", "┤", "─");
            }
            out += &row(
                "│",
                [
                    format!("{} ({})", layer.name(), layer.kind()),
                    keras_shape(layer.output_shape()),
                    thousands(layer.param_count()),
                ],
            );
        }
        out += &line("└", "┴", "┘", "─");
        let total = self.param_count();
        let size = human_bytes(total * 4);
        out += &format!(" Total params: {} ({size})\n", thousands(total));
        out += &format!(" Trainable params: {} ({size})\n", thousands(total));
        out += " Non-trainable params: 0 (0.00 B)\n";
        out
    }
}

/// `407050` → `407,050`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Keras' size format: `1.55 MB` (powers of 1024).
fn human_bytes(bytes: usize) -> String {
    let units = ["B", "KB", "MB", "GB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.2} {}", units[unit])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Activation, Dense};

    #[test]
    fn summary_matches_keras_layout() {
        let model = Sequential::new(784)
            .add(Dense::new(512, Activation::Relu))
            .add(Dense::new(10, Activation::Softmax));
        let s = model.summary();
        assert!(
            s.contains(
                "│ dense (Dense)                   │ (None, 512)            │       401,920 │"
            ),
            "{s}"
        );
        assert!(s.contains(
            "│ dense_1 (Dense)                 │ (None, 10)             │         5,130 │"
        ));
        assert!(s.contains(" Total params: 407,050 (1.55 MB)"));
    }
}
