//! How an archive's stored codes use their bits ([`medret_eval::code_health`]), per code
//! model: what `medret index info` reports, so that a collapsed model (whole classes on
//! one code, Hamming search mostly ties) is seen before anyone searches with it.

use std::collections::BTreeMap;

use medret_eval::CodeHealth;
use medret_eval::codes::pack_bytes;
use medret_store::{CaseStore, ModelKind, StoreInfo};

use crate::error::Result;

/// The code health of every code model in `info` (descriptor models have none).
pub fn stored_code_health<S: CaseStore + ?Sized>(
    store: &mut S,
    info: &StoreInfo,
) -> Result<BTreeMap<String, CodeHealth>> {
    let mut out = BTreeMap::new();
    for (m, _) in &info.models {
        if let ModelKind::Codes { bits, .. } = m.kind {
            let codes: Vec<Vec<u64>> = store
                .vectors(&m.name)?
                .iter()
                .map(|(_, v)| pack_bytes(m.kind.code_part(v).unwrap_or(v)))
                .collect();
            out.insert(m.name.clone(), medret_eval::code_health(&codes, bits));
        }
    }
    Ok(out)
}
