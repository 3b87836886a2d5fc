//! The models `kerno` trains by name: the notebook's MLP and the book's convnet.

use kerno_data::Dataset;
use kerno_model::{
    Activation, Conv2D, Dense, Flatten, Input, Loss, MaxPooling2D, Metric, Optimizer, Sequential,
};
use std::fmt;
use std::str::FromStr;

/// A model `kerno train --model NAME` builds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ModelKind {
    /// The notebook's `Dense(512, relu) → Dense(classes, softmax)`.
    #[default]
    Mlp,
    /// The next chapter's convnet: three 3×3 convolutions (32, 64, 64 filters,
    /// relu), 2×2 max pooling after the first two, then `Dense(64, relu) →
    /// Dense(classes, softmax)`.
    Convnet,
}

impl ModelKind {
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Mlp => "mlp",
            ModelKind::Convnet => "convnet",
        }
    }

    /// The batch size the book trains it with.
    pub fn default_batch_size(self) -> usize {
        match self {
            ModelKind::Mlp => 128,
            ModelKind::Convnet => 64,
        }
    }

    /// The model for `height × width` greyscale images of `classes` classes.
    pub fn build(self, height: usize, width: usize, classes: usize, seed: u64) -> Sequential {
        match self {
            ModelKind::Mlp => Sequential::new(height * width)
                .with_seed(seed)
                .add(Dense::new(512, Activation::Relu))
                .add(Dense::new(classes, Activation::Softmax)),
            ModelKind::Convnet => Sequential::new(Input::shape([height, width, 1]))
                .with_seed(seed)
                .add(Conv2D::new(32, 3).activation(Activation::Relu))
                .add(MaxPooling2D::new(2))
                .add(Conv2D::new(64, 3).activation(Activation::Relu))
                .add(MaxPooling2D::new(2))
                .add(Conv2D::new(64, 3).activation(Activation::Relu))
                .add(Flatten::new())
                .add(Dense::new(64, Activation::Relu))
                .add(Dense::new(classes, Activation::Softmax)),
        }
    }

    /// The model for `data`, compiled as the book does (RMSprop, categorical
    /// cross-entropy, accuracy) with `optimizer`.
    pub fn compiled(
        self,
        data: &Dataset,
        seed: u64,
        optimizer: Optimizer,
    ) -> Result<Sequential, kerno_model::ModelError> {
        let images = &data.train.images;
        let mut model = self.build(images.height(), images.width(), data.classes, seed);
        model.compile(
            optimizer,
            Loss::CategoricalCrossentropy,
            &[Metric::Accuracy],
        )?;
        Ok(model)
    }
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ModelKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "mlp" => Ok(ModelKind::Mlp),
            "convnet" => Ok(ModelKind::Convnet),
            other => Err(format!("unknown model '{other}' (expected mlp or convnet)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_books_models_have_their_parameter_counts() {
        assert_eq!(ModelKind::Mlp.build(28, 28, 10, 1).param_count(), 407_050);
        assert_eq!(
            ModelKind::Convnet.build(28, 28, 10, 1).param_count(),
            93_322
        );
    }
}
