//! The fundus method's building blocks (Fang et al., BSPC 2023): mirror attention over
//! flipped views ([`mirror_attention`]) and GeM pooling ([`gem`]). Work in progress: the
//! network, its losses and its training task arrive with the fundus issue.

pub mod gem;
pub mod mirror_attention;
