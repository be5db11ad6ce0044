//! Opening the store read-only, for `traces list|show`, possibly as a user who may not write the
//! store's directory (a non-root user reading /var/lib/scouter-agent).
//!
//! In WAL mode a reader needs the shared-memory index beside the database (`traces.db-shm`).
//! While the agent runs that file exists and SQLite maps it read-only, so anyone who can read the
//! database can read the store. Once the agent has stopped, SQLite has removed it, and a reader
//! that may not create it fails. The database file then holds every committed span (the WAL is
//! gone or empty, so no write is pending), and it is read as immutable: without locks or index.

use std::path::Path;

use rusqlite::{Connection, ErrorCode, OpenFlags};

use super::error::{AtPath, StoreError};
use super::schema;

pub(super) fn connect(path: &Path) -> Result<Connection, StoreError> {
    ensure_readable(path)?;
    match connect_shared(path) {
        Err(error) if cannot_create_wal_index(&error) && wal_is_empty(path) => {
            // If even that fails, the first error says more than one about an internal URI.
            immutable_uri(path).and_then(|uri| connect_immutable(path, &uri).ok()).ok_or(error)
        }
        result => result,
    }
}

/// SQLite reports a missing or unreadable file as "unable to open database file": say which.
fn ensure_readable(path: &Path) -> Result<(), StoreError> {
    match std::fs::File::open(path) {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            Err(StoreError::Missing { path: path.to_owned() })
        }
        Err(source) => Err(StoreError::Unreadable { path: path.to_owned(), source }),
    }
}

fn connect_shared(path: &Path) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).at(path)?;
    // SQLite opens files lazily: the first query is what fails without the WAL index.
    schema::configure_reader(&conn, path)?;
    Ok(conn)
}

fn connect_immutable(path: &Path, uri: &str) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(uri, flags).at(path)?;
    schema::configure_reader(&conn, path)?;
    Ok(conn)
}

fn cannot_create_wal_index(error: &StoreError) -> bool {
    match error {
        StoreError::Sqlite { source: rusqlite::Error::SqliteFailure(failure, _), .. } => {
            failure.extended_code == rusqlite::ffi::SQLITE_READONLY_DIRECTORY || failure.code == ErrorCode::CannotOpen
        }
        _ => false,
    }
}

fn wal_is_empty(path: &Path) -> bool {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    match std::fs::metadata(&wal) {
        Ok(metadata) => metadata.len() == 0,
        Err(error) => error.kind() == std::io::ErrorKind::NotFound,
    }
}

/// `file:PATH?immutable=1`, with the characters that URIs reserve escaped. None for a path that
/// is not UTF-8, which SQLite URIs cannot carry.
fn immutable_uri(path: &Path) -> Option<String> {
    let mut uri = String::from("file:");
    for c in path.to_str()?.chars() {
        match c {
            '%' => uri.push_str("%25"),
            '?' => uri.push_str("%3F"),
            '#' => uri.push_str("%23"),
            _ => uri.push(c),
        }
    }
    uri.push_str("?immutable=1");
    Some(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_escape_reserved_characters() {
        assert_eq!(
            immutable_uri(Path::new("/var/lib/a%b?c#d.db")).unwrap(),
            "file:/var/lib/a%25b%3Fc%23d.db?immutable=1"
        );
    }

    #[test]
    fn the_immutable_fallback_reads_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("odd ?#% name.db");
        let config =
            crate::config::StoreConfig { path: path.clone(), max_age: std::time::Duration::MAX, max_bytes: u64::MAX };
        drop(super::super::TraceStore::open(&config).unwrap());
        let conn = connect_immutable(&path, &immutable_uri(&path).unwrap()).unwrap();
        let spans: i64 = conn.query_row("SELECT count(*) FROM spans", [], |row| row.get(0)).unwrap();
        assert_eq!(spans, 0);
    }
}
