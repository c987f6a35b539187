//! The plugin handshake reader: the loader's check of the info struct (and
//! the vtable it points to) that a library's entry point returns, on
//! structs built from the fuzzer's bytes in real memory, exactly as large
//! as they say they are.
//!
//! Input: the info's `struct_size` (16 bits, so any size up to 64 KiB,
//! smaller or larger than this loopd's), `abi_major`, `abi_minor`,
//! `min_host_minor`, `default_framing`, `framings` (ABI 1.5: a few bits,
//! known and unknown, read only when `struct_size` covers it); which of
//! name, version and vtable
//! are NULL; the vtable's `struct_size` and its bytes (hook slots hold
//! arbitrary non-NULL values: they are never called); then the name and
//! version bytes.
//!
//! Checked on every input:
//! - no panic, and no read past what the structs say they hold (the
//!   buffers are exact, so AddressSanitizer sees any overread);
//! - the verdict is the one the ABI's rules give, computed independently:
//!   too small, wrong major, `min_host_minor` too high, NULL vtable, small
//!   vtable, unknown framing, framings naming no known framing or leaving
//!   out the default, NULL or non-UTF-8 name or version, in that order,
//!   each with its own message;
//! - an accepted vtable holds exactly the plugin's hooks, whole: every hook
//!   slot that lies entirely within the plugin's `struct_size` is the
//!   plugin's value, every other one is NULL, and `struct_size` is ours.
#![no_main]

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ffi::CString;
use std::mem::{offset_of, size_of};

use libfuzzer_sys::fuzz_target;
use loopd::fuzzing::{check_plugin_info, FramingKind};
use loopd_fuzz::Input;
use loopd_handler_api::abi::{self, loopd_plugin_info, loopd_vtable};

/// A zeroed, 8-byte aligned allocation of exactly `len` bytes, so that
/// AddressSanitizer reports a read one byte past it.
struct Exact {
    ptr: *mut u8,
    layout: Layout,
}

impl Exact {
    fn new(len: usize) -> Exact {
        let layout = Layout::from_size_align(len, 8).unwrap();
        // SAFETY: `len` is at least 4, so the layout is not zero-sized.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory");
        Exact { ptr, layout }
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` is a live allocation of `layout.size()` initialised bytes.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }

    /// Writes `value` at `offset` if it fits entirely.
    fn put(&mut self, offset: usize, value: &[u8]) {
        if offset + value.len() <= self.layout.size() {
            self.bytes()[offset..offset + value.len()].copy_from_slice(value);
        }
    }
}

impl Drop for Exact {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout in `new`.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let size = usize::from(input.u16());
    let major = match input.u8() {
        0..=200 => abi::LOOPD_ABI_MAJOR,
        b => u32::from(b) - 200,
    };
    let minor = u32::from(input.u8() % 4);
    let min_host = match input.u8() {
        0..=100 => 0,
        101..=200 => abi::LOOPD_ABI_MINOR,
        b => u32::from(b),
    };
    let framing = u32::from(input.u8() % 6);
    // Bits 0-3 (0 is DEFAULT's, no framing) and one a later minor may use.
    let framings = u32::from(input.u8() & 0xf) | (u32::from(input.u8() & 1) << 9);
    let nulls = input.u8();
    let vsize = usize::from(input.u16() % 512);
    let vbytes = input.bytes(vsize).to_vec();
    let name_len = usize::from(input.u8() % 32);
    let name = input.bytes(name_len).to_vec();
    let version = input.rest().to_vec();
    let name = CString::new(name.into_iter().filter(|&b| b != 0).collect::<Vec<_>>()).unwrap();
    let version =
        CString::new(version.into_iter().filter(|&b| b != 0).collect::<Vec<_>>()).unwrap();

    // The vtable, exactly `vsize` bytes (at least its struct_size field).
    let mut vtable = Exact::new(vsize.max(4));
    vtable.bytes()[..vbytes.len()].copy_from_slice(&vbytes);
    vtable.put(0, &(vsize as u32).to_ne_bytes());

    // The info, exactly `size` bytes (at least its struct_size field).
    let mut info = Exact::new(size.max(4));
    let p = |v: *const u8| (v as usize).to_ne_bytes();
    info.put(0, &(size as u32).to_ne_bytes());
    info.put(
        offset_of!(loopd_plugin_info, abi_major),
        &major.to_ne_bytes(),
    );
    info.put(
        offset_of!(loopd_plugin_info, abi_minor),
        &minor.to_ne_bytes(),
    );
    info.put(
        offset_of!(loopd_plugin_info, min_host_minor),
        &min_host.to_ne_bytes(),
    );
    let name_ptr = if nulls & 1 != 0 {
        std::ptr::null()
    } else {
        name.as_ptr().cast()
    };
    let version_ptr = if nulls & 2 != 0 {
        std::ptr::null()
    } else {
        version.as_ptr().cast()
    };
    let vtable_ptr: *const u8 = if nulls & 4 != 0 {
        std::ptr::null()
    } else {
        vtable.ptr
    };
    info.put(offset_of!(loopd_plugin_info, name), &p(name_ptr));
    info.put(offset_of!(loopd_plugin_info, version), &p(version_ptr));
    info.put(
        offset_of!(loopd_plugin_info, default_framing),
        &framing.to_ne_bytes(),
    );
    info.put(offset_of!(loopd_plugin_info, vtable), &p(vtable_ptr));
    info.put(
        offset_of!(loopd_plugin_info, framings),
        &framings.to_ne_bytes(),
    );

    // SAFETY: `info` holds `size` (at least 4) readable bytes and says so;
    // its pointers are NULL or point to the NUL-terminated strings and the
    // vtable above, which holds its own struct_size bytes; all outlive the call.
    let got = unsafe { check_plugin_info(info.ptr.cast()) };

    let want = expect(
        size,
        major,
        min_host,
        vtable_ptr.is_null(),
        vsize,
        framing,
        framings,
        &name,
        &version,
        nulls,
    );
    match (&got, want) {
        (Ok(ok), Ok((framing, bits))) => {
            assert_eq!(ok.default_framing, framing);
            assert_eq!(ok.framings, bits);
            assert_eq!(ok.name.as_bytes(), name.as_bytes());
            assert_eq!(ok.version.as_bytes(), version.as_bytes());
            check_vtable(&ok.vtable, vtable.bytes(), vsize);
        }
        (Err(msg), Err(want)) => assert!(
            msg.contains(want),
            "refused with {msg:?}, expected a message with {want:?}"
        ),
        (got, want) => panic!("got {got:?}, expected {want:?}"),
    }
});

/// The verdict by the ABI's rules: the framing, or a word of the refusal.
#[allow(clippy::too_many_arguments)]
fn expect(
    size: usize,
    major: u32,
    min_host: u32,
    vtable_null: bool,
    vsize: usize,
    framing: u32,
    framings: u32,
    name: &CString,
    version: &CString,
    nulls: u8,
) -> Result<(Option<FramingKind>, u32), &'static str> {
    if size < abi::LOOPD_PLUGIN_INFO_V1_0_SIZE {
        return Err("smaller than the");
    }
    if major != abi::LOOPD_ABI_MAJOR {
        return Err("built for handler ABI");
    }
    if min_host > abi::LOOPD_ABI_MINOR {
        return Err("needs a host with handler ABI");
    }
    if vtable_null {
        return Err("NULL vtable");
    }
    if vsize < abi::LOOPD_VTABLE_V1_0_SIZE {
        return Err("vtable is");
    }
    let framing = match framing {
        abi::LOOPD_FRAMING_DEFAULT => None,
        abi::LOOPD_FRAMING_RAW => Some(FramingKind::Raw),
        abi::LOOPD_FRAMING_LINE => Some(FramingKind::Line),
        abi::LOOPD_FRAMING_LENGTH_PREFIXED => Some(FramingKind::LengthPrefixed),
        _ => return Err("unknown default_framing"),
    };
    // Read only when the struct holds all of it; then only the bits of
    // raw (1), line (2) and length-prefixed (3) count.
    let framings = if size >= offset_of!(loopd_plugin_info, framings) + 4 {
        framings
    } else {
        0
    };
    let known = framings & 0b1110;
    if framings != 0 && known == 0 {
        return Err("names no framing this loopd knows");
    }
    let implied = framing.unwrap_or(FramingKind::Raw);
    if known != 0 && known & (1 << u32::from(implied)) == 0 {
        return Err("does not include");
    }
    if nulls & 1 != 0 {
        return Err("NULL name");
    }
    if name.to_str().is_err() {
        return Err("name is not UTF-8");
    }
    if nulls & 2 != 0 {
        return Err("NULL version");
    }
    if version.to_str().is_err() {
        return Err("version is not UTF-8");
    }
    Ok((framing, known))
}

/// Every hook slot is the plugin's whole value if it lies within the
/// plugin's table, NULL otherwise.
fn check_vtable(got: &loopd_vtable, theirs: &[u8], vsize: usize) {
    assert_eq!(got.struct_size as usize, size_of::<loopd_vtable>());
    // SAFETY: a loopd_vtable is plain data: read it as bytes.
    let ours: &[u8] = unsafe {
        std::slice::from_raw_parts(
            (got as *const loopd_vtable).cast(),
            size_of::<loopd_vtable>(),
        )
    };
    let first_hook = offset_of!(loopd_vtable, create);
    let slot = size_of::<usize>();
    for at in (first_hook..size_of::<loopd_vtable>()).step_by(slot) {
        let want: &[u8] = if at + slot <= vsize {
            &theirs[at..at + slot]
        } else {
            &[0; 8][..slot]
        };
        assert_eq!(
            &ours[at..at + slot],
            want,
            "hook slot at byte {at} (plugin table of {vsize} bytes)"
        );
    }
}
