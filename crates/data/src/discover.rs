//! Where a dataset is found: an explicit folder, `KERNO_DATA`, `./data/<name>`,
//! Keras' cache, Debian's `/usr/share/datasets`, kerno's download cache, and last a download.

use crate::dataset::{Dataset, Images, Split};
use crate::error::{DataError, Malformation};
use crate::idx::{self, IdxArray};
use crate::npz;
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The four IDX files of an MNIST-style dataset, without the `.gz` they usually carry.
pub const IDX_FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];
const NPZ_MEMBERS: [&str; 4] = ["x_train", "y_train", "x_test", "y_test"];

/// The datasets kerno knows by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatasetKind {
    Mnist,
    FashionMnist,
}

impl DatasetKind {
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Mnist => "mnist",
            DatasetKind::FashionMnist => "fashion-mnist",
        }
    }

    pub fn classes(self) -> usize {
        10
    }

    /// What each class is, by label.
    pub fn class_names(self) -> [&'static str; 10] {
        match self {
            DatasetKind::Mnist => ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
            DatasetKind::FashionMnist => [
                "T-shirt/top",
                "Trouser",
                "Pullover",
                "Dress",
                "Coat",
                "Sandal",
                "Shirt",
                "Sneaker",
                "Bag",
                "Ankle boot",
            ],
        }
    }

    /// Folders and files to look in, in order, after an explicit folder.
    fn candidates(self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        if let Some(root) = std::env::var_os("KERNO_DATA") {
            let root = PathBuf::from(root);
            found.push(root.join(self.name()));
            found.push(root);
        }
        found.push(Path::new("data").join(self.name()));
        if let Some(home) = std::env::var_os("HOME").map(PathBuf::from) {
            found.push(match self {
                DatasetKind::Mnist => home.join(".keras/datasets/mnist.npz"),
                DatasetKind::FashionMnist => home.join(".keras/datasets/fashion-mnist"),
            });
        }
        // Debian's dataset packages (`dataset-fashion-mnist`).
        found.push(Path::new("/usr/share/datasets").join(self.name()));
        found
    }
}

impl fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DatasetKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "mnist" => Ok(DatasetKind::Mnist),
            "fashion-mnist" | "fashion_mnist" => Ok(DatasetKind::FashionMnist),
            other => Err(format!(
                "unknown dataset '{other}' (expected mnist or fashion-mnist)"
            )),
        }
    }
}

/// kerno's own cache folder for `kind` (`$XDG_CACHE_HOME/kerno/<name>`, else `~/.cache/kerno/<name>`).
pub fn cache_dir(kind: DatasetKind) -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("kerno").join(kind.name()))
}

/// Finds and reads `kind`, as `keras.datasets.mnist.load_data()`.
///
/// ```
/// use kerno_data::{load, DatasetKind};
/// use std::path::Path;
/// // An explicit folder is read alone; what it lacks is an error naming it.
/// let error = load(DatasetKind::Mnist, Some(Path::new("no-such-folder"))).unwrap_err();
/// assert!(error.to_string().contains("no-such-folder"));
/// // Without one, the usual places (and `KERNO_DATA`) are searched:
/// // let mnist = load(DatasetKind::Mnist, None)?;
/// ```
///
/// With `explicit` (a folder, or an `.npz` file) only that place is read, and a
/// missing file there is an error naming it. Otherwise the places in the crate
/// docs are tried in order, passing over any that holds another known dataset;
/// the dataset is downloaded into the cache when the `download` feature is on
/// and no copy is found. A named dataset is never replaced by another: an
/// explicit place that holds another known dataset is an error.
pub fn load(kind: DatasetKind, explicit: Option<&Path>) -> Result<Dataset, DataError> {
    if let Some(place) = explicit {
        if let Some(found) = holds_another(kind, place)? {
            return Err(DataError::WrongDataset {
                path: place.to_path_buf(),
                wanted: kind.name(),
                found: found.name(),
            });
        }
        return load_place(kind, place);
    }
    let mut searched = Vec::new();
    for place in kind.candidates() {
        if holds_dataset(&place) {
            // A folder named for no dataset (`KERNO_DATA` itself) may hold another one.
            match holds_another(kind, &place)? {
                Some(found) => searched.push(format!("{} (holds {found})", place.display())),
                None => return load_place(kind, &place),
            }
        } else {
            searched.push(place.display().to_string());
        }
    }
    let cache = cache_dir(kind);
    if let Some(cache) = &cache {
        if holds_dataset(cache) || cfg!(feature = "download") {
            #[cfg(feature = "download")]
            {
                let (files, mirrors) = crate::download::remote(kind);
                if let Err(failure) = crate::download::fetch_missing(files, mirrors, cache) {
                    // Where it looked matters as much as why the download failed.
                    searched.push(cache.display().to_string());
                    return Err(DataError::NotFound {
                        dataset: kind.name().to_string(),
                        searched: searched.join(", "),
                        hint: format!("; then downloading failed: {failure}"),
                    });
                }
            }
            return load_place(kind, cache);
        }
        searched.push(cache.display().to_string());
    }
    let hint = match kind {
        DatasetKind::FashionMnist => "; put the four IDX files in one of them, pass --data DIR, or install Debian's dataset-fashion-mnist",
        DatasetKind::Mnist => "; put the four IDX files (or mnist.npz) in one of them, or pass --data DIR",
    };
    Err(DataError::NotFound {
        dataset: kind.name().to_string(),
        searched: searched.join(", "),
        hint: hint.to_string(),
    })
}

/// Reads any MNIST-style IDX image set from a folder holding the four files.
pub fn load_dir(dir: &Path, name: &str, classes: usize) -> Result<Dataset, DataError> {
    let files = IDX_FILES
        .iter()
        .map(|base| find_idx_file(dir, base))
        .collect::<Result<Vec<_>, _>>()?;
    let arrays = files
        .iter()
        .map(|f| idx::read_file(f))
        .collect::<Result<Vec<_>, _>>()?;
    let [train_x, train_y, test_x, test_y]: [IdxArray; 4] = arrays.try_into().expect("four files");
    let name_of = |i: usize| files[i].clone();
    Ok(Dataset {
        name: name.to_string(),
        classes,
        train: split(train_x, &name_of(0), train_y, &name_of(1), classes)?,
        test: split(test_x, &name_of(2), test_y, &name_of(3), classes)?,
        source: dir.to_path_buf(),
    })
}

fn load_place(kind: DatasetKind, place: &Path) -> Result<Dataset, DataError> {
    let npz_file = if place.extension().is_some_and(|e| e == "npz") {
        Some(place.to_path_buf())
    } else {
        let inside = place.join("mnist.npz");
        (!has_idx_files(place) && inside.is_file()).then_some(inside)
    };
    match npz_file {
        Some(file) => load_npz(&file, kind.name(), kind.classes()),
        None => {
            if !place.is_dir() {
                return Err(DataError::Missing {
                    path: place.to_path_buf(),
                    expected: format!("the four IDX files of {kind} or mnist.npz"),
                });
            }
            load_dir(place, kind.name(), kind.classes())
        }
    }
}

/// Reads a Keras-style `.npz` holding `x_train`, `y_train`, `x_test`, `y_test`.
pub fn load_npz(file: &Path, name: &str, classes: usize) -> Result<Dataset, DataError> {
    let arrays = npz::read_members(file, &NPZ_MEMBERS)?;
    let [train_x, train_y, test_x, test_y]: [IdxArray; 4] =
        arrays.try_into().expect("four members");
    let member = |m: &str| file.join(format!("{m}.npy"));
    Ok(Dataset {
        name: name.to_string(),
        classes,
        train: split(
            train_x,
            &member("x_train"),
            train_y,
            &member("y_train"),
            classes,
        )?,
        test: split(
            test_x,
            &member("x_test"),
            test_y,
            &member("y_test"),
            classes,
        )?,
        source: file.to_path_buf(),
    })
}

fn split(
    images: IdxArray,
    images_path: &Path,
    labels: IdxArray,
    labels_path: &Path,
    classes: usize,
) -> Result<Split, DataError> {
    let [count, height, width] = images.dims[..] else {
        return Err(DataError::malformed(
            images_path,
            Malformation::WrongRank {
                expected: 3,
                found: images.dims.len(),
            },
        ));
    };
    if labels.dims.len() != 1 {
        return Err(DataError::malformed(
            labels_path,
            Malformation::WrongRank {
                expected: 1,
                found: labels.dims.len(),
            },
        ));
    }
    if labels.data.len() != count {
        return Err(DataError::CountMismatch {
            images: images_path.display().to_string(),
            image_count: count,
            labels: labels_path.display().to_string(),
            label_count: labels.data.len(),
        });
    }
    if let Some((index, &label)) = labels
        .data
        .iter()
        .enumerate()
        .find(|(_, &l)| l as usize >= classes)
    {
        return Err(DataError::malformed(
            labels_path,
            Malformation::LabelOutOfRange {
                index,
                label,
                classes,
            },
        ));
    }
    Ok(Split {
        images: Images::new(count, height, width, images.data),
        labels: labels.data,
    })
}

/// `dir/base.gz` or `dir/base`, whichever exists.
fn find_idx_file(dir: &Path, base: &str) -> Result<PathBuf, DataError> {
    let gz = dir.join(format!("{base}.gz"));
    let raw = dir.join(base);
    if gz.is_file() {
        return Ok(gz);
    }
    if raw.is_file() {
        return Ok(raw);
    }
    Err(DataError::Missing {
        path: gz,
        expected: format!("{} (each raw or .gz)", IDX_FILES.join(", ")),
    })
}

fn has_idx_files(dir: &Path) -> bool {
    IDX_FILES
        .iter()
        .any(|b| dir.join(b).is_file() || dir.join(format!("{b}.gz")).is_file())
}

/// SHA-256 of the 60,000 training labels of each dataset kerno knows by name: what
/// tells them apart, since their files share names, shapes and formats.
const TRAIN_LABELS_SHA256: [(DatasetKind, &str); 2] = [
    (
        DatasetKind::Mnist,
        "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
    ),
    (
        DatasetKind::FashionMnist,
        "657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7",
    ),
];

/// The known dataset other than `kind` that `place` holds, judged by its training
/// labels alone (a few kilobytes); `None` for `kind` itself or a dataset of the
/// user's own. A place without training labels is left to the full read to report.
fn holds_another(kind: DatasetKind, place: &Path) -> Result<Option<DatasetKind>, DataError> {
    let labels = if place.extension().is_some_and(|e| e == "npz") {
        npz::read_members(place, &["y_train"])?.remove(0)
    } else if let Ok(file) = find_idx_file(place, IDX_FILES[1]) {
        idx::read_file(&file)?
    } else if place.join("mnist.npz").is_file() {
        npz::read_members(&place.join("mnist.npz"), &["y_train"])?.remove(0)
    } else {
        return Ok(None);
    };
    let hex = format!("{:x}", Sha256::digest(&labels.data));
    Ok(TRAIN_LABELS_SHA256
        .iter()
        .find(|(other, sha)| *other != kind && *sha == hex)
        .map(|&(other, _)| other))
}

/// Whether a place holds (part of) a dataset: then it is read, and what is missing is an error.
fn holds_dataset(place: &Path) -> bool {
    if place.extension().is_some_and(|e| e == "npz") {
        place.is_file()
    } else {
        has_idx_files(place) || place.join("mnist.npz").is_file()
    }
}
