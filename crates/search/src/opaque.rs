//! Opaque case ids: what the server shows instead of the archive's own case ids, which
//! often carry a patient number (NIH image ids start with it) or an accession number
//! (DICOM file stems).
//!
//! An opaque id is `c` and 32 hex digits: the case's numeric store id, encrypted with
//! AES-128 under a key made at random when the store was created (the store's
//! `opaque_key` setting, shared by every replica). It reveals nothing about the case,
//! cannot be guessed from a case id, and turns back into the store id without a lookup
//! table. A forged or mistyped id fails its check (the block's second half must
//! decrypt to zero) rather than naming another case.

use aes::Aes128;
use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use medret_store::CaseStore;

use crate::error::{Result, SearchError};

pub struct OpaqueIds(Aes128);

impl OpaqueIds {
    /// The ids of `store`, from its key.
    pub fn for_store(store: &mut dyn CaseStore) -> Result<Self> {
        let hex = store
            .setting("opaque_key")?
            .ok_or_else(|| SearchError::Invalid("the store has no opaque_key setting".into()))?;
        let key = parse_hex(&hex, 16)
            .ok_or_else(|| SearchError::Invalid("the store's opaque_key is malformed".into()))?;
        Ok(Self::from_key(&key))
    }

    pub fn from_key(key: &[u8]) -> Self {
        OpaqueIds(Aes128::new_from_slice(key).expect("a 16-byte key"))
    }

    /// The opaque id of store id `id`.
    pub fn encode(&self, id: u64) -> String {
        let mut block = [0u8; 16];
        block[..8].copy_from_slice(&id.to_le_bytes());
        let mut b = block.into();
        self.0.encrypt_block(&mut b);
        format!("c{}", crate::query::hex(&b))
    }

    /// The store id behind an opaque id; `None` for anything that is not one.
    pub fn decode(&self, s: &str) -> Option<u64> {
        let bytes = parse_hex(s.strip_prefix('c')?, 16)?;
        let mut b = aes::Block::clone_from_slice(&bytes);
        self.0.decrypt_block(&mut b);
        if b[8..].iter().any(|&x| x != 0) {
            return None;
        }
        Some(u64::from_le_bytes(b[..8].try_into().expect("8 bytes")))
    }
}

fn parse_hex(s: &str, bytes: usize) -> Option<Vec<u8>> {
    if s.len() != bytes * 2 || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    (0..bytes)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_forgeries_fail() {
        let ids = OpaqueIds::from_key(&[7u8; 16]);
        for id in [0u64, 1, 2, 1234, u64::MAX] {
            let o = ids.encode(id);
            assert_eq!(o.len(), 33);
            assert_eq!(ids.decode(&o), Some(id), "{o}");
        }
        // Neighbouring ids look unrelated, and the id itself does not show.
        let (a, b) = (ids.encode(41), ids.encode(42));
        assert_ne!(a[1..9], b[1..9]);
        assert!(!a.contains("29000000"));
        // Another store's key, a flipped digit, other text: not an id.
        assert_eq!(OpaqueIds::from_key(&[8u8; 16]).decode(&a), None);
        let mut flipped = a.clone().into_bytes();
        flipped[5] = if flipped[5] == b'0' { b'1' } else { b'0' };
        assert_eq!(ids.decode(&String::from_utf8(flipped).unwrap()), None);
        for bad in ["", "c", "00000013_005", &a[1..], "cé"] {
            assert_eq!(ids.decode(bad), None, "{bad}");
        }
    }
}
