//! The loopd handler ABI and its safe Rust layer.
pub mod abi;
