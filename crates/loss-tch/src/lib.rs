//! placeholder
pub use tch;
