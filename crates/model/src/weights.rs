//! Models on disk: safetensors, the architecture in its metadata, written atomically.

use crate::checkpoint::TrainingState;
use crate::error::ModelError;
use crate::layers::{
    shape_len, Conv2D, Dense, Dropout, Flatten, Layer, LayerConfig, MaxPooling2D, Plan,
};
use crate::sequential::Sequential;
use kerno_tensor::conv::Padding;
use kerno_tensor::{Activation, AlignedBuf};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// The metadata key holding the architecture (one key, so the file's bytes are deterministic).
const METADATA_KEY: &str = "kerno";
const FORMAT: &str = "kerno.sequential";
/// Version 2 describes layers of every kind over shapes; version 1 (dense
/// layers over a flat input) is still read.
const VERSION: u32 = 2;
/// The largest model file kerno reads.
const MAX_FILE_BYTES: u64 = 4 << 30;
/// The most parameters a model file may describe: what the largest file holds as f32.
pub const MAX_PARAMS: usize = (MAX_FILE_BYTES / 4) as usize;
/// The most layers a model file may describe.
pub const MAX_LAYERS: usize = 10_000;
/// The most values a model file may claim for one sample, its input, every
/// layer's output and scratch (a convolution's patches of one image and its
/// kernel gradient's sums) together: 8 MiB of f32 a sample (the book's convnet
/// takes 0.2 M). The file holds no
/// activations, so this bounds what a few bytes of it can make kerno allocate
/// per sample.
pub const MAX_SAMPLE_VALUES: usize = 1 << 21;

/// The part of the metadata every version shares.
#[derive(Deserialize)]
struct Header {
    format: String,
    version: u32,
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Architecture {
    format: String,
    version: u32,
    /// One sample's shape, without the batch axis.
    input_shape: Vec<usize>,
    seed: u64,
    layers: Vec<LayerSpec>,
    /// Only in checkpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    training: Option<TrainingState>,
}

/// A layer in the file: its kind, name and configuration, with Keras' names.
#[derive(Serialize, Deserialize, PartialEq, Debug)]
#[serde(tag = "type", rename_all = "snake_case")]
enum LayerSpec {
    Dense {
        name: String,
        units: usize,
        activation: String,
    },
    Conv2d {
        name: String,
        filters: usize,
        kernel_size: [usize; 2],
        strides: [usize; 2],
        padding: String,
        activation: String,
        use_bias: bool,
    },
    MaxPooling2d {
        name: String,
        pool_size: [usize; 2],
        strides: [usize; 2],
        padding: String,
    },
    Flatten {
        name: String,
    },
    Dropout {
        name: String,
        rate: f32,
    },
}

/// Version 1: dense layers over a flat input.
#[derive(Deserialize)]
struct ArchitectureV1 {
    input_dim: usize,
    seed: u64,
    layers: Vec<DenseSpecV1>,
    #[serde(default)]
    training: Option<TrainingState>,
}

#[derive(Deserialize)]
struct DenseSpecV1 {
    name: String,
    units: usize,
    activation: String,
}

impl ArchitectureV1 {
    fn upgrade(self) -> Architecture {
        Architecture {
            format: FORMAT.to_string(),
            version: VERSION,
            input_shape: vec![self.input_dim],
            seed: self.seed,
            layers: self
                .layers
                .into_iter()
                .map(|l| LayerSpec::Dense {
                    name: l.name,
                    units: l.units,
                    activation: l.activation,
                })
                .collect(),
            training: self.training,
        }
    }
}

impl LayerSpec {
    fn of(layer: &Layer) -> Self {
        let name = layer.name().to_string();
        match layer.config() {
            LayerConfig::Dense(c) => LayerSpec::Dense {
                name,
                units: c.units,
                activation: c.activation.name().into(),
            },
            LayerConfig::Conv2D(c) => LayerSpec::Conv2d {
                name,
                filters: c.filters,
                kernel_size: c.kernel_size,
                strides: c.strides,
                padding: c.padding.name().into(),
                activation: c.activation.name().into(),
                use_bias: c.use_bias,
            },
            LayerConfig::MaxPooling2D(c) => LayerSpec::MaxPooling2d {
                name,
                pool_size: c.pool_size,
                strides: c.strides,
                padding: c.padding.name().into(),
            },
            LayerConfig::Flatten(_) => LayerSpec::Flatten { name },
            LayerConfig::Dropout(c) => LayerSpec::Dropout { name, rate: c.rate },
        }
    }

    fn name(&self) -> &str {
        match self {
            LayerSpec::Dense { name, .. }
            | LayerSpec::Conv2d { name, .. }
            | LayerSpec::MaxPooling2d { name, .. }
            | LayerSpec::Flatten { name }
            | LayerSpec::Dropout { name, .. } => name,
        }
    }

    /// The layer's configuration; an error names what the file got wrong.
    fn config(&self) -> Result<LayerConfig, String> {
        let activation = |name: &str| name.parse::<Activation>().map_err(|e| e.to_string());
        Ok(match self {
            LayerSpec::Dense {
                name,
                units,
                activation: act,
            } => Dense::new(*units, activation(act)?).named(name).into(),
            LayerSpec::Conv2d {
                name,
                filters,
                kernel_size,
                strides,
                padding,
                activation: act,
                use_bias,
            } => {
                let mut conv = Conv2D::new(*filters, 1)
                    .kernel_size(kernel_size[0], kernel_size[1])
                    .padding(padding.parse::<Padding>()?)
                    .activation(activation(act)?)
                    .use_bias(*use_bias)
                    .named(name);
                conv.strides = *strides;
                conv.into()
            }
            LayerSpec::MaxPooling2d {
                name,
                pool_size,
                strides,
                padding,
            } => {
                let mut pool = MaxPooling2D::new(1)
                    .pool_size(pool_size[0], pool_size[1])
                    .padding(padding.parse::<Padding>()?)
                    .named(name);
                pool.strides = *strides;
                pool.into()
            }
            LayerSpec::Flatten { name } => Flatten::new().named(name).into(),
            LayerSpec::Dropout { name, rate } => Dropout::new(*rate).named(name).into(),
        })
    }
}

impl Sequential {
    fn architecture(&self) -> Architecture {
        Architecture {
            format: FORMAT.to_string(),
            version: VERSION,
            input_shape: self.input_shape.clone(),
            seed: self.seed,
            layers: self.layers.iter().map(LayerSpec::of).collect(),
            training: None,
        }
    }

    /// Writes the architecture and weights as safetensors (`<layer>/kernel`,
    /// `<layer>/bias`), through a temporary file renamed over `path`, so a crash
    /// leaves the previous file whole.
    ///
    /// ```
    /// use kerno_model::{Activation, Dense, Sequential};
    /// let model = Sequential::new(784)
    ///     .add(Dense::new(512, Activation::Relu))
    ///     .add(Dense::new(10, Activation::Softmax));
    /// let path = std::env::temp_dir().join(format!("kerno-doc-{}.safetensors", std::process::id()));
    /// model.save(&path)?;
    /// let loaded = Sequential::load(&path)?;
    /// assert_eq!(loaded.weights(), model.weights());
    /// assert_eq!(loaded.param_count(), 407_050);
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), ModelError> {
        self.write_model_file(path.as_ref(), None, Vec::new())
    }

    /// Writes the architecture, `training` in the metadata, the weights and the
    /// `extra` tensors, atomically.
    pub(crate) fn write_model_file(
        &self,
        path: &Path,
        training: Option<TrainingState>,
        extra: Vec<(String, &[f32])>,
    ) -> Result<(), ModelError> {
        let mut names: Vec<&str> = self.layers.iter().map(Layer::name).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(ModelError::invalid(
                "layer names",
                format!("'{}' is used twice", w[0]),
            ));
        }
        let arch = Architecture {
            training,
            ..self.architecture()
        };
        let arch = serde_json::to_string(&arch).expect("the architecture serialises");
        let weights = self.layers.iter().flat_map(|l| {
            let params = l.params().into_iter();
            params
                .map(move |(param, shape, values)| (format!("{}/{param}", l.name()), values, shape))
        });
        let extra = extra
            .into_iter()
            .map(|(name, values)| (name, values, vec![values.len()]));
        let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = weights
            .chain(extra)
            .map(|(name, values, shape)| (name, le_bytes(values), shape))
            .collect();
        let views = bytes
            .iter()
            .map(|(name, data, shape)| {
                let view =
                    TensorView::new(Dtype::F32, shape.clone(), data).expect("shape matches data");
                (name.clone(), view)
            })
            .collect::<Vec<_>>();
        let metadata = Some(HashMap::from([(METADATA_KEY.to_string(), arch)]));
        let file =
            safetensors::serialize(views, &metadata).map_err(|e| bad(path, e.to_string()))?;
        kerno_data::write_atomically(path, &file).map_err(|error| ModelError::Io {
            path: path.to_path_buf(),
            error,
        })
    }

    /// Reads a model saved by [`Sequential::save`] (or a checkpoint): architecture
    /// and weights, not compiled.
    pub fn load(path: impl AsRef<Path>) -> Result<Sequential, ModelError> {
        let path = path.as_ref();
        let bytes = read_file(path)?;
        Sequential::from_safetensors(&bytes, path)
    }

    /// [`Sequential::load`] from the bytes of a model file; `origin` names it in errors.
    pub fn from_safetensors(bytes: &[u8], origin: &Path) -> Result<Sequential, ModelError> {
        let (model, _, _) = parse_model(origin, bytes)?;
        Ok(model)
    }

    /// Replaces this model's weights with those of a file saved from the same
    /// architecture (layer sizes and activations must match). Keeps the compilation.
    pub fn load_weights(&mut self, path: impl AsRef<Path>) -> Result<(), ModelError> {
        let path = path.as_ref();
        let bytes = read_file(path)?;
        let (arch, tensors) = parse(path, &bytes)?;
        plan_layers(path, &arch)?;
        let mine = self.architecture();
        // Names aside, the same layers on the same input.
        let shape = |a: &Architecture| {
            let layers: Vec<String> = a
                .layers
                .iter()
                .map(|l| {
                    let spec = serde_json::to_value(l).expect("a layer serialises");
                    let mut spec = spec.as_object().cloned().unwrap_or_default();
                    spec.remove("name");
                    serde_json::Value::Object(spec).to_string()
                })
                .collect();
            format!("input {:?} -> [{}]", a.input_shape, layers.join(", "))
        };
        if shape(&arch) != shape(&mine) {
            return Err(bad(
                path,
                format!("holds {}, but the model is {}", shape(&arch), shape(&mine)),
            ));
        }
        // Tensors are looked up by the file's layer names, in layer order.
        let mut weights = Vec::new();
        for (theirs, ours) in arch.layers.iter().zip(&self.layers) {
            for (param, shape, _) in ours.params() {
                let name = format!("{}/{param}", theirs.name());
                weights.push(tensor(path, &tensors, &name, &shape)?);
            }
        }
        self.weights_replaced();
        let mut weights = weights.into_iter();
        for layer in &mut self.layers {
            for param in layer.params_mut().into_iter().flatten() {
                *param = AlignedBuf::from_slice(&weights.next().expect("one per parameter"));
            }
        }
        Ok(())
    }
}

fn bad(path: &Path, problem: impl Into<String>) -> ModelError {
    ModelError::BadModelFile {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

fn le_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, ModelError> {
    let io = |error| ModelError::Io {
        path: path.to_path_buf(),
        error,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_FILE_BYTES {
        return Err(bad(
            path,
            format!("{len} bytes is larger than any kerno model"),
        ));
    }
    std::fs::read(path).map_err(io)
}

fn parse<'b>(path: &Path, bytes: &'b [u8]) -> Result<(Architecture, SafeTensors<'b>), ModelError> {
    let tensors = SafeTensors::deserialize(bytes)
        .map_err(|e| bad(path, format!("not a safetensors file: {e}")))?;
    let (_, metadata) = SafeTensors::read_metadata(bytes).map_err(|e| bad(path, e.to_string()))?;
    let arch_text = metadata
        .metadata()
        .as_ref()
        .and_then(|m| m.get(METADATA_KEY))
        .ok_or_else(|| bad(path, "no kerno architecture in its metadata"))?;
    let header: Header =
        serde_json::from_str(arch_text).map_err(|e| bad(path, format!("bad architecture: {e}")))?;
    let arch = match (header.format.as_str(), header.version) {
        (FORMAT, VERSION) => serde_json::from_str::<Architecture>(arch_text),
        (FORMAT, 1) => {
            serde_json::from_str::<ArchitectureV1>(arch_text).map(ArchitectureV1::upgrade)
        }
        (format, version) => {
            return Err(bad(
                path,
                format!("format {format} v{version}, expected {FORMAT} v1 or v{VERSION}"),
            ))
        }
    }
    .map_err(|e| bad(path, format!("bad architecture: {e}")))?;
    if arch.input_shape.is_empty() || arch.input_shape.contains(&0) || arch.layers.is_empty() {
        return Err(bad(path, "the architecture has no input or no layers"));
    }
    Ok((arch, tensors))
}

/// Builds the model a file describes from the weights it holds. Every size the
/// architecture claims is computed with checked arithmetic and matched against
/// the file's tensors (names, dtypes, shapes, byte lengths) before any layer is
/// built: a few hundred bytes of metadata cannot make kerno allocate more than
/// the file holds.
pub(crate) fn parse_model<'b>(
    path: &Path,
    bytes: &'b [u8],
) -> Result<(Sequential, Option<TrainingState>, SafeTensors<'b>), ModelError> {
    let (arch, tensors) = parse(path, bytes)?;
    let plan = plan_layers(path, &arch)?;
    // Each count was checked and their sum kept within MAX_PARAMS by `plan_layers`.
    let params: usize = plan.iter().filter_map(|l| l.plan.param_count()).sum();
    if params > bytes.len() / 4 {
        return Err(bad(
            path,
            format!(
                "the architecture claims {params} parameters, more than its {} bytes can hold",
                bytes.len()
            ),
        ));
    }
    for layer in &plan {
        for (suffix, shape) in &layer.plan.params {
            check_tensor(path, &tensors, &format!("{}/{suffix}", layer.name), shape)?;
        }
    }
    let mut layers = Vec::with_capacity(plan.len());
    for layer in plan {
        let mut params = Vec::with_capacity(layer.plan.params.len());
        for (suffix, shape) in &layer.plan.params {
            let name = format!("{}/{suffix}", layer.name);
            params.push(AlignedBuf::from_slice(&tensor(
                path, &tensors, &name, shape,
            )?));
        }
        let built = layer
            .config
            .build(layer.name, layer.input, layer.plan, params);
        layers.push(built);
    }
    let model = Sequential::from_layers(arch.input_shape, arch.seed, layers);
    Ok((model, arch.training, tensors))
}

/// A layer a file describes, its sizes checked, its weights not yet read.
struct PlannedLayer {
    name: String,
    config: LayerConfig,
    input: Vec<usize>,
    plan: Plan,
}

/// Checks an architecture on its own: known kinds and activations, unique
/// non-empty names, every layer fitting its input, the values of a sample
/// within [`MAX_SAMPLE_VALUES`], and a parameter count, summed with checked
/// arithmetic, within [`MAX_PARAMS`].
fn plan_layers(path: &Path, arch: &Architecture) -> Result<Vec<PlannedLayer>, ModelError> {
    if arch.layers.len() > MAX_LAYERS {
        return Err(bad(
            path,
            format!(
                "{} layers, more than the {MAX_LAYERS} a model may have",
                arch.layers.len()
            ),
        ));
    }
    let too_large = |what: String| {
        bad(
            path,
            format!(
                "{what} takes the values of a sample past {MAX_SAMPLE_VALUES}, more than a \
                 model file may describe"
            ),
        )
    };
    let mut input = arch.input_shape.clone();
    let mut sample_values = shape_len(&input)
        .filter(|&n| n <= MAX_SAMPLE_VALUES)
        .ok_or_else(|| too_large(format!("the input {input:?}")))?;
    let mut plan = Vec::with_capacity(arch.layers.len());
    let mut names = std::collections::HashSet::with_capacity(arch.layers.len());
    let mut params = 0usize;
    for spec in &arch.layers {
        let name = spec.name();
        if name.is_empty() || !names.insert(name) {
            return Err(bad(
                path,
                format!("layer name '{name}' is empty or used twice"),
            ));
        }
        let layer_error = |e: String| bad(path, format!("layer '{name}': {e}"));
        let config = spec.config().map_err(layer_error)?;
        let layer_plan = config.plan(&input).map_err(layer_error)?;
        let too_many = || {
            bad(
                path,
                format!(
                    "layer '{name}' (input {input:?}) takes the model past {MAX_PARAMS} \
                     parameters, more than any model file holds"
                ),
            )
        };
        let layer_params = layer_plan.param_count().ok_or_else(too_many)?;
        params = params
            .checked_add(layer_params)
            .filter(|&p| p <= MAX_PARAMS)
            .ok_or_else(too_many)?;
        sample_values = shape_len(&layer_plan.output_shape)
            .and_then(|n| n.checked_add(layer_plan.scratch_per_sample))
            .and_then(|n| n.checked_add(sample_values))
            .filter(|&n| n <= MAX_SAMPLE_VALUES)
            .ok_or_else(|| {
                too_large(format!(
                    "layer '{name}' (output {:?})",
                    layer_plan.output_shape
                ))
            })?;
        let output = layer_plan.output_shape.clone();
        plan.push(PlannedLayer {
            name: name.to_string(),
            config,
            input: std::mem::replace(&mut input, output),
            plan: layer_plan,
        });
    }
    Ok(plan)
}

/// Checks that the file holds the named tensor as F32 values of `shape`, its
/// bytes exactly those the shape needs, without reading them.
fn check_tensor(
    path: &Path,
    tensors: &SafeTensors<'_>,
    name: &str,
    shape: &[usize],
) -> Result<(), ModelError> {
    let view = tensors
        .tensor(name)
        .map_err(|_| bad(path, format!("no tensor '{name}'")))?;
    if view.dtype() != Dtype::F32 {
        return Err(bad(
            path,
            format!("tensor '{name}' is {:?}, expected F32", view.dtype()),
        ));
    }
    if view.shape() != shape {
        return Err(bad(
            path,
            format!(
                "tensor '{name}' has shape {:?}, expected {shape:?}",
                view.shape()
            ),
        ));
    }
    let bytes = shape
        .iter()
        .try_fold(4usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n == view.data().len());
    if bytes.is_none() {
        return Err(bad(
            path,
            format!(
                "tensor '{name}' holds {} bytes, not the 4 × {shape:?} its shape needs",
                view.data().len()
            ),
        ));
    }
    Ok(())
}

/// The named tensor as f32 values, checked for dtype, shape and length.
pub(crate) fn tensor(
    path: &Path,
    tensors: &SafeTensors<'_>,
    name: &str,
    shape: &[usize],
) -> Result<Vec<f32>, ModelError> {
    check_tensor(path, tensors, name, shape)?;
    let view = tensors
        .tensor(name)
        .map_err(|_| bad(path, format!("no tensor '{name}'")))?;
    Ok(view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}
