//! numpy's `.npz` archives of `.npy` arrays of unsigned bytes (Keras' `mnist.npz`).

use crate::error::{excerpt, DataError, Malformation};
use crate::idx::{declared_len, read_declared, IdxArray};
use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::{Path, PathBuf};

const NPY_MAGIC: &[u8] = b"\x93NUMPY";
/// The largest npy header kerno accepts; numpy writes well under 1 KiB.
const MAX_HEADER: usize = 64 * 1024;

/// Reads the members `names` (without `.npy`) of the archive at `path`, in order.
pub fn read_members(path: &Path, names: &[&str]) -> Result<Vec<IdxArray>, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    read_archive(BufReader::new(file), path, names)
}

/// [`read_members`] from an archive in `reader`; `path` names it in errors.
pub fn read_archive(
    reader: impl Read + Seek,
    path: &Path,
    names: &[&str],
) -> Result<Vec<IdxArray>, DataError> {
    let mut archive = zip::ZipArchive::new(reader).map_err(|e| {
        DataError::malformed(
            path,
            Malformation::Corrupt(format!("not a zip archive: {e}")),
        )
    })?;
    names
        .iter()
        .map(|name| {
            let member = format!("{name}.npy");
            let entry = archive.by_name(&member).map_err(|e| match e {
                zip::result::ZipError::FileNotFound => {
                    DataError::malformed(path, Malformation::MissingMember(member.clone()))
                }
                other => DataError::malformed(path, Malformation::Corrupt(other.to_string())),
            })?;
            read_npy(entry, &member_path(path, &member))
        })
        .collect()
}

/// How an archive member is named in errors: `archive.npz/member.npy`.
fn member_path(archive: &Path, member: &str) -> PathBuf {
    archive.join(member)
}

/// Reads one `.npy` array of unsigned bytes in C order.
pub fn read_npy(mut reader: impl Read, path: &Path) -> Result<IdxArray, DataError> {
    let bad =
        |detail: &str| DataError::malformed(path, Malformation::BadHeader(detail.to_string()));
    let mut preamble = [0u8; 8];
    reader
        .read_exact(&mut preamble)
        .map_err(|_| bad("shorter than the npy preamble"))?;
    if &preamble[..6] != NPY_MAGIC {
        return Err(DataError::malformed(
            path,
            Malformation::BadMagic {
                found: preamble[..6].to_vec(),
            },
        ));
    }
    let header_len = match preamble[6] {
        1 => {
            let mut len = [0u8; 2];
            reader
                .read_exact(&mut len)
                .map_err(|_| bad("truncated header length"))?;
            u16::from_le_bytes(len) as usize
        }
        2 | 3 => {
            let mut len = [0u8; 4];
            reader
                .read_exact(&mut len)
                .map_err(|_| bad("truncated header length"))?;
            u32::from_le_bytes(len) as usize
        }
        v => return Err(bad(&format!("unknown npy version {v}"))),
    };
    if header_len > MAX_HEADER {
        return Err(bad(&format!("header of {header_len} bytes")));
    }
    let mut header = vec![0u8; header_len];
    reader
        .read_exact(&mut header)
        .map_err(|_| bad("truncated header"))?;
    let header = String::from_utf8(header).map_err(|_| bad("header is not text"))?;

    let descr = dict_value(&header, "descr").ok_or_else(|| bad("no 'descr'"))?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    if !matches!(descr, "|u1" | "<u1" | ">u1" | "u1") {
        return Err(DataError::malformed(
            path,
            Malformation::UnsupportedType(excerpt(descr)),
        ));
    }
    if dict_value(&header, "fortran_order").ok_or_else(|| bad("no 'fortran_order'"))? != "False" {
        return Err(bad("Fortran-ordered arrays are not supported"));
    }
    let shape = dict_value(&header, "shape").ok_or_else(|| bad("no 'shape'"))?;
    let dims = shape
        .trim_start_matches('(')
        .trim_end_matches(')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| bad(&format!("bad shape {}", excerpt(shape))))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if dims.contains(&0) {
        return Err(DataError::malformed(path, Malformation::EmptyDimension));
    }
    let declared = declared_len(&dims).map_err(|problem| DataError::malformed(path, problem))?;
    let data = read_declared(reader, declared, path)?;
    Ok(IdxArray { dims, data })
}

/// The text of `key`'s value in a Python dict literal such as numpy's npy header.
fn dict_value<'h>(header: &'h str, key: &str) -> Option<&'h str> {
    let quoted = [format!("'{key}'"), format!("\"{key}\"")];
    let at = quoted
        .iter()
        .find_map(|q| header.find(q.as_str()).map(|i| i + q.len()))?;
    let rest = header[at..].trim_start().strip_prefix(':')?.trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')')? + 1
    } else {
        rest.find([',', '}'])?
    };
    Some(rest[..end].trim())
}

#[cfg(test)]
mod tests {
    use super::dict_value;

    #[test]
    fn reads_numpy_header_values() {
        let h = "{'descr': '|u1', 'fortran_order': False, 'shape': (60000, 28, 28), }";
        assert_eq!(dict_value(h, "descr"), Some("'|u1'"));
        assert_eq!(dict_value(h, "fortran_order"), Some("False"));
        assert_eq!(dict_value(h, "shape"), Some("(60000, 28, 28)"));
        assert_eq!(dict_value(h, "missing"), None);
    }
}
