//! Opening a store by path or URL.

use std::path::Path;

use medret_store::{CaseStore, PgStore, SqliteStore};

use crate::error::Result;

/// True for `postgres://` and `postgresql://` URLs.
pub fn is_url(path: &Path) -> bool {
    let s = path.to_string_lossy();
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

/// The store as messages may show it: a URL loses its password.
pub fn shown(path: &Path) -> String {
    medret_store::postgres::redact(&path.to_string_lossy())
}

/// A SQLite file (created if absent), or a PostgreSQL URL with the archive in schema
/// `$MEDRET_PG_SCHEMA` (default `medret`).
pub fn open_store(path: &Path) -> Result<Box<dyn CaseStore + Send>> {
    if is_url(path) {
        let schema = std::env::var("MEDRET_PG_SCHEMA").unwrap_or_else(|_| "medret".into());
        return Ok(Box::new(PgStore::open(&path.to_string_lossy(), &schema)?));
    }
    Ok(Box::new(SqliteStore::open(path)?))
}
