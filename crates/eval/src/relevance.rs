//! When a database case counts as relevant to a query.

use serde::{Deserialize, Serialize};

/// What is known about a case for scoring: its label indices (sorted, deduplicated; "No
/// Finding" is a label of its own) and, for graded data, its grade.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Truth {
    pub labels: Vec<u32>,
    pub grade: Option<u8>,
}

impl Truth {
    pub fn labels(mut labels: Vec<u32>) -> Self {
        labels.sort_unstable();
        labels.dedup();
        Truth {
            labels,
            grade: None,
        }
    }

    pub fn grade(g: u8) -> Self {
        Truth {
            labels: vec![g as u32],
            grade: Some(g),
        }
    }
}

/// The relevance rule, stated in every report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Relevance {
    /// Multi-label: relevant when at least one label is shared.
    SharesLabel,
    /// Multi-label, strict: relevant when the label sets are equal.
    SameLabelSet,
    /// Graded: relevant when the grades are equal.
    SameGrade,
}

impl Relevance {
    pub fn describe(self) -> &'static str {
        match self {
            Relevance::SharesLabel => "relevant when query and case share at least one label",
            Relevance::SameLabelSet => "relevant when query and case have the same label set",
            Relevance::SameGrade => "relevant when query and case have the same grade",
        }
    }

    pub fn is_relevant(self, q: &Truth, d: &Truth) -> bool {
        match self {
            Relevance::SharesLabel => {
                // Both sorted: a merge walk.
                let (mut i, mut j) = (0, 0);
                while i < q.labels.len() && j < d.labels.len() {
                    match q.labels[i].cmp(&d.labels[j]) {
                        std::cmp::Ordering::Equal => return true,
                        std::cmp::Ordering::Less => i += 1,
                        std::cmp::Ordering::Greater => j += 1,
                    }
                }
                false
            }
            Relevance::SameLabelSet => q.labels == d.labels,
            Relevance::SameGrade => q.grade.is_some() && q.grade == d.grade,
        }
    }

    /// Graded gain for NDCG. Grades: `max(0, 2 - |g_q - g_d|)`; labels: the binary
    /// relevance (1 or 0).
    pub fn gain(self, q: &Truth, d: &Truth) -> f64 {
        match (self, q.grade, d.grade) {
            (Relevance::SameGrade, Some(a), Some(b)) => {
                (2 - (a as i32 - b as i32).abs()).max(0) as f64
            }
            _ => f64::from(u8::from(self.is_relevant(q, d))),
        }
    }
}
