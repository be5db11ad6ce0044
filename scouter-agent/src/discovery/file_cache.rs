//! Facts read from files (an interpreter's version, a library's linkage), kept per file
//! identity: every process of an interpreter reaches the same files, through its own
//! /proc/PID/root path, and reading a 20 MB libpython per process would be wasteful.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;

/// (device, inode, modification time): a file's identity across paths and mount namespaces,
/// changed by an update in place.
pub type FileIdentity = (u64, u64, i64);

pub fn identity(path: &Path) -> io::Result<FileIdentity> {
    let meta = std::fs::metadata(path)?;
    Ok((meta.dev(), meta.ino(), meta.mtime()))
}

/// A process-wide cache from file identity to `T`, usable as a `static`.
pub struct FileCache<T> {
    entries: Mutex<Option<HashMap<FileIdentity, T>>>,
}

impl<T: Clone> FileCache<T> {
    pub const fn new() -> Self {
        Self { entries: Mutex::new(None) }
    }

    pub fn get(&self, file: FileIdentity) -> Option<T> {
        self.entries.lock().ok()?.as_ref()?.get(&file).cloned()
    }

    pub fn insert(&self, file: FileIdentity, value: T) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.get_or_insert_with(HashMap::new).insert(file, value);
        }
    }
}
