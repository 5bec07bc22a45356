//! Crash-safe file writes.

use std::path::Path;

use envsynth_core::files::tmp_path;

use crate::ShardError;

/// Write `bytes` to `path` so that readers see either the old file or the whole new one
/// (see `envsynth_core::files::atomic_write`).
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), ShardError> {
    envsynth_core::files::atomic_write(path, bytes).map_err(|e| ShardError::io(path, e))
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
