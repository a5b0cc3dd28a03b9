//! Atomic file writes: a reader never sees a half-written artefact.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::Path;

use crate::{Error, Result};

/// Writes `bytes` to `path` atomically: to a temporary file in the same directory, fsynced, then
/// renamed over `path` (a rename within one file system is atomic), then the directory is fsynced
/// so the rename itself survives a crash.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_parts(path, &[bytes])
}

/// [`write_atomic`] of the concatenation of `parts`, written one after the other (a large file
/// is never assembled in memory).
pub fn write_atomic_parts(path: &Path, parts: &[&[u8]]) -> Result<()> {
    let dir = parent_dir(path);
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    for bytes in parts {
        file.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
    }
    file.sync_all().map_err(|e| Error::io(&tmp, e))?;
    drop(file);
    fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    sync_dir(dir)
}

/// Fsyncs a directory, so renames and creations inside it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    sync_file(dir)
}

/// Fsyncs a file written by someone else's writer, so its bytes are on disk before a rename
/// publishes it.
pub fn sync_file(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(path, e))
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// XXH3, 64 bits (the `xxhash-rust` crate): a checksum to detect truncated or corrupted artefacts
/// and a key for caches (not a defence against tampering). It reads several gigabytes a second,
/// so checksumming a checkpoint costs little beside writing it.
pub fn checksum(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// The size and [`checksum`] of the file at `path`, read in blocks (a large file is never whole
/// in memory).
pub fn file_checksum(path: &Path) -> Result<(u64, u64)> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut block = vec![0u8; 1 << 20];
    let mut size = 0;
    loop {
        let n = file.read(&mut block).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            return Ok((size, hasher.digest()));
        }
        hasher.update(&block[..n]);
        size += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file read in blocks sums as its bytes do, across the block boundary.
    #[test]
    fn a_files_checksum_is_its_bytes_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let bytes: Vec<u8> = (0..(1usize << 20) + 4321)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let path = dir.path().join("part.bin");
        write_atomic(&path, &bytes).unwrap();
        assert_eq!(
            file_checksum(&path).unwrap(),
            (bytes.len() as u64, checksum(&bytes))
        );
    }
}
