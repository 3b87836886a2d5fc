//! Typed errors for everything that can be wrong with a dataset file.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// What was wrong inside a file that could be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Malformation {
    /// The first bytes are not those of the expected format.
    BadMagic { found: Vec<u8> },
    /// An IDX element type other than unsigned bytes, or an npy dtype other than `u1`.
    UnsupportedType(String),
    /// The array has the wrong number of dimensions for what it should hold.
    WrongRank { expected: usize, found: usize },
    /// A dimension of size zero.
    EmptyDimension,
    /// The header declares more data than kerno will read (`declared` is `None`
    /// when the dimensions multiply past 2^128).
    TooLarge { declared: Option<u128>, limit: u64 },
    /// The file ends before the data the header declares.
    Truncated { expected: u64, found: u64 },
    /// Bytes follow the data the header declares.
    TrailingData,
    /// A label is not below the number of classes.
    LabelOutOfRange {
        index: usize,
        label: u8,
        classes: usize,
    },
    /// An npy header kerno cannot read.
    BadHeader(String),
    /// A member the archive must contain is missing.
    MissingMember(String),
    /// The compressed stream is corrupt.
    Corrupt(String),
}

impl fmt::Display for Malformation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Malformation::BadMagic { found } => {
                write!(f, "not a recognised file (starts with {found:02x?})")
            }
            Malformation::UnsupportedType(t) => write!(
                f,
                "unsupported element type {t} (kerno reads unsigned bytes)"
            ),
            Malformation::WrongRank { expected, found } => {
                write!(f, "has {found} dimensions, expected {expected}")
            }
            Malformation::EmptyDimension => write!(f, "has a dimension of size 0"),
            Malformation::TooLarge { declared, limit } => {
                let declared = declared.map_or_else(|| "over 2^128".to_string(), |d| d.to_string());
                write!(
                    f,
                    "header declares {declared} bytes of data, more than the {limit}-byte limit"
                )
            }
            Malformation::Truncated { expected, found } => {
                write!(
                    f,
                    "truncated: header declares {expected} bytes of data, found {found}"
                )
            }
            Malformation::TrailingData => write!(f, "has bytes after the data its header declares"),
            Malformation::LabelOutOfRange {
                index,
                label,
                classes,
            } => {
                write!(
                    f,
                    "label {label} at index {index} is out of range for {classes} classes"
                )
            }
            Malformation::BadHeader(detail) => write!(f, "bad npy header: {detail}"),
            Malformation::MissingMember(name) => write!(f, "archive has no member '{name}'"),
            Malformation::Corrupt(detail) => write!(f, "corrupt compressed data: {detail}"),
        }
    }
}

/// Any failure to find, fetch or read a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The I/O error is part of the message, not a `source()`: printed as a
    /// chain, it would otherwise appear twice.
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: io::Error },
    #[error("{}: {problem}", path.display())]
    Malformed {
        path: PathBuf,
        problem: Malformation,
    },
    #[error("{}: missing (the folder must hold {expected})", path.display())]
    Missing { path: PathBuf, expected: String },
    #[error("{images} holds {image_count} images but {labels} holds {label_count} labels")]
    CountMismatch {
        images: String,
        image_count: usize,
        labels: String,
        label_count: usize,
    },
    #[error("{dataset} not found; looked in {searched}{hint}")]
    NotFound {
        dataset: String,
        searched: String,
        hint: String,
    },
    #[error("{}: holds {found}, not {wanted} (their training labels tell them apart)", path.display())]
    WrongDataset {
        path: PathBuf,
        wanted: &'static str,
        found: &'static str,
    },
    /// A picture that is not one kerno can read as a digit.
    #[error("{}: {problem}", path.display())]
    Image { path: PathBuf, problem: String },
    #[error("{url}: {problem}")]
    Download { url: String, problem: String },
    #[error("{url}: SHA-256 of the content is {got}, expected {expected}; nothing was saved")]
    Checksum {
        url: String,
        expected: String,
        got: String,
    },
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, error: io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            error,
        }
    }

    pub(crate) fn malformed(path: impl Into<PathBuf>, problem: Malformation) -> Self {
        DataError::Malformed {
            path: path.into(),
            problem,
        }
    }
}

/// Text taken from a file, fit for a one-line message: control characters and
/// quotes escaped, and cut after 40 characters.
pub(crate) fn excerpt(text: &str) -> String {
    const MAX_CHARS: usize = 40;
    let escaped: String = text
        .chars()
        .take(MAX_CHARS)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().nth(MAX_CHARS).is_some() {
        format!("{escaped}…")
    } else {
        escaped
    }
}
