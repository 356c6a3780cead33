//! What the re-initialisation tests share.
pub mod front;
