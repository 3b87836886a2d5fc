//! Structured mutations of kerno model files and checkpoints: the architecture
//! JSON in the safetensors metadata is parsed, edited (sizes, names, activations,
//! layer lists, value types, and the tensor entries that go with them), and
//! written back with the header length in front of it rewritten, so that every
//! mutated file still parses as safetensors and the edit reaches kerno's own checks.

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Map, Value};

/// The metadata key of kerno's architecture.
const ARCHITECTURE_KEY: &str = "kerno";

/// Sizes at the edges of what a model can claim: zero, small, the 32- and
/// 64-bit limits, products that overflow, and numbers JSON holds but `usize` does not.
fn interesting_size(rng: &mut ChaCha8Rng) -> Value {
    let sizes = [
        json!(0),
        json!(1),
        json!(3),
        json!(784),
        json!(200_000),
        json!(1u64 << 31),
        json!(u32::MAX),
        json!(1u64 << 32),
        json!(1u64 << 40),
        json!(i64::MAX),
        json!(u64::MAX),
        json!(-1),
        json!(2.5),
        json!(1e300),
    ];
    sizes.choose(rng).cloned().unwrap_or(Value::Null)
}

/// A value of another type than the field's.
fn other_type(rng: &mut ChaCha8Rng) -> Value {
    let values = [
        Value::Null,
        json!(true),
        json!("512"),
        json!([]),
        json!({}),
        json!([1, 2]),
        json!(""),
    ];
    values.choose(rng).cloned().unwrap_or(Value::Null)
}

/// The header's JSON and the bytes after it, when `file` is a safetensors file.
fn split(file: &[u8]) -> Option<(Map<String, Value>, &[u8])> {
    let len = u64::from_le_bytes(file.get(..8)?.try_into().ok()?);
    let end = usize::try_from(len).ok()?.checked_add(8)?;
    let header = serde_json::from_slice(file.get(8..end)?).ok()?;
    Some((header, &file[end..]))
}

/// A safetensors file of `header` and `data`, its length field matching the header.
fn join(header: &Map<String, Value>, data: &[u8]) -> Vec<u8> {
    let text = serde_json::to_vec(header).expect("a JSON map serialises");
    let mut file = (text.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(&text);
    file.extend_from_slice(data);
    file
}

/// `file` with one to three edits of its architecture (or of the tensor entries
/// beside it), the header length rewritten; `None` when `file` holds no
/// architecture to edit.
pub fn mutate_file(rng: &mut ChaCha8Rng, file: &[u8]) -> Option<Vec<u8>> {
    let (mut header, data) = split(file)?;
    let text = header
        .get("__metadata__")?
        .get(ARCHITECTURE_KEY)?
        .as_str()?
        .to_string();
    let mut architecture: Value = serde_json::from_str(&text).ok()?;
    for _ in 0..rng.gen_range(1..=3) {
        if rng.gen_range(0..5) == 0 {
            edit_tensor_entries(rng, &mut header, &architecture);
        } else {
            edit_architecture(rng, &mut architecture);
        }
    }
    let text = serde_json::to_string(&architecture).ok()?;
    let metadata = header.get_mut("__metadata__")?.as_object_mut()?;
    metadata.insert(ARCHITECTURE_KEY.into(), Value::String(text));
    Some(join(&header, data))
}

/// [`mutate_file`] with a generator seeded by `seed`, for libFuzzer's custom mutator.
pub fn mutate_file_seeded(file: &[u8], seed: u64) -> Option<Vec<u8>> {
    use rand::SeedableRng;
    mutate_file(&mut ChaCha8Rng::seed_from_u64(seed), file)
}

/// Every place in `value` that holds a number, as JSON pointers.
fn number_fields(value: &Value, at: String, out: &mut Vec<String>) {
    match value {
        Value::Number(_) => out.push(at),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                number_fields(item, format!("{at}/{i}"), out);
            }
        }
        Value::Object(fields) => {
            for (key, item) in fields {
                number_fields(item, format!("{at}/{key}"), out);
            }
        }
        _ => {}
    }
}

/// Sets the field `key` of the object at `pointer`, if there is one.
fn set(value: &mut Value, pointer: &str, key: &str, new: Value) {
    if let Some(fields) = value.pointer_mut(pointer).and_then(Value::as_object_mut) {
        fields.insert(key.into(), new);
    }
}

/// One edit of the architecture: a size, a name, an activation, the layer list,
/// a field's type, or the format.
fn edit_architecture(rng: &mut ChaCha8Rng, arch: &mut Value) {
    let layer_count = arch
        .get("layers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let layer = (layer_count > 0).then(|| rng.gen_range(0..layer_count));
    match rng.gen_range(0..9) {
        // A size (units, input_dim, or a number of the training state) made extreme.
        0..=2 => {
            let mut fields = Vec::new();
            number_fields(arch, String::new(), &mut fields);
            if let Some(field) = fields.choose(rng) {
                let size = interesting_size(rng);
                if let Some(slot) = arch.pointer_mut(field) {
                    *slot = size;
                }
            }
        }
        // A name emptied, repeated, or made to look like a tensor's path.
        3 => {
            if let Some(l) = layer {
                let other = rng.gen_range(0..layer_count);
                let other_name = arch
                    .pointer(&format!("/layers/{other}/name"))
                    .cloned()
                    .unwrap_or_default();
                let names = [
                    json!(""),
                    other_name,
                    json!("dense/kernel"),
                    json!("optimizer/dense"),
                    json!("ünïcode ✓"),
                    json!("x".repeat(300)),
                ];
                let name = names.choose(rng).cloned().unwrap_or_default();
                set(arch, &format!("/layers/{l}"), "name", name);
            }
        }
        // An activation unknown, empty, or another known one.
        4 => {
            if let Some(l) = layer {
                let names = ["relu", "softmax", "tanh", "Sigmoid", "swish", "", "relu6"];
                set(
                    arch,
                    &format!("/layers/{l}"),
                    "activation",
                    json!(names.choose(rng)),
                );
            }
        }
        // The layer list: a layer dropped, doubled, moved or added; or the list emptied.
        5 | 6 => {
            let Some(layers) = arch.get_mut("layers").and_then(Value::as_array_mut) else {
                return;
            };
            let len = layers.len();
            match rng.gen_range(0..5) {
                0 if len > 0 => {
                    layers.remove(rng.gen_range(0..len));
                }
                1 if len > 0 => {
                    let copy = layers[rng.gen_range(0..len)].clone();
                    layers.insert(rng.gen_range(0..=len), copy);
                }
                2 if len > 1 => layers.swap(rng.gen_range(0..len), rng.gen_range(0..len)),
                3 => layers.insert(
                    rng.gen_range(0..=len),
                    json!({"name": "added", "units": interesting_size(rng), "activation": "relu"}),
                ),
                _ => layers.clear(),
            }
        }
        // A field given a value of another type, removed, or joined by an unknown one.
        7 => {
            let pointer = match layer {
                Some(l) if rng.gen() => format!("/layers/{l}"),
                _ => String::new(),
            };
            if let Some(fields) = arch.pointer_mut(&pointer).and_then(Value::as_object_mut) {
                let keys: Vec<String> = fields.keys().cloned().collect();
                if let Some(key) = keys.choose(rng) {
                    match rng.gen_range(0..3) {
                        0 => {
                            fields.remove(key);
                        }
                        1 => {
                            fields.insert("unknown".into(), other_type(rng));
                        }
                        _ => {
                            fields.insert(key.clone(), other_type(rng));
                        }
                    }
                }
            }
        }
        // The format or its version.
        _ => {
            if rng.gen() {
                let version = json!(*[0, 2, 3, u32::MAX].choose(rng).unwrap_or(&0));
                set(arch, "", "version", version);
            } else {
                set(arch, "", "format", json!("kerno.functional"));
            }
        }
    }
}

/// One edit of the tensor entries, made to agree or disagree with the
/// architecture: a tensor's shape set to a layer's claimed size (with its data
/// left as it was), its dtype changed, its data offsets pushed past the end, or
/// the tensor removed.
fn edit_tensor_entries(rng: &mut ChaCha8Rng, header: &mut Map<String, Value>, arch: &Value) {
    let names: Vec<String> = header
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect();
    let Some(name) = names.choose(rng) else {
        return;
    };
    if rng.gen_range(0..4) == 0 {
        header.remove(name);
        return;
    }
    let Some(entry) = header.get_mut(name).and_then(Value::as_object_mut) else {
        return;
    };
    match rng.gen_range(0..3) {
        0 => {
            let units = arch
                .get("layers")
                .and_then(Value::as_array)
                .and_then(|layers| layers.choose(rng))
                .and_then(|l| l.get("units").cloned())
                .unwrap_or_else(|| interesting_size(rng));
            let shape = match rng.gen() {
                true => json!([units]),
                false => json!([arch.get("input_dim").cloned().unwrap_or(json!(1)), units]),
            };
            entry.insert("shape".into(), shape);
        }
        1 => {
            let dtype = ["F16", "BF16", "F64", "I32", "U8", "BOOL"].choose(rng);
            entry.insert("dtype".into(), json!(dtype));
        }
        _ => {
            let end = interesting_size(rng);
            entry.insert("data_offsets".into(), json!([0, end]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn file(arch: &str) -> Vec<u8> {
        let mut header = Map::new();
        header.insert(
            "__metadata__".into(),
            json!({ ARCHITECTURE_KEY: arch.to_string() }),
        );
        header.insert(
            "dense/bias".into(),
            json!({"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}),
        );
        join(&header, &[0; 8])
    }

    #[test]
    fn mutated_files_keep_a_header_length_that_matches() {
        let seed =
            file(r#"{"input_dim":4,"layers":[{"name":"dense","units":2,"activation":"relu"}]}"#);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut changed = 0;
        for _ in 0..500 {
            let mutated = mutate_file(&mut rng, &seed).expect("the seed holds an architecture");
            let (header, data) = split(&mutated).expect("the mutated header parses");
            assert_eq!(data, &[0; 8]);
            assert!(header["__metadata__"][ARCHITECTURE_KEY].is_string());
            changed += (mutated != seed) as usize;
        }
        assert!(
            changed > 400,
            "only {changed} of 500 mutations changed the file"
        );
    }

    #[test]
    fn files_without_an_architecture_are_not_mutated() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        assert!(mutate_file(&mut rng, b"not safetensors").is_none());
        let mut header = Map::new();
        header.insert("__metadata__".into(), json!({}));
        assert!(mutate_file(&mut rng, &join(&header, &[])).is_none());
    }
}
