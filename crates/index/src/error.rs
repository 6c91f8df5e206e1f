/// Errors of the in-memory indexes.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum IndexError {
    #[error("code length {0} bits: must be a multiple of 8 between 8 and 1024")]
    BitLength(usize),
    #[error("code of {got} bits where the index holds {expected}-bit codes")]
    CodeLength { expected: usize, got: usize },
    #[error("descriptor of dimension {got} where the index holds dimension {expected}")]
    Dimension { expected: usize, got: usize },
    #[error("descriptor holds a non-finite value")]
    NonFinite,
    #[error("case id {0} is already in the index")]
    DuplicateId(u64),
    #[error("{0}")]
    Parameter(String),
}

pub type Result<T, E = IndexError> = std::result::Result<T, E>;
