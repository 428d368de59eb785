//! HTTP details that are not proxy logic: normalisation and header hygiene.

pub mod head;
pub mod headers;
pub mod normalize;
