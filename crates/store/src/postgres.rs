//! The same archive on PostgreSQL, for archives that outgrow one file or that several
//! servers share. Each store lives in its own schema (`--pg-schema`, default `medret`),
//! so one database can hold several archives. Versioning: the `medret_meta` table holds
//! the schema version, and the migrations of [`crate::schema`] bring it forward inside a transaction.
//!
//! Durability is PostgreSQL's: an ingest is one transaction, committed or not.

use ::postgres::types::ToSql;
use ::postgres::{Client, NoTls};

use crate::error::{Result, StoreError};
use crate::{Case, CaseStore, ModelInfo, NewCase, StoreInfo};

/// Schema migrations ([`crate::schema`]); entry `i` takes version `i` to `i + 1`.
fn migrations() -> Vec<String> {
    crate::schema::migrations(crate::schema::Dialect::Postgres)
}

pub const SCHEMA_VERSION: u32 = crate::schema::VERSION;

pub struct PgStore {
    client: Client,
    /// `url#schema`, for messages (the password is never part of it).
    name: String,
}

fn valid_schema(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

/// The connection string without its password, for messages: `password=...` pairs are
/// dropped and `postgresql://user:secret@host` becomes `postgresql://user@host`.
pub fn redact(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((creds, host)) = rest.split_once('@') {
            let user = creds.split(':').next().unwrap_or("");
            return format!("{scheme}://{user}@{host}");
        }
        return url.to_string();
    }
    url.split_whitespace()
        .filter(|kv| !kv.starts_with("password="))
        .collect::<Vec<_>>()
        .join(" ")
}

impl PgStore {
    /// Connects (`host=... user=... dbname=...` or a `postgresql://` URL) and opens or
    /// creates the archive in `schema`.
    pub fn open(url: &str, schema: &str) -> Result<Self> {
        let name = format!("{}#{schema}", redact(url));
        let db = |e: ::postgres::Error| StoreError::Database {
            path: name.clone().into(),
            message: e.to_string(),
        };
        if !valid_schema(schema) {
            return Err(StoreError::InvalidCase(format!(
                "schema name `{schema}`: use lowercase letters, digits and _"
            )));
        }
        let mut client = Client::connect(url, NoTls).map_err(db)?;
        client
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {schema}; SET search_path TO {schema};"
            ))
            .map_err(db)?;
        let mut tx = client.transaction().map_err(db)?;
        // One migrator at a time across servers sharing the database.
        tx.batch_execute("SELECT pg_advisory_xact_lock(1296323156)") // "MDRT"
            .map_err(db)?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS medret_meta (version INTEGER NOT NULL)")
            .map_err(db)?;
        let version: Option<i32> = tx
            .query_opt("SELECT version FROM medret_meta", &[])
            .map_err(db)?
            .map(|r| r.get(0));
        let version = version.unwrap_or(0) as u32;
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: name.into(),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        if version == 0 {
            let other: i64 = tx
                .query_one(
                    "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1 AND table_name <> 'medret_meta'",
                    &[&schema],
                )
                .map_err(db)?
                .get(0);
            if other > 0 {
                return Err(StoreError::Foreign {
                    path: name.into(),
                    reason: format!("schema `{schema}` holds tables of another application"),
                });
            }
        }
        for sql in &migrations()[version as usize..] {
            tx.batch_execute(sql).map_err(db)?;
        }
        tx.batch_execute("DELETE FROM medret_meta").map_err(db)?;
        tx.execute(
            "INSERT INTO medret_meta (version) VALUES ($1)",
            &[&(SCHEMA_VERSION as i32)],
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(PgStore { client, name })
    }

    fn db_err(&self, e: ::postgres::Error) -> StoreError {
        StoreError::Database {
            path: self.name.clone().into(),
            message: e.to_string(),
        }
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
        crate::schema::validate_items(model, info, items)?;
        let name = self.name.clone();
        let db = |e: ::postgres::Error| StoreError::Database {
            path: name.clone().into(),
            message: e.to_string(),
        };
        let mut tx = self.client.transaction().map_err(db)?;
        let find = tx
            .prepare("SELECT id FROM cases WHERE case_key = $1")
            .map_err(db)?;
        let insert_case = tx
            .prepare("INSERT INTO cases (case_key, path, labels, grade, patient_id, study) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id")
            .map_err(db)?;
        let insert_vec = tx
            .prepare("INSERT INTO vectors (model, case_id, data) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .map_err(db)?;
        if create {
            insert_model(&mut tx, info).map_err(db)?;
        }
        let mut ids = Vec::with_capacity(items.len());
        for (case, v) in items {
            let id: i64 = match tx.query_opt(&find, &[&case.key]).map_err(db)? {
                Some(r) => r.get(0),
                None => tx
                    .query_one(
                        &insert_case,
                        &[
                            &case.key as &(dyn ToSql + Sync),
                            &case.path,
                            &serde_json::to_string(&case.labels).expect("labels serialise"),
                            &case.grade.map(i16::from),
                            &case.patient_id,
                            &serde_json::to_string(&case.study).expect("study serialises"),
                        ],
                    )
                    .map_err(db)?
                    .get(0),
            };
            if tx
                .execute(&insert_vec, &[&model as &(dyn ToSql + Sync), &id, v])
                .map_err(db)?
                == 0
            {
                // Dropping the transaction rolls everything back.
                return Err(StoreError::Duplicate {
                    key: case.key.clone(),
                    model: model.into(),
                });
            }
            ids.push(id as u64);
        }
        let g = bump(&mut tx).map_err(db)?;
        let id_list: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
        tx.execute(
            "INSERT INTO changes (generation, model, case_id, op) SELECT $1, $2, unnest($3::BIGINT[]), 'add'",
            &[&g, &model, &id_list],
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(ids)
    }

    fn row_to_case(r: &::postgres::Row) -> Case {
        let labels: String = r.get(3);
        let study: String = r.get(6);
        Case {
            id: r.get::<_, i64>(0) as u64,
            key: r.get(1),
            path: r.get(2),
            labels: serde_json::from_str(&labels).unwrap_or_default(),
            grade: r.get::<_, Option<i16>>(4).map(|g| g as u8),
            patient_id: r.get(5),
            study: serde_json::from_str(&study).unwrap_or(serde_json::Value::Null),
        }
    }
}

/// Raises the generation counter and trims the change log to its last
/// [`crate::CHANGE_LOG_GENERATIONS`] writes. Returns the new generation. The row lock it
/// takes orders the writers: generation `g` commits before `g + 1` can be taken.
fn bump(tx: &mut ::postgres::Transaction<'_>) -> std::result::Result<i64, ::postgres::Error> {
    let g: i64 = tx
        .query_one("UPDATE generation SET n = n + 1 RETURNING n", &[])?
        .get(0);
    let floor = g - crate::CHANGE_LOG_GENERATIONS as i64;
    if floor > 0 {
        tx.execute("DELETE FROM changes WHERE generation <= $1", &[&floor])?;
        tx.execute("UPDATE change_floor SET n = $1 WHERE n < $1", &[&floor])?;
    }
    Ok(g)
}

fn insert_model(
    tx: &mut ::postgres::Transaction<'_>,
    model: &ModelInfo,
) -> std::result::Result<u64, ::postgres::Error> {
    let (kind, dim, metric) = crate::schema::kind_columns(&model.kind);
    tx.execute(
        "INSERT INTO models (name, kind, dim, metric, config_hash) VALUES ($1, $2, $3, $4, $5)",
        &[
            &model.name as &(dyn ToSql + Sync),
            &kind,
            &(dim as i32),
            &metric,
            &model.config_hash,
        ],
    )
}

impl CaseStore for PgStore {
    fn add_model(&mut self, model: &ModelInfo) -> Result<()> {
        crate::schema::validate_kind(&model.kind)?;
        if let Ok(existing) = self.model(&model.name) {
            if existing == *model {
                return Ok(());
            }
            return Err(StoreError::ModelConflict {
                name: model.name.clone(),
                existing: serde_json::to_string(&existing).unwrap_or_default(),
            });
        }
        let name = self.name.clone();
        let db = |e: ::postgres::Error| StoreError::Database {
            path: name.clone().into(),
            message: e.to_string(),
        };
        let mut tx = self.client.transaction().map_err(db)?;
        insert_model(&mut tx, model).map_err(db)?;
        bump(&mut tx).map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(())
    }

    fn model(&mut self, name: &str) -> Result<ModelInfo> {
        let row = self
            .client
            .query_opt(
                "SELECT kind, dim, metric, config_hash FROM models WHERE name = $1",
                &[&name],
            )
            .map_err(|e| self.db_err(e))?
            .ok_or_else(|| StoreError::UnknownModel(name.to_string()))?;
        let kind: String = row.get(0);
        let dim = row.get::<_, i32>(1) as usize;
        let metric: Option<String> = row.get(2);
        Ok(ModelInfo {
            name: name.to_string(),
            kind: crate::schema::kind_from_columns(&kind, dim, metric.as_deref()),
            config_hash: row.get(3),
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
        crate::schema::validate_kind(&model.kind)?;
        if let Ok(existing) = self.model(&model.name) {
            return Err(StoreError::ModelConflict {
                name: model.name.clone(),
                existing: serde_json::to_string(&existing.kind).unwrap_or_default(),
            });
        }
        self.ingest_inner(model, true, items)
    }

    fn delete(&mut self, key: &str) -> Result<bool> {
        let name = self.name.clone();
        let db = |e: ::postgres::Error| StoreError::Database {
            path: name.clone().into(),
            message: e.to_string(),
        };
        let mut tx = self.client.transaction().map_err(db)?;
        let id: Option<i64> = tx
            .query_opt("SELECT id FROM cases WHERE case_key = $1", &[&key])
            .map_err(db)?
            .map(|r| r.get(0));
        let mut n = 0;
        if let Some(id) = id {
            let g = bump(&mut tx).map_err(db)?;
            tx.execute(
                "INSERT INTO changes (generation, model, case_id, op) SELECT $1, model, case_id, 'del' FROM vectors WHERE case_id = $2",
                &[&g, &id],
            )
            .map_err(db)?;
            n = tx
                .execute("DELETE FROM cases WHERE id = $1", &[&id])
                .map_err(db)?;
        }
        tx.commit().map_err(db)?;
        Ok(n > 0)
    }

    fn vector(&mut self, model: &str, id: u64) -> Result<Option<Vec<u8>>> {
        self.model(model)?;
        Ok(self
            .client
            .query_opt(
                "SELECT data FROM vectors WHERE model = $1 AND case_id = $2",
                &[&model, &(id as i64)],
            )
            .map_err(|e| self.db_err(e))?
            .map(|r| r.get(0)))
    }

    fn generation(&mut self) -> Result<u64> {
        Ok(self
            .client
            .query_one("SELECT n FROM generation", &[])
            .map_err(|e| self.db_err(e))?
            .get::<_, i64>(0) as u64)
    }

    fn case(&mut self, id: u64) -> Result<Option<Case>> {
        Ok(self
            .client
            .query_opt(
                "SELECT id, case_key, path, labels, grade, patient_id, study FROM cases WHERE id = $1",
                &[&(id as i64)],
            )
            .map_err(|e| self.db_err(e))?
            .map(|r| Self::row_to_case(&r)))
    }

    fn case_by_key(&mut self, key: &str) -> Result<Option<Case>> {
        Ok(self
            .client
            .query_opt(
                "SELECT id, case_key, path, labels, grade, patient_id, study FROM cases WHERE case_key = $1",
                &[&key],
            )
            .map_err(|e| self.db_err(e))?
            .map(|r| Self::row_to_case(&r)))
    }

    fn vectors(&mut self, model: &str) -> Result<Vec<(u64, Vec<u8>)>> {
        self.model(model)?;
        Ok(self
            .client
            .query(
                "SELECT case_id, data FROM vectors WHERE model = $1 ORDER BY case_id",
                &[&model],
            )
            .map_err(|e| self.db_err(e))?
            .into_iter()
            .map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, Vec<u8>>(1)))
            .collect())
    }

    fn changes(
        &mut self,
        model: &str,
        after: u64,
        up_to: u64,
    ) -> Result<Option<Vec<crate::Change>>> {
        let floor: i64 = self
            .client
            .query_one("SELECT n FROM change_floor", &[])
            .map_err(|e| self.db_err(e))?
            .get(0);
        if (after as i64) < floor {
            return Ok(None);
        }
        Ok(Some(
            self.client
                .query(
                    "SELECT c.generation, c.case_id, CASE c.op WHEN 'add' THEN v.data END
                     FROM changes c LEFT JOIN vectors v ON v.model = c.model AND v.case_id = c.case_id
                     WHERE c.model = $1 AND c.generation > $2 AND c.generation <= $3
                     ORDER BY c.generation, c.seq",
                    &[&model, &(after as i64), &(up_to as i64)],
                )
                .map_err(|e| self.db_err(e))?
                .into_iter()
                .map(|r| crate::Change {
                    generation: r.get::<_, i64>(0) as u64,
                    case_id: r.get::<_, i64>(1) as u64,
                    vector: r.get(2),
                })
                .collect(),
        ))
    }

    fn setting(&mut self, name: &str) -> Result<Option<String>> {
        Ok(self
            .client
            .query_opt("SELECT value FROM settings WHERE name = $1", &[&name])
            .map_err(|e| self.db_err(e))?
            .map(|r| r.get(0)))
    }

    fn case_paths(&mut self) -> Result<Vec<(u64, String)>> {
        Ok(self
            .client
            .query("SELECT id, path FROM cases ORDER BY id", &[])
            .map_err(|e| self.db_err(e))?
            .into_iter()
            .map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, String>(1)))
            .collect())
    }

    fn paths_with_prefix(&mut self, prefix: &str) -> Result<std::collections::BTreeSet<String>> {
        Ok(self
            .client
            .query(
                "SELECT path FROM cases WHERE left(path, char_length($1)) = $1",
                &[&prefix],
            )
            .map_err(|e| self.db_err(e))?
            .into_iter()
            .map(|r| r.get::<_, String>(0))
            .collect())
    }

    fn info(&mut self) -> Result<StoreInfo> {
        let cases: i64 = self
            .client
            .query_one("SELECT count(*) FROM cases", &[])
            .map_err(|e| self.db_err(e))?
            .get(0);
        let names: Vec<String> = self
            .client
            .query("SELECT name FROM models ORDER BY name", &[])
            .map_err(|e| self.db_err(e))?
            .into_iter()
            .map(|r| r.get(0))
            .collect();
        let mut models = Vec::new();
        for n in names {
            let count: i64 = self
                .client
                .query_one("SELECT count(*) FROM vectors WHERE model = $1", &[&n])
                .map_err(|e| self.db_err(e))?
                .get(0);
            models.push((self.model(&n)?, count as u64));
        }
        let bytes: i64 = self
            .client
            .query_one(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::BIGINT FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = current_schema() AND c.relkind = 'r'",
                &[],
            )
            .map_err(|e| self.db_err(e))?
            .get(0);
        Ok(StoreInfo {
            schema_version: SCHEMA_VERSION,
            cases: cases as u64,
            models,
            bytes_on_disk: bytes as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            super::redact("postgresql://medret:s3cret@127.0.0.1/db"),
            "postgresql://medret@127.0.0.1/db"
        );
        assert_eq!(
            super::redact("host=x user=u password=s3cret dbname=d"),
            "host=x user=u dbname=d"
        );
    }
}
