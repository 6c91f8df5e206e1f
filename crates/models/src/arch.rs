//! One architecture name type for every command and config: `densenet121` (the default
//! for real training, as in both papers) and `densenet-tiny` (tests and the CPU demo).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::densenet::DenseNetConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Arch {
    #[serde(rename = "densenet121")]
    DenseNet121,
    #[serde(rename = "densenet-tiny", alias = "tiny")]
    DenseNetTiny,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::DenseNet121 => "densenet121",
            Arch::DenseNetTiny => "densenet-tiny",
        }
    }

    /// The network with `num_classes` outputs (`None`: the feature extractor alone).
    pub fn config(self, num_classes: Option<usize>) -> DenseNetConfig {
        DenseNetConfig {
            num_classes,
            ..self.base_config()
        }
    }

    /// The network as published (DenseNet-121 with its 1000 ImageNet classes).
    pub fn base_config(self) -> DenseNetConfig {
        match self {
            Arch::DenseNet121 => DenseNetConfig::densenet121(),
            Arch::DenseNetTiny => DenseNetConfig::tiny(),
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "densenet121" | "densenet-121" => Ok(Arch::DenseNet121),
            "densenet-tiny" | "tiny" => Ok(Arch::DenseNetTiny),
            other => Err(format!(
                "unknown architecture `{other}`: expected densenet121 or densenet-tiny"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for a in [Arch::DenseNet121, Arch::DenseNetTiny] {
            assert_eq!(a.name().parse::<Arch>().unwrap(), a);
            let j = serde_json::to_string(&a).unwrap();
            assert_eq!(serde_json::from_str::<Arch>(&j).unwrap(), a);
        }
        assert_eq!("tiny".parse::<Arch>().unwrap(), Arch::DenseNetTiny);
        assert!("resnet50".parse::<Arch>().unwrap_err().contains("resnet50"));
        assert_eq!(Arch::DenseNet121.config(None).feature_dim(), 1024);
    }
}
