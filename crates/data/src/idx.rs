//! The IDX format of MNIST: big-endian header, then unsigned bytes; raw or gzip.

use crate::error::{DataError, Malformation};
use crate::MAX_ARRAY_BYTES;
use byteorder::{BigEndian, ReadBytesExt};
use flate2::read::MultiGzDecoder;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const UNSIGNED_BYTE: u8 = 0x08;

/// An n-dimensional array of bytes read from an IDX file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Reads an IDX file, gzip-compressed or not (told apart by its first bytes).
pub fn read_file(path: &Path) -> Result<IdxArray, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    read_any(BufReader::new(file), path)
}

/// [`read_file`] from `reader`, gzip-compressed or not; `path` names it in errors.
pub fn read_any(mut reader: impl BufRead, path: &Path) -> Result<IdxArray, DataError> {
    let head = reader.fill_buf().map_err(|e| DataError::io(path, e))?;
    if head.starts_with(&GZIP_MAGIC) {
        read(MultiGzDecoder::new(reader), path)
    } else {
        read(reader, path)
    }
}

/// Reads an IDX array from `reader`; `path` names it in errors.
pub fn read(mut reader: impl Read, path: &Path) -> Result<IdxArray, DataError> {
    let fail = |problem| DataError::malformed(path, problem);
    let mut magic = [0u8; 4];
    read_exact_or(&mut reader, &mut magic, path, 4)?;
    if magic[0] != 0 || magic[1] != 0 {
        return Err(fail(Malformation::BadMagic {
            found: magic.to_vec(),
        }));
    }
    if magic[2] != UNSIGNED_BYTE {
        return Err(fail(Malformation::UnsupportedType(format!(
            "0x{:02x}",
            magic[2]
        ))));
    }
    let rank = magic[3] as usize;
    let mut dims = Vec::with_capacity(rank);
    for i in 0..rank {
        let dim = reader.read_u32::<BigEndian>().map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => fail(Malformation::Truncated {
                expected: 4 * rank as u64,
                found: 4 * i as u64,
            }),
            _ => stream_error(path, e),
        })?;
        dims.push(dim as usize);
    }
    if dims.contains(&0) {
        return Err(fail(Malformation::EmptyDimension));
    }
    let declared = declared_len(&dims).map_err(fail)?;
    let data = read_declared(reader, declared, path)?;
    Ok(IdxArray { dims, data })
}

/// The bytes an array of `dims` holds, when within [`MAX_ARRAY_BYTES`]. A header may
/// carry 255 dimensions of 2^32 each, so the product is checked at every step.
pub(crate) fn declared_len(dims: &[usize]) -> Result<u64, Malformation> {
    let declared = dims
        .iter()
        .try_fold(1u128, |product, &d| product.checked_mul(d as u128));
    match declared {
        Some(len) if len <= MAX_ARRAY_BYTES as u128 => Ok(len as u64),
        _ => Err(Malformation::TooLarge {
            declared,
            limit: MAX_ARRAY_BYTES,
        }),
    }
}

/// Reads exactly `len` bytes and checks that nothing follows. The buffer grows with
/// the bytes that really arrive, so a lying header cannot force a large allocation.
pub(crate) fn read_declared(
    mut reader: impl Read,
    len: u64,
    path: &Path,
) -> Result<Vec<u8>, DataError> {
    let mut data = Vec::new();
    (&mut reader)
        .take(len)
        .read_to_end(&mut data)
        .map_err(|e| stream_error(path, e))?;
    if (data.len() as u64) < len {
        return Err(DataError::malformed(
            path,
            Malformation::Truncated {
                expected: len,
                found: data.len() as u64,
            },
        ));
    }
    let mut extra = [0u8; 1];
    match reader.read(&mut extra) {
        Ok(0) => Ok(data),
        Ok(_) => Err(DataError::malformed(path, Malformation::TrailingData)),
        Err(e) => Err(stream_error(path, e)),
    }
}

fn read_exact_or(
    reader: &mut impl Read,
    buf: &mut [u8],
    path: &Path,
    expected: u64,
) -> Result<(), DataError> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => {
                return Err(DataError::malformed(
                    path,
                    Malformation::Truncated {
                        expected,
                        found: filled as u64,
                    },
                ))
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(stream_error(path, e)),
        }
    }
    Ok(())
}

/// A read error: corrupt compressed data is a malformation, anything else is I/O.
fn stream_error(path: &Path, e: io::Error) -> DataError {
    match e.kind() {
        io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput | io::ErrorKind::UnexpectedEof => {
            DataError::malformed(path, Malformation::Corrupt(e.to_string()))
        }
        _ => DataError::io(path, e),
    }
}
