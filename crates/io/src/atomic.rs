//! Atomic file replacement: readers see the old file or the complete new one, never a mix,
//! even if the process dies mid-write.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// Makes temporary names unique among the writes of one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Atomically replaces (or creates) `path` with `bytes`. See [`atomic_write_with`].
///
/// # Errors
/// [`Error::Io`] naming `path` when any step fails; see [`atomic_write_with`].
pub fn atomic_write(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    atomic_write_with(path, |w| w.write_all(bytes))
}

/// Refuses to replace anything at `path` that is not a regular file: a symbolic link (checked
/// without following it), a directory, a device, a FIFO or a socket. Replacing one by rename
/// would destroy it (`--output /dev/null` run as root) or write where a user did not look.
pub fn check_replaceable(path: &Path) -> std::io::Result<()> {
    let kind = match fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
        Ok(m) if m.file_type().is_file() => return Ok(()),
        Ok(m) if m.file_type().is_symlink() => "a symbolic link",
        Ok(m) if m.is_dir() => "a directory",
        Ok(_) => "a device, FIFO or socket",
    };
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("it is {kind}, not a regular file; refusing to replace it"),
    ))
}

/// Atomically replaces (or creates) `path` with what `write` writes, and returns what `write`
/// returns. Anything at `path` other than a regular file is refused ([`check_replaceable`]).
///
/// The data goes to `<name>.tmp-<pid>-<n>` in the same directory, which is flushed and
/// fsynced, then renamed over `path`; finally the directory is fsynced so the rename itself is
/// durable. If `write` or any step fails, the temporary file is removed.
///
/// # Errors
/// [`Error::Io`] naming `path` when `write` or any file-system step fails. Up to the rename
/// the target is left untouched; only the final directory fsync can fail after it.
pub fn atomic_write_with<T>(
    path: impl AsRef<Path>,
    write: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<T>,
) -> Result<T> {
    let path = path.as_ref();
    let name = path.file_name().ok_or_else(|| {
        Error::io(path, std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path names no file"))
    })?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut temp_name = name.to_os_string();
    temp_name.push(format!(".tmp-{}-{}", std::process::id(), TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)));
    let temp = dir.join(temp_name);
    check_replaceable(path).map_err(|e| Error::io(path, e))?;

    let written = write_synced(&temp, write).and_then(|value| {
        fs::rename(&temp, path)?;
        Ok(value)
    });
    match written {
        Ok(value) => {
            sync_dir(dir).map_err(|e| Error::io(dir, e))?;
            Ok(value)
        }
        Err(e) => {
            // Best effort: the temporary may not exist, and the write error matters more.
            let _ = fs::remove_file(&temp);
            Err(Error::io(path, e))
        }
    }
}

/// Creates `temp`, lets `write` fill it, then flushes and fsyncs it.
fn write_synced<T>(temp: &Path, write: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<T>) -> std::io::Result<T> {
    let file = OpenOptions::new().write(true).create_new(true).open(temp)?;
    let mut writer = BufWriter::new(file);
    let value = write(&mut writer)?;
    let file = writer.into_inner().map_err(std::io::IntoInnerError::into_error)?;
    file.sync_all()?;
    Ok(value)
}

/// Makes a rename in `dir` durable.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Directories cannot be opened for syncing on this platform; the rename is as durable as it gets.
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn writes_and_replaces_leaving_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.json");
        atomic_write(&path, b"first").unwrap();
        atomic_write(&path, b"second, longer").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second, longer");
        let n = atomic_write_with(&path, |w| {
            w.write_all(b"abc")?;
            Ok(3)
        })
        .unwrap();
        assert_eq!(n, 3);
        assert_eq!(fs::read(&path).unwrap(), b"abc");
        assert_eq!(entries(dir.path()), ["out.json"]);
    }

    #[test]
    fn failed_write_keeps_the_old_file_and_removes_the_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        atomic_write(&path, b"old").unwrap();
        let err = atomic_write_with(&path, |w| {
            w.write_all(b"partial")?;
            Err::<(), _>(std::io::Error::other("disk on fire"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("out.bin") && err.to_string().contains("disk on fire"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert_eq!(entries(dir.path()), ["out.bin"]);
    }

    #[test]
    fn bad_targets_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let err = atomic_write(dir.path().join("no_such_dir/x"), b"x").unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
        let err = atomic_write("/", b"x").unwrap_err();
        assert!(err.to_string().contains("names no file"), "{err}");
        // A directory in the way of the rename.
        fs::create_dir(dir.path().join("taken")).unwrap();
        assert!(atomic_write(dir.path().join("taken"), b"x").is_err());
        assert_eq!(entries(dir.path()), ["taken"]);
    }

    /// Links, FIFOs and devices are never replaced; the link's target and
    /// the device stay as they were.
    #[cfg(unix)]
    #[test]
    fn only_regular_files_are_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target.bin");
        fs::write(&target, b"keep").unwrap();
        let link = dir.path().join("link.bin");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = atomic_write(&link, b"x").unwrap_err().to_string();
        assert!(err.contains("symbolic link") && err.contains("link.bin"), "{err}");
        assert_eq!(fs::read(&target).unwrap(), b"keep");
        assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        let err = atomic_write("/dev/null", b"x").unwrap_err().to_string();
        assert!(err.contains("device"), "{err}");
        let err = atomic_write(dir.path(), b"x").unwrap_err().to_string();
        assert!(err.contains("directory") || err.contains("names no file"), "{err}");
    }
}
