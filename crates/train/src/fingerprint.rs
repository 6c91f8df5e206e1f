//! A dataset fingerprint for checkpoints: resuming on other data is refused, and a
//! checkpoint says which data produced it.

use medret_data::Record;
use sha2::{Digest, Sha256};

/// SHA-256 (hex) over the records' ids, labels, grades and splits, in id order, so the
/// order a reader returns them in does not matter. Image bytes are not read: relabelling,
/// adding or removing a case changes the fingerprint; re-encoding an image does not.
/// Patient ids are left out so the fingerprint reveals nothing about patients.
pub fn dataset_fingerprint<'a>(records: impl IntoIterator<Item = &'a Record>) -> String {
    let mut rows: Vec<String> = records
        .into_iter()
        .map(|r| {
            let mut labels = r.labels.clone();
            labels.sort();
            format!(
                "{}\t{}\t{}\t{}",
                r.id,
                labels.join("|"),
                r.grade.map(|g| g.to_string()).unwrap_or_default(),
                r.split.map(|s| s.name()).unwrap_or("")
            )
        })
        .collect();
    rows.sort();
    let mut h = Sha256::new();
    for row in rows {
        h.update(row.as_bytes());
        h.update(b"\n");
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use medret_data::ImageSource;

    fn rec(id: &str, labels: &[&str], patient: &str) -> Record {
        let mut r = Record::new(id, ImageSource::File(format!("{id}.png").into()));
        r.labels = labels.iter().map(|s| s.to_string()).collect();
        r.patient_id = patient.into();
        r
    }

    #[test]
    fn order_free_and_label_sensitive() {
        let a = rec("a", &["Mass", "Effusion"], "p1");
        let b = rec("b", &["No Finding"], "p2");
        let f1 = dataset_fingerprint([&a, &b]);
        let f2 = dataset_fingerprint([&b, &a]);
        assert_eq!(f1, f2);
        assert_eq!(f1.len(), 64);
        let mut a2 = a.clone();
        a2.labels = vec!["Mass".into()];
        assert_ne!(f1, dataset_fingerprint([&a2, &b]));
        // Label order within a record and patient ids do not matter.
        let mut a3 = a.clone();
        a3.labels.reverse();
        a3.patient_id = "someone else".into();
        assert_eq!(f1, dataset_fingerprint([&a3, &b]));
        // Known value of the empty set: SHA-256 of no bytes.
        assert_eq!(
            dataset_fingerprint(std::iter::empty()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
