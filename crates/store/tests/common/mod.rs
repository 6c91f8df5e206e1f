//! What the store's integration tests share: a case with every field set, a code model,
//! and a seeded generator.

#![allow(dead_code)]

use medret_store::{ModelInfo, ModelKind, NewCase};

/// A case with every field set, so that a round trip checks each column.
pub fn case(key: &str) -> NewCase {
    NewCase {
        key: key.into(),
        path: format!("images/{key}.png"),
        labels: vec!["Mass".into(), "Effusion".into()],
        grade: Some(2),
        patient_id: format!("patient-{key}"),
        study: serde_json::json!({"view": "PA", "eye": "left"}),
    }
}

/// A 64-bit code model.
pub fn codes64() -> ModelInfo {
    ModelInfo {
        name: "hash64".into(),
        kind: ModelKind::codes(64),
        config_hash: "abc".into(),
    }
}

/// Knuth's MMIX linear congruential generator: seeded data without a dependency.
pub fn lcg(s: &mut u64) -> u64 {
    *s = s
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *s
}
