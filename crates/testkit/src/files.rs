//! Dataset files built in memory: IDX (raw or gzip), numpy `.npy` and Keras-style `.npz`.

use flate2::write::GzEncoder;
use std::io::{Cursor, Write};

/// An IDX file of unsigned bytes with the given dimensions and data.
pub fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    dims.iter()
        .for_each(|d| out.extend_from_slice(&d.to_be_bytes()));
    out.extend_from_slice(data);
    out
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).expect("writing to memory");
    enc.finish().expect("writing to memory")
}

/// A version-1 `.npy` array of unsigned bytes; `shape` as numpy writes it, `(2, 3)`.
pub fn npy(shape: &str, data: &[u8]) -> Vec<u8> {
    let header = format!("{{'descr': '|u1', 'fortran_order': False, 'shape': {shape}, }}");
    let mut header = header.into_bytes();
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(b' ');
    }
    header.push(b'\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(data);
    out
}

/// A zip archive (deflated) of the named members.
pub fn npz(members: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in members {
        zip.start_file(*name, options).expect("writing to memory");
        zip.write_all(bytes).expect("writing to memory");
    }
    zip.finish().expect("writing to memory").into_inner()
}

/// A Keras-style `mnist.npz` of `n` train and one test image of 2×2 pixels.
pub fn mnist_npz(n: u32) -> Vec<u8> {
    let images: Vec<u8> = (0..n * 4).map(|i| (i * 37 % 256) as u8).collect();
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    npz(&[
        ("x_train.npy", npy(&format!("({n}, 2, 2)"), &images)),
        ("y_train.npy", npy(&format!("({n},)"), &labels)),
        ("x_test.npy", npy("(1, 2, 2)", &[9, 9, 9, 9])),
        ("y_test.npy", npy("(1,)", &[0])),
    ])
}
