//! The archive's schema and its validation, defined once for both stores: each
//! migration is written once with placeholders for what the two SQL dialects spell
//! differently (the auto-numbered key, integer widths, the byte type, SQLite's
//! `WITHOUT ROWID`, PostgreSQL's change sequence, a random key), and rendered for
//! [`Dialect::Sqlite`] or [`Dialect::Postgres`].

use crate::error::{Result, StoreError};
use crate::{Metric, ModelInfo, ModelKind, NewCase};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// The migrations, in the placeholders' syntax; entry `i` takes version `i` to `i + 1`.
const MIGRATIONS: [&str; 3] = [
    "
    CREATE TABLE cases (
        id {ID},
        case_key TEXT NOT NULL UNIQUE,
        path TEXT NOT NULL,
        labels TEXT NOT NULL,
        grade {SMALLINT},
        patient_id TEXT NOT NULL,
        study TEXT NOT NULL
    );
    CREATE TABLE models (
        name TEXT PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('codes', 'descriptors')),
        dim INTEGER NOT NULL CHECK (dim > 0),
        metric TEXT,
        config_hash TEXT NOT NULL
    );
    CREATE TABLE vectors (
        model TEXT NOT NULL REFERENCES models(name) ON DELETE CASCADE,
        case_id {BIGINT} NOT NULL REFERENCES cases(id) ON DELETE CASCADE,
        data {BYTES} NOT NULL,
        PRIMARY KEY (model, case_id)
    ){WITHOUT_ROWID};
    CREATE INDEX vectors_by_case ON vectors(case_id);
",
    "
    CREATE TABLE generation (n {BIGINT} NOT NULL);
    INSERT INTO generation (n) VALUES (0);
",
    "
    CREATE TABLE changes (
        generation {BIGINT} NOT NULL,
        model TEXT NOT NULL,
        case_id {BIGINT} NOT NULL,
        op TEXT NOT NULL CHECK (op IN ('add', 'del')){SEQ}
    );
    CREATE INDEX changes_by_model ON changes(model, generation);
    CREATE INDEX changes_by_generation ON changes(generation);
    CREATE TABLE change_floor (n {BIGINT} NOT NULL);
    INSERT INTO change_floor (n) SELECT n FROM generation;
    CREATE TABLE settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
    INSERT INTO settings (name, value) VALUES ('opaque_key', {RANDOM_KEY});
",
];

pub const VERSION: u32 = MIGRATIONS.len() as u32;

impl Dialect {
    /// Each placeholder's spelling. SQLite's `INTEGER PRIMARY KEY` is its rowid (64-bit);
    /// its change log orders by rowid, where PostgreSQL needs a sequence column.
    fn spellings(self) -> [(&'static str, &'static str); 7] {
        match self {
            Dialect::Sqlite => [
                ("{ID}", "INTEGER PRIMARY KEY"),
                ("{SMALLINT}", "INTEGER"),
                ("{BIGINT}", "INTEGER"),
                ("{BYTES}", "BLOB"),
                ("{WITHOUT_ROWID}", " WITHOUT ROWID"),
                ("{SEQ}", ""),
                ("{RANDOM_KEY}", "lower(hex(randomblob(16)))"),
            ],
            Dialect::Postgres => [
                ("{ID}", "BIGSERIAL PRIMARY KEY"),
                ("{SMALLINT}", "SMALLINT"),
                ("{BIGINT}", "BIGINT"),
                ("{BYTES}", "BYTEA"),
                ("{WITHOUT_ROWID}", ""),
                ("{SEQ}", ",\n        seq BIGSERIAL"),
                ("{RANDOM_KEY}", "replace(gen_random_uuid()::text, '-', '')"),
            ],
        }
    }
}

/// The migrations in `dialect`'s SQL.
pub fn migrations(dialect: Dialect) -> Vec<String> {
    MIGRATIONS
        .iter()
        .map(|m| {
            dialect
                .spellings()
                .iter()
                .fold(m.to_string(), |sql, (from, to)| sql.replace(from, to))
        })
        .collect()
}

pub(crate) fn kind_columns(kind: &ModelKind) -> (&'static str, i64, Option<&'static str>) {
    match *kind {
        // A code model's `metric` column names its tie-break: the relaxed outputs stored
        // after each code (no schema change: the column is free text for codes).
        ModelKind::Codes { bits, relaxed } => ("codes", bits as i64, relaxed.then_some("relaxed")),
        ModelKind::Descriptors { dim, metric } => (
            "descriptors",
            dim as i64,
            Some(match metric {
                Metric::Cosine => "cosine",
                Metric::L2 => "l2",
            }),
        ),
    }
}

/// The inverse of [`kind_columns`], for both stores.
pub(crate) fn kind_from_columns(kind: &str, dim: usize, metric: Option<&str>) -> ModelKind {
    match kind {
        "codes" => ModelKind::Codes {
            bits: dim,
            relaxed: metric == Some("relaxed"),
        },
        _ => ModelKind::Descriptors {
            dim,
            metric: if metric == Some("l2") {
                Metric::L2
            } else {
                Metric::Cosine
            },
        },
    }
}

pub(crate) fn validate_kind(kind: &ModelKind) -> Result<()> {
    match *kind {
        ModelKind::Codes { bits, .. } if bits == 0 || !bits.is_multiple_of(8) || bits > 1024 => {
            Err(StoreError::InvalidCase(format!(
                "code length {bits} bits: must be a multiple of 8 between 8 and 1024"
            )))
        }
        ModelKind::Descriptors { dim: 0, .. } => Err(StoreError::InvalidCase(
            "descriptor dimension must be at least 1".into(),
        )),
        _ => Ok(()),
    }
}

/// Checks every item before anything is written: vector sizes, finite floats (one NaN
/// in the store would keep the model's index from ever loading again) and keys.
pub(crate) fn validate_items(
    model: &str,
    info: &ModelInfo,
    items: &[(NewCase, Vec<u8>)],
) -> Result<()> {
    let bytes = info.kind.vector_bytes();
    // Where the float32 part of a stored vector starts.
    let floats_from = match info.kind {
        ModelKind::Codes { relaxed: true, .. } => info.kind.code_bytes(),
        ModelKind::Codes { .. } => None,
        ModelKind::Descriptors { .. } => Some(0),
    };
    for (i, (case, v)) in items.iter().enumerate() {
        if v.len() != bytes {
            return Err(StoreError::VectorSize {
                model: model.into(),
                message: format!(
                    "item {i} (case `{}`) has {} bytes where the model stores {bytes}",
                    case.key,
                    v.len()
                ),
            });
        }
        if case.key.is_empty() {
            return Err(StoreError::InvalidCase(format!(
                "item {i} has an empty key"
            )));
        }
        if let Some(from) = floats_from
            && let Some(j) = v[from..]
                .chunks_exact(4)
                .position(|c| !f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_finite())
        {
            return Err(StoreError::VectorSize {
                model: model.into(),
                message: format!(
                    "item {i} (case `{}`): value {j} is not a finite number",
                    case.key
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whitespace-insensitive form of SQL.
    fn words(sql: &str) -> String {
        sql.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// The migrations each store ran before the schema had one definition: an archive
    /// created then has exactly the tables these make, so the rendered SQL must not drift
    /// from them.
    const SQLITE_BEFORE: &[&str] = &[
        "
    CREATE TABLE cases (
        id INTEGER PRIMARY KEY,
        case_key TEXT NOT NULL UNIQUE,
        path TEXT NOT NULL,
        labels TEXT NOT NULL,
        grade INTEGER,
        patient_id TEXT NOT NULL,
        study TEXT NOT NULL
    );
    CREATE TABLE models (
        name TEXT PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('codes', 'descriptors')),
        dim INTEGER NOT NULL CHECK (dim > 0),
        metric TEXT,
        config_hash TEXT NOT NULL
    );
    CREATE TABLE vectors (
        model TEXT NOT NULL REFERENCES models(name) ON DELETE CASCADE,
        case_id INTEGER NOT NULL REFERENCES cases(id) ON DELETE CASCADE,
        data BLOB NOT NULL,
        PRIMARY KEY (model, case_id)
    ) WITHOUT ROWID;
    CREATE INDEX vectors_by_case ON vectors(case_id);
",
        "
    CREATE TABLE generation (n INTEGER NOT NULL);
    INSERT INTO generation (n) VALUES (0);
",
        "
    CREATE TABLE changes (
        generation INTEGER NOT NULL,
        model TEXT NOT NULL,
        case_id INTEGER NOT NULL,
        op TEXT NOT NULL CHECK (op IN ('add', 'del'))
    );
    CREATE INDEX changes_by_model ON changes(model, generation);
    CREATE INDEX changes_by_generation ON changes(generation);
    CREATE TABLE change_floor (n INTEGER NOT NULL);
    INSERT INTO change_floor (n) SELECT n FROM generation;
    CREATE TABLE settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
    INSERT INTO settings (name, value) VALUES ('opaque_key', lower(hex(randomblob(16))));
",
    ];
    const POSTGRES_BEFORE: &[&str] = &[
        "
    CREATE TABLE cases (
        id BIGSERIAL PRIMARY KEY,
        case_key TEXT NOT NULL UNIQUE,
        path TEXT NOT NULL,
        labels TEXT NOT NULL,
        grade SMALLINT,
        patient_id TEXT NOT NULL,
        study TEXT NOT NULL
    );
    CREATE TABLE models (
        name TEXT PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('codes', 'descriptors')),
        dim INTEGER NOT NULL CHECK (dim > 0),
        metric TEXT,
        config_hash TEXT NOT NULL
    );
    CREATE TABLE vectors (
        model TEXT NOT NULL REFERENCES models(name) ON DELETE CASCADE,
        case_id BIGINT NOT NULL REFERENCES cases(id) ON DELETE CASCADE,
        data BYTEA NOT NULL,
        PRIMARY KEY (model, case_id)
    );
    CREATE INDEX vectors_by_case ON vectors(case_id);
",
        "
    CREATE TABLE generation (n BIGINT NOT NULL);
    INSERT INTO generation (n) VALUES (0);
",
        "
    CREATE TABLE changes (
        generation BIGINT NOT NULL,
        model TEXT NOT NULL,
        case_id BIGINT NOT NULL,
        op TEXT NOT NULL CHECK (op IN ('add', 'del')),
        seq BIGSERIAL
    );
    CREATE INDEX changes_by_model ON changes(model, generation);
    CREATE INDEX changes_by_generation ON changes(generation);
    CREATE TABLE change_floor (n BIGINT NOT NULL);
    INSERT INTO change_floor (n) SELECT n FROM generation;
    CREATE TABLE settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
    INSERT INTO settings (name, value)
        VALUES ('opaque_key', replace(gen_random_uuid()::text, '-', ''));
",
    ];

    #[test]
    fn both_dialects_render_the_schemas_each_store_had() {
        for (dialect, before) in [
            (Dialect::Sqlite, SQLITE_BEFORE),
            (Dialect::Postgres, POSTGRES_BEFORE),
        ] {
            let now = migrations(dialect);
            assert_eq!(now.len(), before.len(), "{dialect:?}");
            for (i, (a, b)) in now.iter().zip(before).enumerate() {
                assert_eq!(words(a), words(b), "{dialect:?} migration {i}");
            }
            assert!(now.iter().all(|m| !m.contains('{')), "a placeholder left");
        }
    }
}
