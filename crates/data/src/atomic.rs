//! Writing a file so that a crash leaves either the old file or the whole new one.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

/// Writes `bytes` to a temporary file beside `path`, flushes it to disk and renames
/// it over `path`. On any error the temporary file is removed and `path` is untouched.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomically_with(path, |file| file.write_all(bytes))
}

/// [`write_atomically`] with the contents written by `write` (which may fail part way,
/// as a full disk does).
fn write_atomically_with(
    path: &Path,
    write: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let mut builder = tempfile::Builder::new();
    // A temporary file is private (0600); the file it becomes gets the usual
    // permissions, as `File::create` would give it (0666 less the umask).
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let mut tmp = builder.tempfile_in(existing_folder_of(path)?)?;
    write(tmp.as_file_mut())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Checks, before hours of work, that a file can later be written at `path`: its
/// folder exists and takes a new file, and `path` is not a folder.
pub fn check_writable(path: &Path) -> io::Result<()> {
    if path.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::IsADirectory,
            "is a folder, not a file",
        ));
    }
    tempfile::NamedTempFile::new_in(existing_folder_of(path)?).map(drop)
}

/// The folder `path` is in, or an error saying why it cannot hold a file (in
/// place of the temporary file's error, which names the temporary file).
fn existing_folder_of(path: &Path) -> io::Result<&Path> {
    let folder = folder_of(path);
    match folder.try_exists()? {
        true if folder.is_dir() => Ok(folder),
        true => Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            format!("{} is not a folder", folder.display()),
        )),
        false => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("the folder {} does not exist", folder.display()),
        )),
    }
}

fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_write_that_fails_part_way_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        std::fs::write(&path, b"the previous model").unwrap();
        let full_disk = write_atomically_with(&path, |file| {
            file.write_all(b"half of a new mo")?;
            Err(io::Error::from_raw_os_error(28)) // ENOSPC
        })
        .unwrap_err();
        assert_eq!(full_disk.raw_os_error(), Some(28));
        assert_eq!(std::fs::read(&path).unwrap(), b"the previous model");
        assert_eq!(names_in(dir.path()), ["model.safetensors"]);
    }

    #[test]
    fn a_whole_write_replaces_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        std::fs::write(&path, b"old").unwrap();
        write_atomically(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(names_in(dir.path()), ["m"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let created = dir.path().join("created");
            std::fs::write(&created, b"").unwrap();
            let expected = std::fs::metadata(&created).unwrap().permissions().mode();
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(
                mode, expected,
                "not the permissions of a file made by File::create"
            );
        }
    }

    #[test]
    fn writability_is_checked_without_leaving_anything() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_writable(&dir.path().join("new.safetensors")).is_ok());
        assert!(check_writable(dir.path()).is_err());
        let missing = check_writable(&dir.path().join("missing/m.safetensors")).unwrap_err();
        assert!(
            missing.to_string().ends_with("missing does not exist"),
            "{missing}"
        );
        std::fs::write(dir.path().join("file"), b"").unwrap();
        let not_a_folder = check_writable(&dir.path().join("file/m.safetensors")).unwrap_err();
        assert!(
            not_a_folder.to_string().ends_with("file is not a folder"),
            "{not_a_folder}"
        );
        assert_eq!(names_in(dir.path()), ["file"]);
    }
}
