//! Label vocabularies shared by readers, phantoms and reports.

/// The 14 NIH ChestX-ray14 findings in their customary order (ChestX-ray8 is the first 8).
pub const NIH_FINDINGS: [&str; 14] = [
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
];

/// The label NIH uses for an image without findings. We keep it as a label of its own
/// (the evaluation protocol counts it as one), never as an entry of the finding vector.
pub const NO_FINDING: &str = "No Finding";

/// The eight findings that carry boxes in `BBox_List_2017.csv`: ChestX-ray8's set.
pub const NIH_BBOX_FINDINGS: &[&str] = NIH_FINDINGS.split_at(8).0;

/// Diabetic retinopathy grade names (EyePACS `level` 0-4) and the manifest labels `DR0`..`DR4`.
pub const DR_GRADES: [&str; 5] = [
    "No DR",
    "Mild NPDR",
    "Moderate NPDR",
    "Severe NPDR",
    "Proliferative DR",
];

/// Which NIH label set a reader maps findings onto (`--labels 8|14`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum NihLabelSet {
    ChestXray8,
    ChestXray14,
}

impl NihLabelSet {
    pub fn from_count(n: usize) -> Option<Self> {
        match n {
            8 => Some(Self::ChestXray8),
            14 => Some(Self::ChestXray14),
            _ => None,
        }
    }

    pub fn findings(self) -> &'static [&'static str] {
        match self {
            Self::ChestXray8 => &NIH_FINDINGS[..8],
            Self::ChestXray14 => &NIH_FINDINGS[..],
        }
    }
}

/// Canonical spelling of an NIH finding: `BBox_List_2017.csv` writes `Infiltrate` where
/// `Data_Entry_2017.csv` writes `Infiltration`.
pub fn canonical_nih_finding(name: &str) -> &str {
    match name {
        "Infiltrate" => "Infiltration",
        other => other,
    }
}

/// Codes of the fundus phantom's lesion label map (`masks/NAME.png`, one byte a pixel).
pub mod fundus_mask {
    pub const BACKGROUND: u8 = 0;
    pub const MICROANEURYSM: u8 = 1;
    pub const HAEMORRHAGE: u8 = 2;
    pub const HARD_EXUDATE: u8 = 3;
    pub const COTTON_WOOL: u8 = 4;
    pub const NEOVASCULARISATION: u8 = 5;
    /// Short names as used by IDRiD mask file suffixes where one exists.
    pub const NAMES: [&str; 6] = ["background", "MA", "HE", "EX", "SE", "NV"];
}
