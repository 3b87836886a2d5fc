//! Fetching MNIST and Fashion-MNIST from their public mirrors: each file's content is checked against
//! its known SHA-256 before it is written, and written atomically.

use crate::error::DataError;
use crate::write_atomically;
use crate::DatasetKind;
use crate::MAX_ARRAY_BYTES;
use flate2::read::MultiGzDecoder;
use sha2::{Digest, Sha256};
use std::io::{self, Read};
use std::path::Path;
use std::time::Duration;

/// The most bytes one download may bring (the largest MNIST file is about 10 MB).
const MAX_DOWNLOAD: u64 = 64 << 20;

/// A file to fetch and the SHA-256 of its content (after gunzip, for `.gz` files).
#[derive(Clone, Copy, Debug)]
pub struct RemoteFile {
    pub name: &'static str,
    pub sha256: &'static str,
}

/// MNIST's four files with the SHA-256 of their uncompressed content.
pub const MNIST_FILES: [RemoteFile; 4] = [
    RemoteFile {
        name: "train-images-idx3-ubyte.gz",
        sha256: "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    },
    RemoteFile {
        name: "train-labels-idx1-ubyte.gz",
        sha256: "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    },
    RemoteFile {
        name: "t10k-images-idx3-ubyte.gz",
        sha256: "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    },
    RemoteFile {
        name: "t10k-labels-idx1-ubyte.gz",
        sha256: "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
];

/// Public MNIST mirrors, tried in order.
pub const MNIST_MIRRORS: [&str; 2] = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
];

/// Fashion-MNIST's four files with the SHA-256 of their uncompressed content.
pub const FASHION_MNIST_FILES: [RemoteFile; 4] = [
    RemoteFile {
        name: "train-images-idx3-ubyte.gz",
        sha256: "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    },
    RemoteFile {
        name: "train-labels-idx1-ubyte.gz",
        sha256: "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    },
    RemoteFile {
        name: "t10k-images-idx3-ubyte.gz",
        sha256: "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    },
    RemoteFile {
        name: "t10k-labels-idx1-ubyte.gz",
        sha256: "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
];

/// Public Fashion-MNIST mirrors (Keras' own first), tried in order.
pub const FASHION_MNIST_MIRRORS: [&str; 2] = [
    "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
];

/// The files of `kind` and the mirrors that serve them.
pub fn remote(kind: DatasetKind) -> (&'static [RemoteFile], &'static [&'static str]) {
    match kind {
        DatasetKind::Mnist => (&MNIST_FILES, &MNIST_MIRRORS),
        DatasetKind::FashionMnist => (&FASHION_MNIST_FILES, &FASHION_MNIST_MIRRORS),
    }
}

/// Downloads every file of `files` that `dest` lacks, trying each mirror in turn.
/// A file is written (atomically) only once its content matches its SHA-256.
pub fn fetch_missing(files: &[RemoteFile], mirrors: &[&str], dest: &Path) -> Result<(), DataError> {
    for file in files {
        if dest.join(file.name).is_file() {
            continue;
        }
        std::fs::create_dir_all(dest).map_err(|e| DataError::io(dest, e))?;
        let mut last_error = None;
        for mirror in mirrors {
            let url = format!("{}{}", mirror, file.name);
            eprintln!("downloading {url}");
            match fetch_verified(&url, file.sha256) {
                Ok(body) => {
                    let path = dest.join(file.name);
                    write_atomically(&path, &body).map_err(|e| DataError::io(path, e))?;
                    last_error = None;
                    break;
                }
                Err(e) => last_error = Some(e),
            }
        }
        if let Some(e) = last_error {
            return Err(e);
        }
    }
    Ok(())
}

fn fetch_verified(url: &str, sha256: &str) -> Result<Vec<u8>, DataError> {
    let fail = |problem: String| DataError::Download {
        url: url.to_string(),
        problem,
    };
    let response = ureq::get(url)
        .timeout(Duration::from_secs(120))
        .call()
        .map_err(|e| fail(request_failure(e)))?;
    let mut body = Vec::new();
    response
        .into_reader()
        .take(MAX_DOWNLOAD + 1)
        .read_to_end(&mut body)
        .map_err(|e| fail(e.to_string()))?;
    if body.len() as u64 > MAX_DOWNLOAD {
        return Err(fail(format!("larger than {MAX_DOWNLOAD} bytes")));
    }
    let got = content_sha256(&body).map_err(|e| fail(format!("corrupt gzip data: {e}")))?;
    if got != sha256 {
        return Err(DataError::Checksum {
            url: url.to_string(),
            expected: sha256.to_string(),
            got,
        });
    }
    Ok(body)
}

/// What went wrong with a request, without its URL (the error names it first).
fn request_failure(error: ureq::Error) -> String {
    match error {
        ureq::Error::Status(code, response) => {
            format!("HTTP status {code} {}", response.status_text())
        }
        ureq::Error::Transport(transport) => {
            let detail = |text: Option<String>| text.map(|t| format!(": {t}")).unwrap_or_default();
            let message = detail(transport.message().map(str::to_string));
            let cause = detail(std::error::Error::source(&transport).map(ToString::to_string));
            format!("{}{message}{cause}", transport.kind())
        }
    }
}

/// SHA-256 of the bytes, gunzipped first when they are gzip.
fn content_sha256(bytes: &[u8]) -> io::Result<String> {
    let mut hasher = Sha256::new();
    if bytes.starts_with(&[0x1f, 0x8b]) {
        io::copy(
            &mut MultiGzDecoder::new(bytes).take(MAX_ARRAY_BYTES + 1024),
            &mut hasher,
        )?;
    } else {
        hasher.update(bytes);
    }
    Ok(format!("{:x}", hasher.finalize()))
}
