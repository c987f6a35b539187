//! Entry points for the fuzz targets in `fuzz/`: not a stable API.
//!
//! The request path is fuzzed through the public [`crate::Http`] handler
//! (driven with a host table the fuzz target implements); what is here is a
//! window on the path layer alone, so that its one invariant (a normalised
//! path never leaves the root) is checked on every input. Hidden from the
//! docs; it may change with any release.

/// Why a path cannot be served (the status it is answered with).
pub use crate::path::PathError;

/// A normalised request path: the names below the root joined with `/`
/// (no leading or trailing slash; empty for the root itself), and whether
/// the request named a directory form.
pub fn normalize(raw: &[u8], hidden_files: bool) -> Result<(Vec<u8>, bool), PathError> {
    crate::path::normalize(raw, hidden_files).map(|p| (p.rel, p.trailing_slash))
}

/// The `Location` of the redirect for a directory named without its slash.
pub fn directory_url(rel: &[u8]) -> String {
    crate::path::ReqPath {
        rel: rel.to_vec(),
        trailing_slash: true,
    }
    .directory_url()
}

/// Splits a request target into its path and query, as the server does
/// before normalising (`None`: not origin-form or absolute-form).
pub fn split_target(target: &str) -> Option<(&str, Option<&str>)> {
    crate::server::split_target(target)
}
