//! Crash-safe file writes.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::ShardError;

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Write `bytes` to `path` so that readers see either the old file or the whole new one:
/// write `path.tmp`, fsync it, rename over `path`, fsync the directory.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), ShardError> {
    let tmp = tmp_path(path);
    let mut f = std::fs::File::create(&tmp).map_err(|e| ShardError::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| ShardError::io(&tmp, e))?;
    f.sync_all().map_err(|e| ShardError::io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| ShardError::io(path, e))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Directory fsync makes the rename durable; not all filesystems support it.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Remove a leftover temporary file of `path` from an interrupted write.
pub fn remove_stale_tmp(path: &Path) -> Result<(), ShardError> {
    let tmp = tmp_path(path);
    match std::fs::remove_file(&tmp) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ShardError::io(&tmp, e)),
    }
}

pub fn sha256_file(path: &Path) -> Result<String, ShardError> {
    let bytes = std::fs::read(path).map_err(|e| ShardError::io(path, e))?;
    Ok(envsynth_core::hash::sha256_id(&bytes))
}
