//! Loading handler plugins: the only module that imports `libloading`.
//!
//! A plugin is opened with `RTLD_NOW | RTLD_LOCAL` (every symbol resolved up
//! front, none leaked into the global namespace), its one entry symbol is
//! called with the host table, and the info it returns is checked before any
//! of its hooks can run. Libraries are never unloaded: a Rust cdylib is not
//! safe to `dlclose` (thread-local destructors), and hooks may be referenced
//! until the process exits.

use std::ffi::CStr;
use std::path::{Path, PathBuf};

use libloading::os::unix::{Library, Symbol, RTLD_LOCAL, RTLD_NOW};
use loopd_handler_api::abi::{self, loopd_plugin_entry_v1_fn, loopd_plugin_info, loopd_vtable};

use crate::config::{FramingKind, PluginRef};
use crate::host;

/// A checked plugin: its hooks and what it says about itself.
#[derive(Debug, Clone)]
pub(crate) struct Plugin {
    /// Where it was loaded from (`None` for a statically linked handler).
    pub(crate) path: Option<PathBuf>,
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) default_framing: Option<FramingKind>,
    /// The ALPN protocols it declares for its `tls://` listeners (1.4).
    pub(crate) alpn: Vec<String>,
    /// The framings it works with, as `LOOPD_FRAMING_BIT`s of the framings
    /// this loopd knows; 0: any (1.5, [`check_framings`]).
    pub(crate) framings: u32,
    /// The plugin's vtable, copied and zero-extended to the size we know.
    pub(crate) vtable: loopd_vtable,
    /// The library file as it was when loaded (`None` for a linked handler):
    /// a reload compares it to see whether the file was replaced.
    pub(crate) stamp: Option<Stamp>,
}

impl Plugin {
    /// Whether it has a hook for datagrams: a `udp://` listener needs one.
    pub(crate) fn serves_datagrams(&self) -> bool {
        let v = &self.vtable;
        v.on_datagram.is_some() || v.on_datagrams.is_some()
    }

    /// Whether it has any connection hook: a stream listener, and an
    /// outbound connection, need one (the Rust SDK leaves them all NULL
    /// for `Handler::STREAMS = false`).
    pub(crate) fn serves_streams(&self) -> bool {
        let v = &self.vtable;
        v.on_open.is_some()
            || v.on_data.is_some()
            || v.on_eof.is_some()
            || v.on_writable.is_some()
            || v.on_close.is_some()
            || v.on_partial.is_some()
            || v.on_oversize.is_some()
    }
}

/// What identifies one version of a library file: device, inode, size and
/// modification time (nanoseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp(u64, u64, u64, i64, i64);

impl Stamp {
    /// The stamp of the file at `path` now.
    pub(crate) fn of(path: &Path) -> std::io::Result<Stamp> {
        Ok(Stamp::of_metadata(&std::fs::metadata(path)?))
    }

    fn of_metadata(m: &std::fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp(m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec())
    }
}

/// Which file each library path was last loaded from, and its stamp: the
/// dynamic loader returns the library it already has for a path it has
/// seen, so a file replaced at that path (a new build of a plugin, for a
/// reload) is loaded from a private copy instead.
static LOADED: std::sync::Mutex<Vec<(PathBuf, Stamp, PathBuf)>> = std::sync::Mutex::new(Vec::new());

/// Loads the library at `path` as it is now: the same version as before
/// reuses what was loaded, a replaced file is copied to a private file
/// (in the system's temporary directory, removed again once loaded) and
/// loaded from there, so its new code runs beside the old one's.
pub(crate) fn load_current(path: &Path) -> Result<Plugin, String> {
    // A FIFO or a device would block dlopen (or the copy) forever.
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read it: {e}"))?;
    if !meta.is_file() {
        return Err(not_regular(meta.file_type()));
    }
    let stamp = Stamp::of_metadata(&meta);
    let mut loaded = LOADED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let known = loaded.iter().position(|(p, _, _)| p == path);
    let from = match known {
        // Already mapped: the loader hands back what it has (a private
        // copy is gone from disk by now), so there is nothing to check.
        Some(i) if loaded[i].1 == stamp => loaded[i].2.clone(),
        Some(_) => private_copy(path)?,
        None => {
            check_library(&open_regular(path)?)?;
            path.to_path_buf()
        }
    };
    let mut plugin = load(&from);
    if from != path {
        // Mapped now (or refused): the copy is no longer needed.
        let _ = std::fs::remove_file(&from);
        if let Ok(p) = &mut plugin {
            p.path = Some(path.to_path_buf());
        }
    }
    let mut plugin = plugin?;
    plugin.stamp = Some(stamp);
    match known {
        Some(i) => loaded[i] = (path.to_path_buf(), stamp, from),
        None => loaded.push((path.to_path_buf(), stamp, from)),
    }
    Ok(plugin)
}

/// Copies the library at `path` to a fresh private file, and checks the
/// copy (which nobody else writes) as `check_library` does.
fn private_copy(path: &Path) -> Result<PathBuf, String> {
    use std::os::unix::fs::OpenOptionsExt;
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path
        .file_name()
        .map_or_else(|| "plugin".into(), |f| f.to_string_lossy().into_owned());
    let to = std::env::temp_dir().join(format!("loopd-{}-{n}-{name}", std::process::id()));
    let mut src = open_regular(path)?;
    let mut dst = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o700)
        .open(&to)
        .map_err(|e| {
            format!(
                "cannot copy it to {} to load the new version: {e}",
                to.display()
            )
        })?;
    let copied = std::io::copy(&mut src, &mut dst)
        .map_err(|e| {
            format!(
                "cannot copy it to {} to load the new version: {e}",
                to.display()
            )
        })
        .and_then(|_| check_library(&dst));
    if let Err(e) = copied {
        let _ = std::fs::remove_file(&to);
        return Err(e);
    }
    Ok(to)
}

/// "it is a FIFO (named pipe), not a regular file".
fn not_regular(t: std::fs::FileType) -> String {
    crate::sys::Refused::NotRegular(crate::sys::file_kind(t)).to_string()
}

/// Opens `path` for reading, refusing anything but a regular file
/// (`sys::open_regular`: a FIFO that took the file's place since the
/// caller's stat does not block the open).
fn open_regular(path: &Path) -> Result<std::fs::File, String> {
    match crate::sys::open_regular(path) {
        Ok((file, _)) => Ok(file),
        Err(crate::sys::Refused::Io(e)) => Err(format!("cannot read it: {e}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Refuses a library that the dynamic loader would map past the end of
/// its file: touching such a page raises SIGBUS, which kills loopd (a
/// plugin still being copied, then loaded or reloaded). An ELF file's
/// program header table and every `PT_LOAD` segment's file bytes must lie
/// within the file. A file that is not ELF is left to the loader, which
/// says what is wrong with it; so are the header fields the loader checks
/// itself (class, byte order, entry size).
#[cfg(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_os = "dragonfly",
    target_os = "netbsd",
    target_os = "openbsd",
    target_os = "illumos",
    target_os = "solaris"
))]
fn check_library(file: &std::fs::File) -> Result<(), String> {
    use std::os::unix::fs::FileExt;
    const PT_LOAD: u32 = 1;
    let len = file
        .metadata()
        .map_err(|e| format!("cannot read it: {e}"))?
        .len();
    let read_err = |e: std::io::Error| format!("cannot read it: {e}");
    let truncated = |what: &str, end: u128| {
        format!(
            "the file is truncated: {what} ends at byte {end} but the file has {len} bytes (was it still being copied?)"
        )
    };
    // The ELF header: 52 bytes (ELF32) or 64 (ELF64).
    let mut eh = [0u8; 64];
    let mut got = 0;
    while got < eh.len() {
        match file.read_at(&mut eh[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(read_err(e)),
        }
    }
    if got < 6 || eh[..4] != *b"\x7fELF" {
        return Ok(());
    }
    let (wide, big) = match (eh[4], eh[5]) {
        (1, 1) => (false, false),
        (1, 2) => (false, true),
        (2, 1) => (true, false),
        (2, 2) => (true, true),
        _ => return Ok(()),
    };
    // Fixed-width fields at an offset, in the file's byte order (`at + N`
    // is within `b`: every caller's offsets are in its header).
    let uint = |b: &[u8], at: usize, n: usize| -> u64 {
        let mut v = [0u8; 8];
        if big {
            v[8 - n..].copy_from_slice(&b[at..at + n]);
            u64::from_be_bytes(v)
        } else {
            v[..n].copy_from_slice(&b[at..at + n]);
            u64::from_le_bytes(v)
        }
    };
    let word = if wide { 8 } else { 4 };
    let (ehsize, phentsize_want) = if wide { (64, 56) } else { (52, 32) };
    if got < ehsize {
        return Err(truncated("the ELF header", ehsize as u128));
    }
    // e_phoff follows e_ident (16), e_type, e_machine (2 each), e_version
    // (4) and e_entry (a word); e_phentsize and e_phnum follow e_shoff
    // (a word), e_flags (4) and e_ehsize (2).
    let phoff = uint(&eh, 24 + word, word);
    let phentsize = uint(&eh, 24 + 3 * word + 6, 2);
    let phnum = uint(&eh, 24 + 3 * word + 8, 2);
    if phentsize != phentsize_want {
        return Ok(());
    }
    let table_end = phoff as u128 + (phnum * phentsize) as u128;
    if table_end > len as u128 {
        return Err(truncated("the program header table", table_end));
    }
    let mut table = vec![0u8; (phnum * phentsize) as usize];
    file.read_exact_at(&mut table, phoff).map_err(read_err)?;
    for ph in table.chunks_exact(phentsize as usize) {
        // p_type, then (ELF64) p_flags, p_offset, p_vaddr, p_paddr,
        // p_filesz or (ELF32) p_offset, p_vaddr, p_paddr, p_filesz.
        let (offset, filesz) = if wide {
            (uint(ph, 8, 8), uint(ph, 32, 8))
        } else {
            (uint(ph, 4, 4), uint(ph, 16, 4))
        };
        let end = offset as u128 + filesz as u128;
        // No file bytes (all .bss): nothing is mapped from the file.
        if uint(ph, 0, 4) as u32 == PT_LOAD && filesz > 0 && end > len as u128 {
            return Err(truncated("a load segment", end));
        }
    }
    Ok(())
}

/// Not ELF (Mach-O on macOS): the loader reads what it maps.
#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_os = "dragonfly",
    target_os = "netbsd",
    target_os = "openbsd",
    target_os = "illumos",
    target_os = "solaris"
)))]
fn check_library(_file: &std::fs::File) -> Result<(), String> {
    Ok(())
}

/// File name of a plugin given by name: `echo` → `libloopd_echo.so` (the
/// platform's library prefix and suffix: `libloopd_echo.dylib` on macOS).
fn file_name(name: &str) -> PathBuf {
    PathBuf::from(libloading::library_filename(format!(
        "loopd_{}",
        name.replace('-', "_")
    )))
}

/// The working directory, for messages about relative paths.
pub(crate) fn working_dir() -> String {
    match std::env::current_dir() {
        Ok(d) => d.display().to_string(),
        Err(e) => format!("(unknown: {e})"),
    }
}

/// Where a plugin given by name may be: `plugin_dir` (if set), then the
/// directory of the running executable.
pub(crate) fn candidates(name: &str, plugin_dir: Option<&Path>) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = plugin_dir {
        dirs.push(d.to_path_buf());
    }
    if let Some(d) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        dirs.push(d);
    }
    dirs.into_iter().map(|d| d.join(file_name(name))).collect()
}

/// Whether there is a file at `path` (following symlinks): `Ok(false)` if
/// there is none, `Err(reason)` if it cannot be told, e.g. a directory on
/// the way that this user may not search (`Path::exists` says `false`).
fn present(path: &Path) -> Result<bool, String> {
    match std::fs::metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            // stat(2) needs no permission on the file itself.
            Err(format!(
                "cannot look it up: {e}: a directory on its path is not searchable (x permission) by uid {}",
                crate::privileges::euid()
            ))
        }
        Err(e) => Err(format!("cannot look it up: {e}")),
    }
}

/// Finds the library file for `plugin`. `Err((path, reason))` when there is none.
pub(crate) fn resolve(
    plugin: &PluginRef,
    plugin_dir: Option<&Path>,
) -> Result<PathBuf, (PathBuf, String)> {
    match plugin {
        PluginRef::Path(p) if present(p).map_err(|why| (p.clone(), why))? => Ok(p.clone()),
        PluginRef::Path(p) if p.is_relative() => {
            let cwd = working_dir();
            Err((
                p.clone(),
                format!(
                    "file not found; a relative path is resolved against the working directory, {cwd}, not the config file's directory (looked for {})",
                    Path::new(&cwd).join(p).display()
                ),
            ))
        }
        PluginRef::Path(p) => Err((p.clone(), "file not found".to_string())),
        PluginRef::Name(n) => {
            let tried = candidates(n, plugin_dir);
            let mut found = None;
            for p in &tried {
                // Only a file that is not there moves on to the next
                // place: one that cannot be looked up must not be
                // silently replaced by another directory's plugin.
                if present(p).map_err(|why| (p.clone(), why))? {
                    found = Some(p);
                    break;
                }
            }
            match found {
                Some(p) => Ok(p.clone()),
                None => {
                    let list: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
                    let mut why = format!("not found; looked for {}", list.join(", "));
                    if tried.iter().any(|p| p.is_relative()) {
                        why.push_str(&format!(
                            " (a relative plugin_dir is resolved against the working directory, {})",
                            working_dir()
                        ));
                    }
                    // `cargo run` builds only the loopd binary; the handler
                    // plugins are separate workspace members.
                    if tried
                        .iter()
                        .any(|p| p.parent().is_some_and(|d| d.join("deps").is_dir()))
                    {
                        why.push_str(
                            " (in a cargo checkout, `cargo build --release` at the workspace root builds the handler plugins; `cargo run` alone does not)",
                        );
                    }
                    Err((PathBuf::from(n), why))
                }
            }
        }
    }
}

fn read_str(p: *const std::ffi::c_char, what: &str) -> Result<String, String> {
    if p.is_null() {
        return Err(format!("plugin info has a NULL {what}"));
    }
    // SAFETY: the plugin promises NUL-terminated static strings; non-NULL was checked.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str()
        .map(str::to_owned)
        .map_err(|_| format!("plugin {what} is not UTF-8"))
}

/// Checks plugin info (already known to be non-NULL) and copies what we need.
///
/// # Safety
/// `info` must point to at least `struct_size` readable bytes, with pointers
/// that are NULL or valid for the life of the process.
pub(crate) unsafe fn check_info(
    info: *const loopd_plugin_info,
    path: Option<&Path>,
) -> Result<Plugin, String> {
    // SAFETY: the caller guarantees `info` is readable; struct_size comes first in every version.
    let size = unsafe { (*info).struct_size } as usize;
    if size < abi::LOOPD_PLUGIN_INFO_V1_0_SIZE {
        return Err(format!(
            "plugin info is {size} bytes, smaller than the {} bytes of ABI 1.0 (not a loopd plugin, or corrupt)",
            abi::LOOPD_PLUGIN_INFO_V1_0_SIZE
        ));
    }
    // A copy of what the plugin's struct has, zero-extended: a plugin built
    // against an older header has a shorter one, so no reference to the
    // whole of ours may point at it.
    // SAFETY: every field is an integer or a pointer, for which zero is valid.
    let mut copy: loopd_plugin_info = unsafe { std::mem::zeroed() };
    let n = size.min(std::mem::size_of::<loopd_plugin_info>());
    // SAFETY: the plugin's struct has `size >= n` readable bytes, ours `n` writable ones.
    unsafe {
        std::ptr::copy_nonoverlapping(
            info.cast::<u8>(),
            (&mut copy as *mut loopd_plugin_info).cast::<u8>(),
            n,
        )
    };
    let alpn_end = std::mem::offset_of!(loopd_plugin_info, alpn)
        + std::mem::size_of::<*const std::ffi::c_char>();
    if size < alpn_end {
        // Not in the plugin's struct (or torn by a size inside it).
        copy.alpn = std::ptr::null();
    }
    let framings_end = std::mem::offset_of!(loopd_plugin_info, framings) + 4;
    if size < framings_end {
        copy.framings = 0;
    }
    let info = &copy;
    if info.abi_major != abi::LOOPD_ABI_MAJOR {
        return Err(format!(
            "built for handler ABI {}.{}, but this loopd speaks ABI {}.{} (a different major is incompatible; rebuild the plugin against this loopd's loopd.h or loopd-handler-api)",
            info.abi_major,
            info.abi_minor,
            abi::LOOPD_ABI_MAJOR,
            abi::LOOPD_ABI_MINOR
        ));
    }
    if info.min_host_minor > abi::LOOPD_ABI_MINOR {
        return Err(format!(
            "needs a host with handler ABI {}.{} or newer, but this loopd speaks ABI {}.{} (upgrade loopd)",
            abi::LOOPD_ABI_MAJOR,
            info.min_host_minor,
            abi::LOOPD_ABI_MAJOR,
            abi::LOOPD_ABI_MINOR
        ));
    }
    if info.vtable.is_null() {
        return Err("plugin info has a NULL vtable".to_string());
    }
    // SAFETY: non-NULL; the plugin promises a static vtable; struct_size comes first.
    let vsize = unsafe { (*info.vtable).struct_size } as usize;
    if vsize < abi::LOOPD_VTABLE_V1_0_SIZE {
        return Err(format!(
            "vtable is {vsize} bytes, smaller than the {} bytes of ABI 1.0 (corrupt plugin)",
            abi::LOOPD_VTABLE_V1_0_SIZE
        ));
    }
    let mut vtable = loopd_vtable::EMPTY;
    // Whole hooks only: a size that ends inside a hook slot (a corrupt
    // table) must not leave half of a function pointer in ours, to be
    // called later. vsize >= the v1.0 size, which starts the first hook.
    let first_hook = std::mem::offset_of!(loopd_vtable, create);
    let slot = std::mem::size_of::<Option<abi::loopd_create_fn>>();
    let n = vsize.min(std::mem::size_of::<loopd_vtable>());
    let n = first_hook + (n - first_hook) / slot * slot;
    // SAFETY: the plugin's table has `vsize >= n` readable bytes; ours has `n` writable ones.
    unsafe {
        std::ptr::copy_nonoverlapping(
            info.vtable.cast::<u8>(),
            (&mut vtable as *mut loopd_vtable).cast::<u8>(),
            n,
        )
    };
    vtable.struct_size = std::mem::size_of::<loopd_vtable>() as u32;
    let default_framing = match info.default_framing {
        abi::LOOPD_FRAMING_DEFAULT => None,
        raw => Some(
            FramingKind::try_from(raw)
                .map_err(|other| format!("plugin info has an unknown default_framing {other}"))?,
        ),
    };
    let alpn = if !info.alpn.is_null() {
        let list = read_str(info.alpn, "alpn")?;
        parse_alpn(&list).map_err(|e| format!("plugin info alpn {list:?}: {e}"))?
    } else {
        Vec::new()
    };
    let framings =
        check_framings(info.framings, default_framing).map_err(|e| format!("plugin info {e}"))?;
    Ok(Plugin {
        path: path.map(Path::to_path_buf),
        name: read_str(info.name, "name")?,
        version: read_str(info.version, "version")?,
        default_framing,
        alpn,
        framings,
        vtable,
        stamp: None,
    })
}

/// A plugin's `framings` (1.5) checked against its `default_framing`, and
/// kept to the framings this loopd knows (a later minor's bit is one no
/// config can select here): 0 stays "any". Refused: bits that name no
/// framing this loopd knows, and a default (or, without one, raw, what an
/// entry without a `framing` key gets) that is not among them.
pub(crate) fn check_framings(bits: u32, default: Option<FramingKind>) -> Result<u32, String> {
    if bits == 0 {
        return Ok(0);
    }
    let known = bits
        & FramingKind::ALL
            .iter()
            .fold(0, |m, f| m | abi::LOOPD_FRAMING_BIT((*f).into()));
    if known == 0 {
        return Err(format!(
            "framings {bits:#x} names no framing this loopd knows (raw, line, length-prefixed)"
        ));
    }
    let implied = default.unwrap_or(FramingKind::Raw);
    if !implied.is_in(known) {
        let what = match default {
            Some(f) => format!("its default_framing \"{}\"", f.name()),
            None => {
                "\"raw\", what an entry without a framing key gets (it sets no default_framing)"
                    .to_string()
            }
        };
        return Err(format!(
            "framings {bits:#x} ({}) does not include {what}",
            FramingKind::list(known)
        ));
    }
    Ok(known)
}

/// A plugin's ALPN list ("h2,http/1.1"): comma-separated names of 1 to
/// 255 bytes, most preferred first; "" is none.
pub(crate) fn parse_alpn(list: &str) -> Result<Vec<String>, String> {
    if list.trim().is_empty() {
        return Ok(Vec::new());
    }
    list.split(',')
        .map(|p| {
            let p = p.trim();
            if p.is_empty() || p.len() > 255 {
                Err("each protocol name must be 1 to 255 bytes".to_string())
            } else {
                Ok(p.to_string())
            }
        })
        .collect()
}

/// Loads and checks the library at `path`. The error is the reason only;
/// the caller adds the path and the handler's name.
pub(crate) fn load(path: &Path) -> Result<Plugin, String> {
    // SAFETY: loading a library runs its initialisers; that is the point of a
    // plugin, and the operator chose the path. RTLD_NOW surfaces missing
    // symbols here instead of at the first call.
    let lib = unsafe { Library::open(Some(path), RTLD_NOW | RTLD_LOCAL) }
        .map_err(|e| format!("not a loadable library: {}", dl_reason(&e)))?;

    // SAFETY: the symbol's type is the ABI's entry type, by the plugin contract.
    let entry: Symbol<loopd_plugin_entry_v1_fn> = match unsafe { lib.get(abi::LOOPD_ENTRY_SYMBOL) }
    {
        Ok(sym) => sym,
        Err(_) => return Err(missing_entry(&lib)),
    };
    // SAFETY: calling the entry is the handshake; the host table is static.
    let info = unsafe { entry(host::host_api()) };
    if info.is_null() {
        return Err(format!(
            "loopd_plugin_entry_v1 returned NULL: the plugin refused to load (this loopd speaks handler ABI {}.{})",
            abi::LOOPD_ABI_MAJOR,
            abi::LOOPD_ABI_MINOR
        ));
    }
    // SAFETY: non-NULL, and the plugin promises static info; check_info reads
    // no more than the info's own struct_size.
    let plugin = unsafe { check_info(info, Some(path)) }?;
    // Never unloaded: the vtable points into the library.
    std::mem::forget(lib);
    Ok(plugin)
}

/// Explains a missing entry symbol, naming another major if the library has one.
fn missing_entry(lib: &Library) -> String {
    for major in 0..16u32 {
        if major == abi::LOOPD_ABI_MAJOR {
            continue;
        }
        let name = format!("loopd_plugin_entry_v{major}\0");
        // SAFETY: only checks for presence; the symbol is never called.
        if unsafe { lib.get::<*const u8>(name.as_bytes()) }.is_ok() {
            return format!(
                "no entry symbol loopd_plugin_entry_v{}: it exports loopd_plugin_entry_v{major}, so it was built for handler ABI {major}.x and this loopd speaks {}.{}",
                abi::LOOPD_ABI_MAJOR,
                abi::LOOPD_ABI_MAJOR,
                abi::LOOPD_ABI_MINOR
            );
        }
    }
    format!(
        "no entry symbol loopd_plugin_entry_v{} (not a loopd handler, or built without export_handler!/LOOPD_EXPORT)",
        abi::LOOPD_ABI_MAJOR
    )
}

/// libloading's message, without the repeated path that dlerror() starts with.
fn dl_reason(e: &libloading::Error) -> String {
    let text = match std::error::Error::source(e) {
        Some(src) => src.to_string(),
        None => e.to_string(),
    };
    match text.split_once(": ") {
        Some((head, rest))
            if head.ends_with(std::env::consts::DLL_SUFFIX) || head.contains('/') =>
        {
            rest.to_string()
        }
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_library_files() {
        use std::env::consts::{DLL_PREFIX, DLL_SUFFIX};
        assert_eq!(
            file_name("echo"),
            PathBuf::from(format!("{DLL_PREFIX}loopd_echo{DLL_SUFFIX}"))
        );
        assert_eq!(
            file_name("udp-broadcast"),
            PathBuf::from(format!("{DLL_PREFIX}loopd_udp_broadcast{DLL_SUFFIX}"))
        );
        #[cfg(target_os = "linux")]
        assert_eq!(file_name("echo"), PathBuf::from("libloopd_echo.so"));
        #[cfg(target_vendor = "apple")]
        assert_eq!(file_name("echo"), PathBuf::from("libloopd_echo.dylib"));
        let c = candidates("echo", Some(Path::new("/opt/loopd")));
        assert_eq!(c[0], Path::new("/opt/loopd").join(file_name("echo")));
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn missing_files_say_where_we_looked() {
        let (path, why) = resolve(
            &PluginRef::Name("nope".into()),
            Some(Path::new("/nonexistent")),
        )
        .unwrap_err();
        assert_eq!(path, PathBuf::from("nope"));
        let wanted = Path::new("/nonexistent").join(file_name("nope"));
        assert!(why.contains(&wanted.display().to_string()), "{why}");
        assert!(!why.contains("relative"), "{why}");
        let (path, why) = resolve(&PluginRef::Path("/nonexistent/x.so".into()), None).unwrap_err();
        assert_eq!(path, PathBuf::from("/nonexistent/x.so"));
        assert_eq!(why, "file not found");
    }

    #[test]
    fn a_missing_relative_path_names_the_directory_it_was_resolved_against() {
        let cwd = std::env::current_dir().unwrap();
        let (path, why) = resolve(&PluginRef::Path("no/such/x.so".into()), None).unwrap_err();
        assert_eq!(path, PathBuf::from("no/such/x.so"));
        assert!(
            why.contains(&format!(
                "resolved against the working directory, {}",
                cwd.display()
            )),
            "{why}"
        );
        assert!(
            why.contains(&cwd.join("no/such/x.so").display().to_string()),
            "{why}"
        );
        let (_, why) =
            resolve(&PluginRef::Name("nope".into()), Some(Path::new("rel/dir"))).unwrap_err();
        assert!(
            why.contains(&format!(
                "a relative plugin_dir is resolved against the working directory, {}",
                cwd.display()
            )),
            "{why}"
        );
    }

    unsafe extern "C" fn hook(
        _: *mut abi::loopd_ctx,
        _: *mut std::ffi::c_void,
        _: u64,
        _: *const abi::loopd_listen_info,
    ) {
    }

    /// Found by the plugin_info fuzz target: a vtable whose struct_size ends
    /// inside a hook slot left half of that pointer (the rest zero) in the
    /// copy, a non-NULL hook that would jump to a torn address.
    #[test]
    fn a_vtable_size_inside_a_hook_copies_whole_hooks_only() {
        let mut theirs = loopd_vtable::EMPTY;
        theirs.on_listen = Some(hook);
        // SAFETY: only the bit pattern matters; this hook is never called.
        theirs.on_oversize = unsafe {
            std::mem::transmute::<usize, Option<abi::loopd_on_oversize_fn>>(0x1122_3344_5566_7788)
        };
        // Ends 4 bytes into on_oversize.
        theirs.struct_size = (std::mem::offset_of!(loopd_vtable, on_oversize) + 4) as u32;
        let info = loopd_plugin_info {
            struct_size: std::mem::size_of::<loopd_plugin_info>() as u32,
            abi_major: abi::LOOPD_ABI_MAJOR,
            abi_minor: abi::LOOPD_ABI_MINOR,
            min_host_minor: 0,
            name: c"torn".as_ptr(),
            version: c"1".as_ptr(),
            default_framing: abi::LOOPD_FRAMING_DEFAULT,
            reserved: 0,
            vtable: &theirs,
            alpn: std::ptr::null(),
            framings: 0,
            reserved2: 0,
        };
        // SAFETY: every pointer is valid for the call.
        let p = unsafe { check_info(&info, None) }.unwrap();
        assert!(p.vtable.on_listen.is_some(), "a whole hook was dropped");
        assert!(p.vtable.on_oversize.is_none(), "a torn hook was copied");
        assert!(p.vtable.on_partial.is_none());
    }

    fn info_with_alpn(
        vtable: &loopd_vtable,
        alpn: &std::ffi::CStr,
        size: usize,
    ) -> loopd_plugin_info {
        loopd_plugin_info {
            struct_size: size as u32,
            abi_major: abi::LOOPD_ABI_MAJOR,
            abi_minor: abi::LOOPD_ABI_MINOR,
            min_host_minor: 0,
            name: c"alpn".as_ptr(),
            version: c"1".as_ptr(),
            default_framing: abi::LOOPD_FRAMING_DEFAULT,
            reserved: 0,
            vtable,
            alpn: alpn.as_ptr(),
            framings: 0,
            reserved2: 0,
        }
    }

    #[test]
    fn a_plugins_framings_are_read_within_its_struct_size_and_checked() {
        let vtable = loopd_vtable::EMPTY;
        let full = std::mem::size_of::<loopd_plugin_info>();
        let bit = |f: FramingKind| abi::LOOPD_FRAMING_BIT(f.into());
        let read = |framings: u32, default: u32, size: usize| {
            let mut info = info_with_alpn(&vtable, c"", size);
            info.framings = framings;
            info.default_framing = default;
            // SAFETY: every pointer is valid for the call.
            unsafe { check_info(&info, None) }.map(|p| p.framings)
        };
        let line = bit(FramingKind::Line);
        assert_eq!(read(line, abi::LOOPD_FRAMING_LINE, full), Ok(line));
        assert_eq!(read(0, abi::LOOPD_FRAMING_LINE, full), Ok(0), "0 is any");
        // An ABI 1.4 plugin's info ends before the field: any framing.
        let v1_4 = std::mem::offset_of!(loopd_plugin_info, framings);
        assert_eq!(read(line, abi::LOOPD_FRAMING_LINE, v1_4), Ok(0));
        // A size that ends inside the field (a torn struct) reads none of it.
        assert_eq!(read(line, abi::LOOPD_FRAMING_LINE, v1_4 + 2), Ok(0));
        // Bits of framings a later loopd may know are dropped.
        assert_eq!(read(line | 1 << 9, abi::LOOPD_FRAMING_LINE, full), Ok(line));
        let why = read(1 << 9, abi::LOOPD_FRAMING_DEFAULT, full).unwrap_err();
        assert!(
            why.starts_with("plugin info framings 0x200 names no framing"),
            "{why}"
        );
        // The default must be one of them; without one, raw must be.
        let why = read(line, abi::LOOPD_FRAMING_RAW, full).unwrap_err();
        assert!(
            why.contains("(\"line\") does not include its default_framing \"raw\""),
            "{why}"
        );
        let why = read(line, abi::LOOPD_FRAMING_DEFAULT, full).unwrap_err();
        assert!(
            why.contains("does not include \"raw\", what an entry"),
            "{why}"
        );
        let raw = bit(FramingKind::Raw);
        assert_eq!(
            read(raw | line, abi::LOOPD_FRAMING_DEFAULT, full),
            Ok(raw | line)
        );
    }

    #[test]
    fn a_plugins_alpn_is_read_within_its_struct_size_and_checked() {
        let vtable = loopd_vtable::EMPTY;
        let full = std::mem::size_of::<loopd_plugin_info>();
        let read = |alpn: &std::ffi::CStr, size: usize| {
            let info = info_with_alpn(&vtable, alpn, size);
            // SAFETY: every pointer is valid for the call.
            unsafe { check_info(&info, None) }.map(|p| p.alpn)
        };
        assert_eq!(
            read(c"h2, http/1.1", full).unwrap(),
            vec!["h2".to_string(), "http/1.1".to_string()]
        );
        assert_eq!(read(c"", full).unwrap(), Vec::<String>::new());
        // An older plugin's info ends before the field: not read.
        assert_eq!(
            read(c"h2", abi::LOOPD_PLUGIN_INFO_V1_0_SIZE).unwrap(),
            Vec::<String>::new()
        );
        let long = std::ffi::CString::new("x".repeat(256)).unwrap();
        let why = read(&long, full).unwrap_err();
        assert!(why.contains("1 to 255 bytes"), "{why}");
        let why = read(c"h2,,http/1.1", full).unwrap_err();
        assert!(why.starts_with("plugin info alpn"), "{why}");
    }

    /// A fresh directory under the system's temporary one, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!(
                "loopd-plugin-test-{}-{n}-{tag}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// The first `len` bytes of this test binary (an ELF executable with
    /// the same program header layout as a library) at `to`.
    fn truncated_exe(to: &Path, len: u64) {
        use std::io::Read;
        let exe = std::fs::File::open(std::env::current_exe().unwrap()).unwrap();
        let mut bytes = Vec::new();
        exe.take(len).read_to_end(&mut bytes).unwrap();
        assert_eq!(bytes.len() as u64, len);
        std::fs::write(to, bytes).unwrap();
    }

    /// Runs `f` on another thread and gives up after a few seconds: a
    /// FIFO that reaches dlopen or a blocking open never returns.
    fn within_seconds<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("blocked on a FIFO")
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_truncated_library_is_refused_before_it_is_mapped() {
        let exe = std::env::current_exe().unwrap();
        // The whole file passes.
        check_library(&open_regular(&exe).unwrap()).unwrap();

        let dir = Scratch::new("trunc");
        let half = dir.0.join("half.so");
        // Past the program headers, inside the first load segment (the
        // debug info at the end of a test binary fits no fraction).
        truncated_exe(&half, 8192);
        // Through the loader's entry point: without the check, dlopen
        // would map the missing pages and this test process would die of
        // SIGBUS.
        let why = load_current(&half).unwrap_err();
        assert!(
            why.starts_with("the file is truncated: a load segment ends at byte "),
            "{why}"
        );
        assert!(
            why.ends_with(" but the file has 8192 bytes (was it still being copied?)"),
            "{why}"
        );

        let short = dir.0.join("short.so");
        truncated_exe(&short, 100);
        let why = load_current(&short).unwrap_err();
        assert!(
            why.starts_with("the file is truncated: the program header table ends at byte "),
            "{why}"
        );
        truncated_exe(&short, 40);
        let why = load_current(&short).unwrap_err();
        assert_eq!(
            why,
            "the file is truncated: the ELF header ends at byte 64 but the file has 40 bytes (was it still being copied?)"
        );
    }

    /// A replaced library is checked in its private copy (a reload), and
    /// the copy is removed when it is refused.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_truncated_replacement_is_refused_and_its_copy_removed() {
        let dir = Scratch::new("trunc-copy");
        let name = format!("replaced-{}.so", std::process::id());
        let half = dir.0.join(&name);
        truncated_exe(&half, 8192);
        let why = private_copy(&half).unwrap_err();
        assert!(why.starts_with("the file is truncated: "), "{why}");
        let left: Vec<_> = std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(&name))
            .collect();
        assert!(left.is_empty(), "copy left behind: {left:?}");
    }

    /// ELF32, big-endian, built by hand: the header is read in the byte
    /// order and class it says, and a segment with no file bytes (.bss)
    /// is not checked against the file's size.
    #[cfg(target_os = "linux")]
    #[test]
    fn elf32_big_endian_headers_are_read_as_they_say() {
        fn elf32_be(loads: &[(u32, u32)]) -> Vec<u8> {
            let mut b = vec![0u8; 52];
            b[..6].copy_from_slice(b"\x7fELF\x01\x02");
            b[28..32].copy_from_slice(&52u32.to_be_bytes()); // e_phoff
            b[42..44].copy_from_slice(&32u16.to_be_bytes()); // e_phentsize
            b[44..46].copy_from_slice(&(loads.len() as u16).to_be_bytes());
            for &(offset, filesz) in loads {
                let mut ph = [0u8; 32];
                ph[..4].copy_from_slice(&1u32.to_be_bytes()); // PT_LOAD
                ph[4..8].copy_from_slice(&offset.to_be_bytes());
                ph[16..20].copy_from_slice(&filesz.to_be_bytes());
                b.extend_from_slice(&ph);
            }
            b
        }
        let dir = Scratch::new("elf32");
        let path = dir.0.join("x.so");
        let check = |bytes: &[u8]| {
            std::fs::write(&path, bytes).unwrap();
            check_library(&open_regular(&path).unwrap())
        };
        // 52 + 2 * 32 = 116 bytes.
        check(&elf32_be(&[(0, 116), (4096, 0)])).unwrap();
        assert_eq!(
            check(&elf32_be(&[(0, 116), (100, 17)])).unwrap_err(),
            "the file is truncated: a load segment ends at byte 117 but the file has 116 bytes (was it still being copied?)"
        );
        let mut cut = elf32_be(&[(0, 10)]);
        cut.truncate(80);
        assert_eq!(
            check(&cut).unwrap_err(),
            "the file is truncated: the program header table ends at byte 84 but the file has 80 bytes (was it still being copied?)"
        );
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = Scratch::new("fifo");
        let fifo = dir.0.join("fifo.so");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c` is a NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let wanted = "it is a FIFO (named pipe), not a regular file";
        let p = fifo.clone();
        assert_eq!(
            within_seconds(move || load_current(&p)).unwrap_err(),
            wanted
        );
        // The opens themselves, as a FIFO that took a file's place after
        // the stat would meet them.
        let p = fifo.clone();
        assert_eq!(
            within_seconds(move || open_regular(&p)).unwrap_err(),
            wanted
        );
        let p = fifo.clone();
        assert_eq!(
            within_seconds(move || private_copy(&p)).unwrap_err(),
            wanted
        );
    }

    #[test]
    fn a_directory_is_refused() {
        let dir = Scratch::new("dir");
        let sub = dir.0.join("libloopd_x.so");
        std::fs::create_dir(&sub).unwrap();
        assert_eq!(
            load_current(&sub).unwrap_err(),
            "it is a directory, not a regular file"
        );
    }

    #[test]
    fn a_file_that_is_not_elf_keeps_the_loaders_reason() {
        let dir = Scratch::new("text");
        let path = dir.0.join("x.so");
        std::fs::write(&path, "hello").unwrap();
        let why = load_current(&path).unwrap_err();
        assert!(why.starts_with("not a loadable library: "), "{why}");
        std::fs::write(
            &path,
            "not an ELF file, but long enough to be one\n".repeat(10),
        )
        .unwrap();
        let why = load_current(&path).unwrap_err();
        assert!(why.starts_with("not a loadable library: "), "{why}");
        assert!(!why.contains("truncated"), "{why}");
    }

    /// A candidate that cannot be looked up (here a symlink loop; a
    /// directory without search permission behaves alike, but root may
    /// search anything) stops the search with its own error instead of
    /// reading as "not found" and moving on to the next place.
    #[test]
    fn a_path_that_cannot_be_looked_up_is_not_reported_missing() {
        let dir = Scratch::new("loop");
        let looped = dir.0.join(file_name("looped"));
        std::os::unix::fs::symlink(&looped, &looped).unwrap();
        let (path, why) = resolve(&PluginRef::Name("looped".into()), Some(&dir.0)).unwrap_err();
        assert_eq!(path, looped);
        assert!(why.starts_with("cannot look it up: "), "{why}");
        assert!(!why.contains("not found"), "{why}");
        let (path, why) = resolve(&PluginRef::Path(looped.clone()), None).unwrap_err();
        assert_eq!(path, looped);
        assert!(why.starts_with("cannot look it up: "), "{why}");
    }

    #[test]
    fn a_text_file_is_not_a_library() {
        let path = std::env::temp_dir().join(format!("loopd-not-a-lib-{}.so", std::process::id()));
        std::fs::write(&path, "hello").unwrap();
        let why = load(&path).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(why.starts_with("not a loadable library: "), "{why}");
    }
}
