//! Who loopd runs as: users and groups looked up by name or id, the switch
//! to `[runtime] user`/`group` once every listener is open (as nginx
//! does), and the warnings an operator should see: running as root, a
//! plugin that others could rewrite.

use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::Account;
use crate::error::Error;

/// A user to run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct User {
    pub(crate) uid: libc::uid_t,
    /// Its primary group.
    pub(crate) gid: libc::gid_t,
    /// Its name, for its supplementary groups (`None`: a numeric id with
    /// no passwd entry).
    pub(crate) name: Option<CString>,
}

/// `key` (as `runtime.user`) at `account`'s place in the file: `what`.
fn error(account: &Account, key: &str, what: impl std::fmt::Display) -> Error {
    match &account.location {
        Some(at) => Error::Config(format!("{at}: {key}: {what}")),
        None => Error::Config(format!("{key}: {what}")),
    }
}

/// Why a numeric user or group id cannot be used: `4294967295` is
/// `(uid_t)-1` (and `(gid_t)-1`), which `setresuid`, `setgroups` and
/// `chown` read as "leave it unchanged", not as an id. `None` for any
/// other name or number.
pub(crate) fn reserved_id(name: &str) -> Option<String> {
    let minus_one = name.parse::<libc::uid_t>() == Ok(libc::uid_t::MAX)
        || name.parse::<libc::gid_t>() == Ok(libc::gid_t::MAX);
    minus_one.then(|| {
        format!(
            "`{name}` is the id -1, which the system reads as \"leave unchanged\": it names no user or group"
        )
    })
}

/// Calls a `get*_r` function with a buffer that grows on `ERANGE`.
fn with_buffer<T>(
    mut call: impl FnMut(&mut [libc::c_char]) -> (libc::c_int, Option<T>),
) -> io::Result<Option<T>> {
    let mut size = 1024;
    loop {
        let mut buf = vec![0 as libc::c_char; size];
        match call(&mut buf) {
            (0, found) => return Ok(found),
            (libc::ERANGE, _) if size < 1 << 20 => size *= 4,
            (e, _) => return Err(io::Error::from_raw_os_error(e)),
        }
    }
}

fn passwd_by_name(name: &CStr) -> io::Result<Option<User>> {
    with_buffer(|buf| {
        // SAFETY: all-zero is a valid passwd to be filled in.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: valid pointers; `buf` outlives the reads of `pw` below.
        let r = unsafe {
            libc::getpwnam_r(
                name.as_ptr(),
                &mut pw,
                buf.as_mut_ptr(),
                buf.len(),
                &mut out,
            )
        };
        let found = (!out.is_null()).then(|| User {
            uid: pw.pw_uid,
            gid: pw.pw_gid,
            name: Some(name.to_owned()),
        });
        (r, found)
    })
}

fn passwd_by_uid(uid: libc::uid_t) -> io::Result<Option<User>> {
    with_buffer(|buf| {
        // SAFETY: all-zero is a valid passwd to be filled in.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: valid pointers; `buf` outlives the reads of `pw` below.
        let r = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
        let found = (!out.is_null()).then(|| User {
            uid: pw.pw_uid,
            gid: pw.pw_gid,
            // SAFETY: a found entry's name is a NUL-terminated string in `buf`.
            name: Some(unsafe { CStr::from_ptr(pw.pw_name) }.to_owned()),
        });
        (r, found)
    })
}

fn group_by_name(name: &CStr) -> io::Result<Option<libc::gid_t>> {
    with_buffer(|buf| {
        // SAFETY: all-zero is a valid group to be filled in.
        let mut gr: libc::group = unsafe { std::mem::zeroed() };
        let mut out: *mut libc::group = std::ptr::null_mut();
        // SAFETY: valid pointers; `buf` outlives the reads of `gr` below.
        let r = unsafe {
            libc::getgrnam_r(
                name.as_ptr(),
                &mut gr,
                buf.as_mut_ptr(),
                buf.len(),
                &mut out,
            )
        };
        (r, (!out.is_null()).then_some(gr.gr_gid))
    })
}

/// The user `account` names (`key` is its config key, for errors): a name
/// in the passwd database, or a numeric uid (with its passwd entry, if it
/// has one).
pub(crate) fn user(account: &Account, key: &str) -> Result<User, Error> {
    let fail = |what: String| error(account, key, what);
    if let Some(why) = reserved_id(&account.name) {
        return Err(fail(why));
    }
    if let Ok(uid) = account.name.parse::<libc::uid_t>() {
        return match passwd_by_uid(uid) {
            Ok(Some(u)) => Ok(u),
            // No entry: the uid alone, in the group of the same number
            // unless `group` says otherwise.
            Ok(None) => Ok(User {
                uid,
                gid: uid,
                name: None,
            }),
            Err(e) => Err(fail(format!("looking up uid {uid}: {e}"))),
        };
    }
    let name = CString::new(account.name.as_str()).map_err(|_| fail("contains NUL".into()))?;
    match passwd_by_name(&name) {
        Ok(Some(u)) => Ok(u),
        Ok(None) => Err(fail(format!(
            "no user named `{}` on this system",
            account.name
        ))),
        Err(e) => Err(fail(format!("looking up user `{}`: {e}", account.name))),
    }
}

/// The group `account` names: a name in the group database or a numeric gid.
pub(crate) fn group(account: &Account, key: &str) -> Result<libc::gid_t, Error> {
    let fail = |what: String| error(account, key, what);
    if let Some(why) = reserved_id(&account.name) {
        return Err(fail(why));
    }
    if let Ok(gid) = account.name.parse::<libc::gid_t>() {
        return Ok(gid);
    }
    let name = CString::new(account.name.as_str()).map_err(|_| fail("contains NUL".into()))?;
    match group_by_name(&name) {
        Ok(Some(g)) => Ok(g),
        Ok(None) => Err(fail(format!(
            "no group named `{}` on this system",
            account.name
        ))),
        Err(e) => Err(fail(format!("looking up group `{}`: {e}", account.name))),
    }
}

/// Whether loopd runs with root's effective uid.
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The effective uid.
pub(crate) fn euid() -> libc::uid_t {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// Switches the whole process (every thread) to `user` and group `gid`,
/// in the order that leaves no way back: supplementary groups (the user's,
/// or only `gid` for a uid without a passwd entry), then the group, then
/// the user. Checks the result, including that root cannot be regained.
pub(crate) fn switch_to(user: &User, gid: libc::gid_t) -> io::Result<()> {
    let check = |r: libc::c_int, what: &str| {
        if r == 0 {
            Ok(())
        } else {
            let e = io::Error::last_os_error();
            Err(io::Error::new(e.kind(), format!("{what}: {e}")))
        }
    };
    match &user.name {
        // SAFETY: a NUL-terminated name and a plain gid.
        Some(name) => check(
            unsafe { libc::initgroups(name.as_ptr(), gid as _) },
            "initgroups",
        )?,
        // SAFETY: one gid, for the duration of the call.
        None => check(unsafe { libc::setgroups(1, &gid) }, "setgroups")?,
    }
    // SAFETY: plain ids. setgid and setuid set the real, effective and saved
    // ids when the caller is root; glibc applies them to every thread.
    check(unsafe { libc::setgid(gid) }, "setgid")?;
    // SAFETY: as above.
    check(unsafe { libc::setuid(user.uid) }, "setuid")?;
    // SAFETY: these getters cannot fail.
    let (ruid, euid, rgid, egid) = unsafe {
        (
            libc::getuid(),
            libc::geteuid(),
            libc::getgid(),
            libc::getegid(),
        )
    };
    if (ruid, euid, rgid, egid) != (user.uid, user.uid, gid, gid) {
        return Err(io::Error::other(format!(
            "the switch did not take: uid {ruid}/{euid}, gid {rgid}/{egid}"
        )));
    }
    // SAFETY: a plain id; this must fail for a user other than root.
    if user.uid != 0 && unsafe { libc::setuid(0) } == 0 {
        return Err(io::Error::other("root could be regained after the switch"));
    }
    Ok(())
}

/// Whether the new user may remove files in `dir` (checked after the
/// switch: `access` uses the real ids).
pub(crate) fn can_write_dir(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a NUL-terminated path.
    unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

/// What is wrong with the permissions of a plugin file about to be loaded:
/// the file, or a directory it sits in (as given, and after following
/// symlinks), writable by its group or by others. Anyone who can write
/// there can make loopd run their code. A directory with the sticky bit
/// (`/tmp`) only lets others add files, not replace this one, and is not
/// reported.
pub(crate) fn plugin_warnings(path: &Path) -> Vec<String> {
    let mut warnings = Vec::new();
    let who = |mode: u32| match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (true, true) => "its group and by others",
        (true, false) => "its group",
        _ => "others",
    };
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o022 != 0 {
            warnings.push(format!(
                "plugin file {} is writable by {} (mode {:04o}): whoever can write it can run code inside loopd; `chmod go-w` it",
                path.display(),
                who(mode),
                mode & 0o7777
            ));
        }
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    let parent = |p: &Path| match p.parent() {
        Some(d) if d.as_os_str().is_empty() => Some(PathBuf::from(".")),
        Some(d) => Some(d.to_path_buf()),
        None => None,
    };
    dirs.extend(parent(path));
    if let Ok(real) = std::fs::canonicalize(path) {
        dirs.extend(parent(&real));
    }
    let mut seen = Vec::new();
    for dir in dirs {
        let Ok(meta) = std::fs::metadata(&dir) else {
            continue;
        };
        if seen.contains(&(meta.dev(), meta.ino())) {
            continue;
        }
        seen.push((meta.dev(), meta.ino()));
        let mode = meta.permissions().mode();
        if mode & 0o022 != 0 && mode & 0o1000 == 0 {
            warnings.push(format!(
                "the directory {} of plugin {} is writable by {} (mode {:04o}): whoever can write it can replace the plugin; `chmod go-w` it",
                dir.display(),
                path.display(),
                who(mode),
                mode & 0o7777
            ));
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_and_groups_by_name_and_number() {
        let root = user(&Account::new("root"), "runtime.user").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(user(&Account::new("0"), "runtime.user").unwrap(), root);
        let err = user(&Account::new("no-such-user-loopd"), "runtime.user").unwrap_err();
        assert!(
            err.to_string()
                .contains("runtime.user: no user named `no-such-user-loopd`"),
            "{err}"
        );
        assert_eq!(group(&Account::new("0"), "g").unwrap(), 0);
        assert_eq!(group(&Account::new("root"), "g").unwrap(), 0);
        let err = group(
            &Account::new("no-such-group-loopd"),
            "handler[0].unix_group",
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("handler[0].unix_group: no group named"),
            "{err}"
        );
        // A uid without an entry stands alone.
        let lone = user(&Account::new("3999999"), "runtime.user").unwrap();
        assert_eq!(
            (lone.uid, lone.gid, lone.name),
            (3_999_999, 3_999_999, None)
        );
    }

    #[test]
    fn the_id_minus_one_is_no_account() {
        // What setresuid, setgroups and chown read as "leave unchanged".
        let minus_one = Account::new("4294967295");
        for err in [
            user(&minus_one, "runtime.user").unwrap_err(),
            group(&minus_one, "runtime.group").unwrap_err(),
        ] {
            assert!(
                err.to_string().contains("`4294967295` is the id -1"),
                "{err}"
            );
        }
        let max = user(&Account::new("4294967294"), "runtime.user").unwrap();
        assert_eq!(max.uid, 4_294_967_294);
        assert_eq!(
            group(&Account::new("4294967294"), "g").unwrap(),
            4_294_967_294
        );
    }

    #[test]
    fn writable_plugins_and_directories_are_reported() {
        let dir = std::env::temp_dir().join(format!("loopd-priv-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let so = dir.join("libx.so");
        std::fs::write(&so, b"").unwrap();
        let set = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        set(&dir, 0o755);
        set(&so, 0o644);
        assert!(
            plugin_warnings(&so).is_empty(),
            "{:?}",
            plugin_warnings(&so)
        );
        set(&so, 0o664);
        let w = plugin_warnings(&so);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("writable by its group (mode 0664)"), "{w:?}");
        set(&so, 0o644);
        set(&dir, 0o777);
        let w = plugin_warnings(&so);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("is writable by its group and by others (mode 0777)"),
            "{w:?}"
        );
        set(&dir, 0o1777);
        assert!(
            plugin_warnings(&so).is_empty(),
            "a sticky directory is fine"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
