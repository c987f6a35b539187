//! Entry points for the fuzz targets in `fuzz/`: not a stable API.
//!
//! Each item here is a thin, behaviour-free window on one piece of the
//! runtime that takes untrusted input, so that `cargo fuzz` can drive it
//! without sockets or `dlopen`:
//!
//! - the input framer ([`next_frame`], [`skip_input`]), exactly the
//!   functions the loop cuts every connection's input with;
//! - the plugin handshake reader ([`check_plugin_info`]), exactly the check
//!   the loader runs on what a library's entry point returns.
//!
//! The config loader needs nothing here: [`crate::Config::parse`] is public.
//! Hidden from the docs; it may change with any release.

use loopd_handler_api::abi::{loopd_plugin_info, loopd_vtable};

pub use crate::config::FramingKind;
pub use crate::source::stream::next_frame;
pub use loopd_handler_api::framing::{skip_input, Discard, Next, Skipping};

/// What the handshake keeps of a plugin's info once it passed the checks.
#[derive(Debug, Clone)]
pub struct CheckedInfo {
    /// The plugin's name.
    pub name: String,
    /// The plugin's version.
    pub version: String,
    /// Its preferred framing, if it has one.
    pub default_framing: Option<FramingKind>,
    /// The framings it reads (ABI 1.5), as `LOOPD_FRAMING_BIT`s of those
    /// this loopd knows; 0: any.
    pub framings: u32,
    /// Its vtable, copied and zero-extended to the size this loopd knows.
    pub vtable: loopd_vtable,
}

/// Runs the loader's check of plugin info, as `plugin::load` does after the
/// entry point returned a non-NULL pointer.
///
/// # Errors
/// The loader's reason for refusing the plugin.
///
/// # Safety
/// `info` must be non-NULL and point to at least `struct_size` readable
/// bytes (its first field); its `name` and `version` must be NULL or
/// NUL-terminated strings, and its `vtable` NULL or a table with at least
/// its own `struct_size` readable bytes, all valid for the call.
pub unsafe fn check_plugin_info(info: *const loopd_plugin_info) -> Result<CheckedInfo, String> {
    // SAFETY: the caller's contract is check_info's.
    let p = unsafe { crate::plugin::check_info(info, None) }?;
    Ok(CheckedInfo {
        name: p.name,
        version: p.version,
        default_framing: p.default_framing,
        framings: p.framings,
        vtable: p.vtable,
    })
}
