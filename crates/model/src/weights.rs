//! Models on disk: safetensors, the architecture in its metadata, written atomically.

use crate::checkpoint::TrainingState;
use crate::error::ModelError;
use crate::layer::DenseLayer;
use crate::sequential::Sequential;
use kerno_tensor::Activation;
use kerno_tensor::AlignedBuf;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// The metadata key holding the architecture (one key, so the file's bytes are deterministic).
const METADATA_KEY: &str = "kerno";
const FORMAT: &str = "kerno.sequential";
const VERSION: u32 = 1;
/// The largest model file kerno reads.
const MAX_FILE_BYTES: u64 = 4 << 30;
/// The most parameters a model file may describe: what the largest file holds as f32.
pub const MAX_PARAMS: usize = (MAX_FILE_BYTES / 4) as usize;
/// The most layers a model file may describe.
pub const MAX_LAYERS: usize = 10_000;

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Architecture {
    format: String,
    version: u32,
    input_dim: usize,
    seed: u64,
    layers: Vec<LayerSpec>,
    /// Only in checkpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    training: Option<TrainingState>,
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct LayerSpec {
    name: String,
    units: usize,
    activation: String,
}

impl Sequential {
    fn architecture(&self) -> Architecture {
        Architecture {
            format: FORMAT.to_string(),
            version: VERSION,
            input_dim: self.input_dim,
            seed: self.seed,
            layers: self
                .layers
                .iter()
                .map(|l| LayerSpec {
                    name: l.name.clone(),
                    units: l.units,
                    activation: l.activation.name().to_string(),
                })
                .collect(),
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
        let mut names: Vec<&str> = self.layers.iter().map(|l| l.name.as_str()).collect();
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
            [
                (
                    format!("{}/kernel", l.name),
                    &l.kernel[..],
                    vec![l.inputs, l.units],
                ),
                (format!("{}/bias", l.name), &l.bias[..], vec![l.units]),
            ]
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
        let shape = |a: &Architecture| {
            let layers: Vec<String> = a
                .layers
                .iter()
                .map(|l| format!("{}:{}", l.units, l.activation))
                .collect();
            format!("input {} -> [{}]", a.input_dim, layers.join(", "))
        };
        if shape(&arch) != shape(&mine) {
            return Err(bad(
                path,
                format!("holds {}, but the model is {}", shape(&arch), shape(&mine)),
            ));
        }
        // Tensors are looked up by the file's layer names, in layer order.
        let renamed: Vec<(String, String)> = arch
            .layers
            .iter()
            .zip(&self.layers)
            .map(|(theirs, ours)| (theirs.name.clone(), ours.name.clone()))
            .collect();
        let mut weights = Vec::with_capacity(self.layers.len() * 2);
        for ((theirs, _), layer) in renamed.iter().zip(&self.layers) {
            weights.push(tensor(
                path,
                &tensors,
                &format!("{theirs}/kernel"),
                &[layer.inputs, layer.units],
            )?);
            weights.push(tensor(
                path,
                &tensors,
                &format!("{theirs}/bias"),
                &[layer.units],
            )?);
        }
        self.weights_replaced();
        for (layer, pair) in self.layers.iter_mut().zip(weights.chunks_exact(2)) {
            layer.kernel = AlignedBuf::from_slice(&pair[0]);
            layer.bias = AlignedBuf::from_slice(&pair[1]);
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
    let arch: Architecture =
        serde_json::from_str(arch_text).map_err(|e| bad(path, format!("bad architecture: {e}")))?;
    if arch.format != FORMAT || arch.version != VERSION {
        return Err(bad(
            path,
            format!(
                "format {} v{}, expected {FORMAT} v{VERSION}",
                arch.format, arch.version
            ),
        ));
    }
    if arch.input_dim == 0 || arch.layers.is_empty() {
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
    let params: usize = plan.iter().map(|(l, _)| l.params).sum();
    if params > bytes.len() / 4 {
        return Err(bad(
            path,
            format!(
                "the architecture claims {params} parameters, more than its {} bytes can hold",
                bytes.len()
            ),
        ));
    }
    for (layer, shapes) in &plan {
        for (suffix, shape) in shapes {
            check_tensor(path, &tensors, &format!("{}/{suffix}", layer.name), shape)?;
        }
    }
    let mut layers = Vec::with_capacity(plan.len());
    for (layer, shapes) in plan {
        let [kernel, bias] = [0, 1].map(|i| {
            let (suffix, shape) = &shapes[i];
            tensor(path, &tensors, &format!("{}/{suffix}", layer.name), shape)
        });
        let (name, inputs, activation) = (layer.name, layer.inputs, layer.activation);
        let (kernel, bias) = (kernel?.into(), bias?.into());
        layers.push(DenseLayer {
            name,
            inputs,
            units: layer.units,
            activation,
            kernel,
            bias,
        });
    }
    let model = Sequential::from_layers(arch.input_dim, arch.seed, layers);
    Ok((model, arch.training, tensors))
}

/// A layer a file describes, its sizes checked, its weights not yet read.
struct PlannedLayer {
    name: String,
    inputs: usize,
    units: usize,
    activation: Activation,
    params: usize,
}

/// The layers an architecture describes, each with the shapes of the parameter
/// tensors it needs (named by their suffix after `<layer>/`), in layer order.
type LayerPlan = Vec<(PlannedLayer, Vec<(&'static str, Vec<usize>)>)>;

/// Checks an architecture on its own: known activations, unique non-empty names,
/// sizes of at least 1, and a parameter count, summed with checked arithmetic,
/// within [`MAX_PARAMS`].
fn plan_layers(path: &Path, arch: &Architecture) -> Result<LayerPlan, ModelError> {
    let mut plan: LayerPlan = Vec::with_capacity(arch.layers.len().min(MAX_LAYERS));
    if arch.layers.len() > MAX_LAYERS {
        return Err(bad(
            path,
            format!(
                "{} layers, more than the {MAX_LAYERS} a model may have",
                arch.layers.len()
            ),
        ));
    }
    let mut names = std::collections::HashSet::with_capacity(arch.layers.len());
    let (mut inputs, mut params) = (arch.input_dim, 0usize);
    for spec in &arch.layers {
        if spec.name.is_empty() || !names.insert(spec.name.as_str()) {
            return Err(bad(
                path,
                format!("layer name '{}' is empty or used twice", spec.name),
            ));
        }
        let activation: Activation = spec
            .activation
            .parse()
            .map_err(|e| bad(path, format!("layer '{}': {e}", spec.name)))?;
        if spec.units == 0 {
            return Err(bad(path, format!("layer '{}' has 0 units", spec.name)));
        }
        let too_many = || {
            bad(
                path,
                format!(
                    "layer '{}' ({inputs} inputs, {} units) takes the model past \
                     {MAX_PARAMS} parameters, more than any model file holds",
                    spec.name, spec.units
                ),
            )
        };
        let layer_params = inputs
            .checked_mul(spec.units)
            .and_then(|kernel| kernel.checked_add(spec.units))
            .ok_or_else(too_many)?;
        params = params
            .checked_add(layer_params)
            .filter(|&p| p <= MAX_PARAMS)
            .ok_or_else(too_many)?;
        let shapes = vec![
            ("kernel", vec![inputs, spec.units]),
            ("bias", vec![spec.units]),
        ];
        let layer = PlannedLayer {
            name: spec.name.clone(),
            inputs,
            units: spec.units,
            activation,
            params: layer_params,
        };
        plan.push((layer, shapes));
        inputs = spec.units;
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
