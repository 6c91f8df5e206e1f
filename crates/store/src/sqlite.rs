//! The embedded store: one SQLite database file (bundled SQLite, nothing to install).
//!
//! Durability: write-ahead log with `synchronous = FULL`, so a committed ingest survives a
//! crash or power loss and an interrupted one leaves no trace. Identity:
//! `PRAGMA application_id` marks the file as medret's, and `PRAGMA user_version` holds the
//! schema version that the migrations of [`crate::schema`] bring forward.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::error::{Result, StoreError};
use crate::schema::{kind_columns, kind_from_columns, validate_items, validate_kind};
use crate::{Case, CaseStore, ModelInfo, NewCase, StoreInfo};

/// "MDRT".
const APPLICATION_ID: i64 = 0x4D44_5254;

/// Schema migrations ([`crate::schema`]); entry `i` takes version `i` to `i + 1`.
fn migrations() -> Vec<String> {
    crate::schema::migrations(crate::schema::Dialect::Sqlite)
}

pub const SCHEMA_VERSION: u32 = crate::schema::VERSION;

pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
}

impl SqliteStore {
    fn db_err(&self, e: rusqlite::Error) -> StoreError {
        StoreError::Database {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// Opens (or creates) the store at `path`, migrating its schema forward.
    pub fn open(path: &Path) -> Result<Self> {
        let db = |e: rusqlite::Error| StoreError::Database {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let foreign = |reason: String| StoreError::Foreign {
            path: path.to_path_buf(),
            reason,
        };
        let existed = path.exists();
        let conn = Connection::open(path).map_err(db)?;
        // Another process writing (a second server on the same file) makes a write wait
        // for its turn instead of failing at once with "database is locked".
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(db)?;
        // A file that is not SQLite fails on the first read.
        let app: i64 = conn
            .query_row("PRAGMA application_id", [], |r| r.get(0))
            .map_err(|e| foreign(e.to_string()))?;
        let version: u32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(db)?;
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .map_err(db)?;
        if app != APPLICATION_ID && (tables > 0 || (existed && version > 0)) {
            return Err(foreign(format!(
                "an SQLite database of another application (application_id {app:#x})"
            )));
        }
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: path.to_path_buf(),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
        )
        .map_err(db)?;
        let mut store = SqliteStore {
            conn,
            path: path.to_path_buf(),
        };
        store.migrate(version)?;
        Ok(store)
    }

    fn migrate(&mut self, from: u32) -> Result<()> {
        for (v, sql) in migrations().iter().enumerate().skip(from as usize) {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| StoreError::Database {
                    path: self.path.clone(),
                    message: e.to_string(),
                })?;
            tx.execute_batch(sql)
                .and_then(|_| tx.pragma_update(None, "application_id", APPLICATION_ID))
                .and_then(|_| tx.pragma_update(None, "user_version", (v + 1) as i64))
                .and_then(|_| tx.commit())
                .map_err(|e| StoreError::Database {
                    path: self.path.clone(),
                    message: format!("migration to schema version {}: {e}", v + 1),
                })?;
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    /// One transaction: the model row (with `create`), the cases, the vectors and the
    /// generation counter, all or nothing.
    fn ingest_inner(
        &mut self,
        info: &ModelInfo,
        create: bool,
        items: &[(NewCase, Vec<u8>)],
    ) -> Result<Vec<u64>> {
        let model = info.name.as_str();
        validate_items(model, info, items)?;
        let hook = test_hook();
        let path = self.path.clone();
        let db = |e: rusqlite::Error| StoreError::Database {
            path: path.clone(),
            message: e.to_string(),
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        if create {
            let (kind, dim, metric) = kind_columns(&info.kind);
            tx.execute(
                "INSERT INTO models (name, kind, dim, metric, config_hash) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![info.name, kind, dim, metric, info.config_hash],
            )
            .map_err(db)?;
        }
        let mut ids = Vec::with_capacity(items.len());
        {
            let mut find = tx
                .prepare_cached("SELECT id FROM cases WHERE case_key = ?1")
                .map_err(db)?;
            let mut insert_case = tx
                .prepare_cached(
                    "INSERT INTO cases (case_key, path, labels, grade, patient_id, study) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(db)?;
            let mut insert_vec = tx
                .prepare_cached("INSERT INTO vectors (model, case_id, data) VALUES (?1, ?2, ?3)")
                .map_err(db)?;
            for (case, v) in items {
                let existing: Option<i64> = find
                    .query_row(params![case.key], |r| r.get(0))
                    .optional()
                    .map_err(db)?;
                let id = match existing {
                    Some(id) => id,
                    None => {
                        insert_case
                            .execute(params![
                                case.key,
                                case.path,
                                serde_json::to_string(&case.labels).expect("labels serialise"),
                                case.grade.map(i64::from),
                                case.patient_id,
                                serde_json::to_string(&case.study).expect("study serialises"),
                            ])
                            .map_err(db)?;
                        tx.last_insert_rowid()
                    }
                };
                match insert_vec.execute(params![model, id, v]) {
                    Ok(_) => {}
                    Err(rusqlite::Error::SqliteFailure(f, _))
                        if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                    {
                        // Dropping the transaction rolls everything back.
                        return Err(StoreError::Duplicate {
                            key: case.key.clone(),
                            model: model.into(),
                        });
                    }
                    Err(e) => return Err(db(e)),
                }
                ids.push(id as u64);
                if let Some(h) = &hook
                    && ids.len() == items.len().div_ceil(2)
                {
                    h.pause();
                }
            }
        }
        let g = bump_generation(&tx).map_err(db)?;
        {
            let mut log = tx
                .prepare_cached(
                    "INSERT INTO changes (generation, model, case_id, op) VALUES (?1, ?2, ?3, 'add')",
                )
                .map_err(db)?;
            for id in &ids {
                log.execute(params![g, model, *id as i64]).map_err(db)?;
            }
        }
        tx.commit().map_err(db)?;
        Ok(ids)
    }

    fn row_to_case(r: &rusqlite::Row<'_>) -> rusqlite::Result<Case> {
        let labels: String = r.get(3)?;
        let study: String = r.get(6)?;
        Ok(Case {
            id: r.get::<_, i64>(0)? as u64,
            key: r.get(1)?,
            path: r.get(2)?,
            labels: serde_json::from_str(&labels).unwrap_or_default(),
            grade: r.get::<_, Option<i64>>(4)?.map(|g| g as u8),
            patient_id: r.get(5)?,
            study: serde_json::from_str(&study).unwrap_or(serde_json::Value::Null),
        })
    }
}

/// Test hook for crash tests: with `MEDRET_TEST_INGEST_PAUSE=<file>` set, an ingest
/// halfway through its transaction creates `<file>` and sleeps, so a test can kill the
/// process at a moment known to lie inside the transaction. Only in builds with debug
/// assertions (the tests' builds): a release build has no sleep to trigger.
pub(crate) struct TestHook(PathBuf);

#[cfg(debug_assertions)]
pub(crate) fn test_hook() -> Option<TestHook> {
    std::env::var_os("MEDRET_TEST_INGEST_PAUSE").map(|p| TestHook(PathBuf::from(p)))
}

#[cfg(not(debug_assertions))]
pub(crate) fn test_hook() -> Option<TestHook> {
    None
}

impl TestHook {
    pub(crate) fn pause(&self) {
        let _ = std::fs::write(&self.0, b"in transaction");
        std::thread::sleep(std::time::Duration::from_secs(60));
    }
}

/// Raises the generation counter and trims the change log to its last
/// [`crate::CHANGE_LOG_GENERATIONS`] writes. Returns the new generation.
fn bump_generation(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<i64> {
    let g: i64 = tx.query_row("UPDATE generation SET n = n + 1 RETURNING n", [], |r| {
        r.get(0)
    })?;
    let floor = g - crate::CHANGE_LOG_GENERATIONS as i64;
    if floor > 0 {
        tx.execute("DELETE FROM changes WHERE generation <= ?1", params![floor])?;
        tx.execute(
            "UPDATE change_floor SET n = ?1 WHERE n < ?1",
            params![floor],
        )?;
    }
    Ok(g)
}

impl CaseStore for SqliteStore {
    fn add_model(&mut self, model: &ModelInfo) -> Result<()> {
        validate_kind(&model.kind)?;
        if let Ok(existing) = self.model(&model.name) {
            if existing == *model {
                return Ok(());
            }
            return Err(StoreError::ModelConflict {
                name: model.name.clone(),
                existing: serde_json::to_string(&existing).unwrap_or_default(),
            });
        }
        let (kind, dim, metric) = kind_columns(&model.kind);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| StoreError::Database {
                path: self.path.clone(),
                message: e.to_string(),
            })?;
        tx.execute(
            "INSERT INTO models (name, kind, dim, metric, config_hash) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![model.name, kind, dim, metric, model.config_hash],
        )
        .and_then(|_| bump_generation(&tx))
        .and_then(|_| tx.commit())
        .map_err(|e| StoreError::Database {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        Ok(())
    }

    fn model(&mut self, name: &str) -> Result<ModelInfo> {
        let row = self
            .conn
            .query_row(
                "SELECT kind, dim, metric, config_hash FROM models WHERE name = ?1",
                params![name],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, Option<String>>(2)?,
                        r.get::<_, String>(3)?,
                    ))
                },
            )
            .optional()
            .map_err(|e| self.db_err(e))?;
        let (kind, dim, metric, config_hash) =
            row.ok_or_else(|| StoreError::UnknownModel(name.to_string()))?;
        let kind = kind_from_columns(&kind, dim as usize, metric.as_deref());
        Ok(ModelInfo {
            name: name.to_string(),
            kind,
            config_hash,
        })
    }

    fn ingest(&mut self, model: &str, items: &[(NewCase, Vec<u8>)]) -> Result<Vec<u64>> {
        let info = self.model(model)?;
        self.ingest_inner(&info, false, items)
    }

    fn create_and_ingest(
        &mut self,
        model: &ModelInfo,
        items: &[(NewCase, Vec<u8>)],
    ) -> Result<Vec<u64>> {
        validate_kind(&model.kind)?;
        if let Ok(existing) = self.model(&model.name) {
            return Err(StoreError::ModelConflict {
                name: model.name.clone(),
                existing: serde_json::to_string(&existing.kind).unwrap_or_default(),
            });
        }
        self.ingest_inner(model, true, items)
    }

    fn delete(&mut self, key: &str) -> Result<bool> {
        let path = self.path.clone();
        let db = |e: rusqlite::Error| StoreError::Database {
            path: path.clone(),
            message: e.to_string(),
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let id: Option<i64> = tx
            .query_row(
                "SELECT id FROM cases WHERE case_key = ?1",
                params![key],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)?;
        let mut n = 0;
        if let Some(id) = id {
            let g = bump_generation(&tx).map_err(db)?;
            tx.execute(
                "INSERT INTO changes (generation, model, case_id, op) SELECT ?1, model, case_id, 'del' FROM vectors WHERE case_id = ?2",
                params![g, id],
            )
            .map_err(db)?;
            n = tx
                .execute("DELETE FROM cases WHERE id = ?1", params![id])
                .map_err(db)?;
        }
        tx.commit().map_err(db)?;
        Ok(n > 0)
    }

    fn vector(&mut self, model: &str, id: u64) -> Result<Option<Vec<u8>>> {
        self.model(model)?;
        self.conn
            .query_row(
                "SELECT data FROM vectors WHERE model = ?1 AND case_id = ?2",
                params![model, id as i64],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.db_err(e))
    }

    fn generation(&mut self) -> Result<u64> {
        self.conn
            .query_row("SELECT n FROM generation", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(|e| self.db_err(e))
    }

    fn case(&mut self, id: u64) -> Result<Option<Case>> {
        self.conn
            .query_row(
                "SELECT id, case_key, path, labels, grade, patient_id, study FROM cases WHERE id = ?1",
                params![id as i64],
                Self::row_to_case,
            )
            .optional()
            .map_err(|e| self.db_err(e))
    }

    fn case_by_key(&mut self, key: &str) -> Result<Option<Case>> {
        self.conn
            .query_row(
                "SELECT id, case_key, path, labels, grade, patient_id, study FROM cases WHERE case_key = ?1",
                params![key],
                Self::row_to_case,
            )
            .optional()
            .map_err(|e| self.db_err(e))
    }

    fn vectors(&mut self, model: &str) -> Result<Vec<(u64, Vec<u8>)>> {
        self.model(model)?;
        let mut st = self
            .conn
            .prepare("SELECT case_id, data FROM vectors WHERE model = ?1 ORDER BY case_id")
            .map_err(|e| self.db_err(e))?;
        let rows = st
            .query_map(params![model], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?))
            })
            .map_err(|e| self.db_err(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.db_err(e))
    }

    fn changes(
        &mut self,
        model: &str,
        after: u64,
        up_to: u64,
    ) -> Result<Option<Vec<crate::Change>>> {
        let floor: i64 = self
            .conn
            .query_row("SELECT n FROM change_floor", [], |r| r.get(0))
            .map_err(|e| self.db_err(e))?;
        if (after as i64) < floor {
            return Ok(None);
        }
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT c.generation, c.case_id, CASE c.op WHEN 'add' THEN v.data END
                 FROM changes c LEFT JOIN vectors v ON v.model = c.model AND v.case_id = c.case_id
                 WHERE c.model = ?1 AND c.generation > ?2 AND c.generation <= ?3
                 ORDER BY c.generation, c.rowid",
            )
            .map_err(|e| self.db_err(e))?;
        let rows = st
            .query_map(params![model, after as i64, up_to as i64], |r| {
                Ok(crate::Change {
                    generation: r.get::<_, i64>(0)? as u64,
                    case_id: r.get::<_, i64>(1)? as u64,
                    vector: r.get(2)?,
                })
            })
            .map_err(|e| self.db_err(e))?;
        let list = rows
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.db_err(e))?;
        Ok(Some(list))
    }

    fn setting(&mut self, name: &str) -> Result<Option<String>> {
        self.conn
            .query_row(
                "SELECT value FROM settings WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.db_err(e))
    }

    fn case_paths(&mut self) -> Result<Vec<(u64, String)>> {
        let mut st = self
            .conn
            .prepare("SELECT id, path FROM cases ORDER BY id")
            .map_err(|e| self.db_err(e))?;
        let rows = st
            .query_map([], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?))
            })
            .map_err(|e| self.db_err(e))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(|e| self.db_err(e))
    }

    fn paths_with_prefix(&mut self, prefix: &str) -> Result<std::collections::BTreeSet<String>> {
        let mut st = self
            .conn
            .prepare("SELECT path FROM cases WHERE substr(path, 1, ?2) = ?1")
            .map_err(|e| self.db_err(e))?;
        let rows = st
            .query_map(params![prefix, prefix.chars().count() as i64], |r| {
                r.get::<_, String>(0)
            })
            .map_err(|e| self.db_err(e))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(|e| self.db_err(e))
    }

    fn info(&mut self) -> Result<StoreInfo> {
        let cases: i64 = self
            .conn
            .query_row("SELECT count(*) FROM cases", [], |r| r.get(0))
            .map_err(|e| self.db_err(e))?;
        let names: Vec<String> = {
            let mut st = self
                .conn
                .prepare("SELECT name FROM models ORDER BY name")
                .map_err(|e| self.db_err(e))?;
            st.query_map([], |r| r.get(0))
                .map_err(|e| self.db_err(e))?
                .collect::<rusqlite::Result<_>>()
                .map_err(|e| self.db_err(e))?
        };
        let mut models = Vec::new();
        for n in names {
            let count: i64 = self
                .conn
                .query_row(
                    "SELECT count(*) FROM vectors WHERE model = ?1",
                    params![n],
                    |r| r.get(0),
                )
                .map_err(|e| self.db_err(e))?;
            models.push((self.model(&n)?, count as u64));
        }
        let size = |p: PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        Ok(StoreInfo {
            schema_version: SCHEMA_VERSION,
            cases: cases as u64,
            models,
            bytes_on_disk: size(self.path.clone()) + size(PathBuf::from(wal)),
        })
    }
}

/// Sets a pragma on a database file directly. For tests that need a store from "another
/// application" or "a newer medret"; not part of the store's interface.
#[doc(hidden)]
pub fn debug_pragma(path: &Path, pragma: &str, value: i64) -> rusqlite::Result<()> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, pragma, value)
}
