//! The readers on generated files, and on every kind of malformed file.

use kerno_data::{load, load_dir, DataError, DatasetKind, Malformation};
use kerno_testkit::files::{gzip, idx, npy, npz};
use std::path::Path;

/// A small MNIST-style set: `n` train and `n` test images of 3×2 pixels.
fn write_set(dir: &Path, n: u32, compressed: bool) {
    let images: Vec<u8> = (0..n * 6).map(|i| (i * 7 % 256) as u8).collect();
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    for (name, bytes) in [
        ("train-images-idx3-ubyte", idx(&[n, 3, 2], &images)),
        ("train-labels-idx1-ubyte", idx(&[n], &labels)),
        ("t10k-images-idx3-ubyte", idx(&[n, 3, 2], &images)),
        ("t10k-labels-idx1-ubyte", idx(&[n], &labels)),
    ] {
        if compressed {
            std::fs::write(dir.join(format!("{name}.gz")), gzip(&bytes)).unwrap();
        } else {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}

fn malformation(err: DataError) -> Malformation {
    match err {
        DataError::Malformed { problem, .. } => problem,
        other => panic!("expected a malformed-file error, got {other}"),
    }
}

#[test]
fn reads_raw_and_gzip_sets_alike() {
    for compressed in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        write_set(dir.path(), 5, compressed);
        let set = load_dir(dir.path(), "tiny", 10).unwrap();
        assert_eq!(set.train.images.len(), 5);
        assert_eq!(
            (set.train.images.height(), set.train.images.width()),
            (3, 2)
        );
        assert_eq!(set.train.images.image(1), &[42, 49, 56, 63, 70, 77]);
        assert_eq!(set.test.labels, vec![0, 1, 2, 3, 4]);
        // The same folder through discovery, as an explicit --data.
        let again = load(DatasetKind::FashionMnist, Some(dir.path())).unwrap();
        assert_eq!(again.train, set.train);
    }
}

#[test]
fn reads_keras_npz() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mnist.npz");
    let archive = npz(&[
        ("x_train.npy", npy("(2, 2, 2)", &[1, 2, 3, 4, 5, 6, 7, 8])),
        ("y_train.npy", npy("(2,)", &[3, 9])),
        ("x_test.npy", npy("(1, 2, 2)", &[9, 9, 9, 9])),
        ("y_test.npy", npy("(1,)", &[0])),
    ]);
    std::fs::write(&path, archive).unwrap();
    let set = load(DatasetKind::Mnist, Some(&path)).unwrap();
    assert_eq!(set.train.images.image(1), &[5, 6, 7, 8]);
    assert_eq!(set.train.labels, vec![3, 9]);
    // A folder holding mnist.npz works too.
    assert_eq!(
        load(DatasetKind::Mnist, Some(dir.path()))
            .unwrap()
            .test
            .labels,
        vec![0]
    );
}

/// Writes the valid set, replaces one file with `bytes`, and returns the error.
fn error_with(file: &str, bytes: Vec<u8>) -> DataError {
    let dir = tempfile::tempdir().unwrap();
    write_set(dir.path(), 4, false);
    std::fs::write(dir.path().join(file), bytes).unwrap();
    let err = load_dir(dir.path(), "tiny", 10).unwrap_err();
    assert!(
        err.to_string().contains(file),
        "error must name the file: {err}"
    );
    err
}

/// Whether a malformation is the one a case expects.
type IsExpected = fn(&Malformation) -> bool;

#[test]
fn malformed_files_give_typed_errors_naming_the_file() {
    let images: Vec<u8> = vec![0; 4 * 6];
    let cases: Vec<(&str, Vec<u8>, IsExpected)> = vec![
        (
            "train-images-idx3-ubyte",
            b"\x89PNG\r\n\x1a\n".to_vec(),
            |m| matches!(m, Malformation::BadMagic { .. }),
        ),
        (
            "train-images-idx3-ubyte",
            vec![0, 0, 0x0d, 3, 0, 0, 0, 4],
            |m| matches!(m, Malformation::UnsupportedType(_)),
        ),
        ("train-images-idx3-ubyte", idx(&[4, 6], &images), |m| {
            matches!(
                m,
                Malformation::WrongRank {
                    expected: 3,
                    found: 2
                }
            )
        }),
        (
            "train-images-idx3-ubyte",
            idx(&[4, 3, 2], &images[..10]),
            |m| {
                matches!(
                    m,
                    Malformation::Truncated {
                        expected: 24,
                        found: 10
                    }
                )
            },
        ),
        (
            "train-images-idx3-ubyte",
            idx(&[4, 3, 2], &[images.clone(), vec![1]].concat()),
            |m| matches!(m, Malformation::TrailingData),
        ),
        ("train-images-idx3-ubyte", idx(&[0, 3, 2], &[]), |m| {
            matches!(m, Malformation::EmptyDimension)
        }),
        // 4 billion images in a file of a few bytes: refused before reading anything.
        (
            "train-images-idx3-ubyte",
            idx(&[4_000_000_000, 28, 28], &[1, 2, 3]),
            |m| matches!(m, Malformation::TooLarge { .. }),
        ),
        ("train-images-idx3-ubyte", vec![0, 0, 8], |m| {
            matches!(m, Malformation::Truncated { .. })
        }),
        ("train-images-idx3-ubyte", vec![0, 0, 8, 3, 0, 0], |m| {
            matches!(m, Malformation::Truncated { .. })
        }),
        ("train-labels-idx1-ubyte", idx(&[4], &[1, 2, 10, 3]), |m| {
            matches!(
                m,
                Malformation::LabelOutOfRange {
                    index: 2,
                    label: 10,
                    classes: 10
                }
            )
        }),
        (
            "train-labels-idx1-ubyte",
            idx(&[2, 2], &[1, 2, 3, 4]),
            |m| {
                matches!(
                    m,
                    Malformation::WrongRank {
                        expected: 1,
                        found: 2
                    }
                )
            },
        ),
        (
            "t10k-images-idx3-ubyte",
            [&gzip(&idx(&[4, 3, 2], &images))[..10], &[0xff; 8][..]].concat(),
            |m| matches!(m, Malformation::Corrupt(_) | Malformation::Truncated { .. }),
        ),
    ];
    let count = cases.len();
    for (file, bytes, expected) in cases {
        let m = malformation(error_with(file, bytes));
        assert!(expected(&m), "{file}: unexpected {m:?}");
    }
    assert_eq!(count, 12);
}

#[test]
fn image_and_label_counts_must_agree() {
    let err = error_with("train-labels-idx1-ubyte", idx(&[3], &[1, 2, 3]));
    assert!(
        matches!(
            err,
            DataError::CountMismatch {
                image_count: 4,
                label_count: 3,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn explicit_folder_missing_a_file_names_it_and_never_downloads() {
    let dir = tempfile::tempdir().unwrap();
    write_set(dir.path(), 2, true);
    std::fs::remove_file(dir.path().join("t10k-labels-idx1-ubyte.gz")).unwrap();
    let err = load(DatasetKind::Mnist, Some(dir.path())).unwrap_err();
    assert!(matches!(err, DataError::Missing { .. }), "{err}");
    assert!(err.to_string().contains("t10k-labels-idx1-ubyte"), "{err}");
    let empty = tempfile::tempdir().unwrap();
    let err = load(DatasetKind::Mnist, Some(&empty.path().join("nowhere"))).unwrap_err();
    assert!(err.to_string().contains("nowhere"), "{err}");
}
