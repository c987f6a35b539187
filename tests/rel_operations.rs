//! Operations (issue 20.13 and 20.15): probing an existing Unix socket at
//! start never blocks; Unix socket files get the configured mode and owner
//! whatever the umask; `[runtime] user`/`group` switch users once the
//! listeners are open (and are refused when loopd is not root); running as
//! root and plugins others could rewrite are warned about.
//!
//! The tests that switch users or chown need root; as another user they
//! say so and check nothing else.

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use common::*;

const NOBODY: u32 = 65534;

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `path` as a sockaddr_un.
fn unix_addr(path: &Path) -> (libc::sockaddr_un, libc::socklen_t) {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: all-zero is a valid sockaddr_un.
    let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in sun.sun_path.iter_mut().zip(path.as_os_str().as_bytes()) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + path.as_os_str().len() + 1;
    (sun, len as libc::socklen_t)
}

/// A non-blocking connect: the socket, or the error (EAGAIN: backlog full).
fn connect_nonblocking(path: &Path) -> std::io::Result<OwnedFd> {
    let (sun, len) = unix_addr(path);
    // SAFETY: plain values; the new descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0) };
    assert!(fd >= 0);
    // SAFETY: socket returned a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `sun` is a valid address of `len` bytes.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&sun as *const libc::sockaddr_un).cast(),
            len,
        )
    };
    if r == 0 {
        Ok(fd)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn echo_unix(dir: &str, extra: &str) -> String {
    format!(
        r#"
[runtime]
shutdown_timeout_ms = 2000

[[handler]]
name = "echo"
plugin = "echo"
listen = ["unix://{dir}/echo.sock"]
{extra}
"#
    )
}

#[test]
fn a_stopped_process_with_a_full_backlog_does_not_block_the_start() {
    let dir = TempDir::new("stopped-holder");
    let sock = dir.join("held.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    // SAFETY: a valid listening socket.
    assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
    // Another process holds the socket (as its fd 3), then stops.
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new("sleep");
    cmd.arg("60").stdin(Stdio::null());
    // SAFETY: dup2 and fcntl are async-signal-safe.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 || libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut holder = cmd.spawn().unwrap();
    drop(listener);
    let mut queued = Vec::new();
    loop {
        match connect_nonblocking(&sock) {
            Ok(c) => queued.push(c),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("filling the backlog: {e}"),
        }
        assert!(queued.len() < 1000, "the backlog never filled");
    }
    // SAFETY: a pid we own.
    assert_eq!(unsafe { libc::kill(holder.id() as i32, libc::SIGSTOP) }, 0);

    let config = write_config(
        &dir,
        &echo_unix(dir.path().to_str().unwrap(), "").replace("echo.sock", "held.sock"),
    );
    let started = Instant::now();
    let out = run_loopd(&[config.to_str().unwrap()]);
    let refused_ms = started.elapsed().as_millis();
    let _ = holder.kill();
    let _ = holder.wait();
    let stderr = String::from_utf8_lossy(&out.stderr);
    figure("rel_operations.full_backlog_refused_ms", refused_ms);
    figure("rel_operations.full_backlog_backlog", queued.len());
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("another process holds") && stderr.contains("accepts no connections"),
        "{stderr}"
    );
    assert!(sock.exists(), "the holder's socket file was removed");
}

/// Whether uid `uid` can connect to `path` (a forked child that switches
/// to it and tries).
fn can_connect_as(uid: u32, path: &Path) -> bool {
    let (sun, len) = unix_addr(path);
    // SAFETY: the child only calls async-signal-safe functions, then _exit.
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0);
        if pid == 0 {
            if libc::setgid(uid) != 0 || libc::setuid(uid) != 0 {
                libc::_exit(3);
            }
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            let r = libc::connect(fd, (&sun as *const libc::sockaddr_un).cast(), len);
            libc::_exit(if r == 0 { 0 } else { 1 });
        }
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
        assert!(libc::WIFEXITED(status));
        match libc::WEXITSTATUS(status) {
            0 => true,
            1 => false,
            other => panic!("the child could not switch users ({other})"),
        }
    }
}

#[test]
fn unix_socket_files_get_their_mode_and_owner_whatever_the_umask() {
    let start = |extra: &str| {
        Loopd::start_with(&echo_unix("{dir}", extra), "debug", |cmd| {
            use std::os::unix::process::CommandExt;
            // SAFETY: umask is async-signal-safe.
            unsafe {
                cmd.pre_exec(|| {
                    libc::umask(0);
                    Ok(())
                });
            }
        })
    };
    // Umask 000 used to give 0777: anyone could connect.
    let loopd = start("");
    let sock = loopd.unix("echo");
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o7777;
    figure(
        "rel_operations.default_mode_umask_000",
        format!("{mode:04o}"),
    );
    assert_eq!(mode, 0o660);
    echo_roundtrip(unix(&sock), b"owner connects");
    drop(loopd);

    let loopd = start(r#"unix_mode = "0600""#);
    let sock = loopd.unix("echo");
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o7777;
    figure("rel_operations.unix_mode_0600", format!("{mode:04o}"));
    assert_eq!(mode, 0o600);
    drop(loopd);

    if !is_root() {
        println!("not root: unix_owner/unix_group and other users' access not checked");
        return;
    }
    // Root's socket, 0660: nobody may not connect. Given to group
    // nogroup, nobody may.
    let loopd = start("");
    assert!(
        !can_connect_as(NOBODY, &loopd.unix("echo")),
        "0660 root:root let nobody in"
    );
    drop(loopd);
    let loopd = start(r#"unix_group = "nogroup""#);
    let sock = loopd.unix("echo");
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (0, NOBODY));
    assert!(
        can_connect_as(NOBODY, &sock),
        "group nogroup, 0660: nobody kept out"
    );
    drop(loopd);
    let loopd = start(
        r#"unix_mode = "0600"
unix_owner = "nobody"
unix_group = "nogroup""#,
    );
    let sock = loopd.unix("echo");
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o777),
        (NOBODY, NOBODY, 0o600)
    );
    assert!(can_connect_as(NOBODY, &sock));
    figure("rel_operations.unix_owner_group", "nobody:nogroup");
}

/// `/proc/PID/status`'s `Uid:`, `Gid:` and `Groups:` lines.
fn ids(pid: i32) -> (String, String, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or("")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    (field("Uid:"), field("Gid:"), field("Groups:"))
}

/// A free privileged TCP port on loopback (root only).
fn privileged_port() -> u16 {
    (700..1000)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port below 1024")
}

#[test]
fn user_and_group_are_switched_to_once_the_listeners_are_open() {
    if !is_root() {
        println!("not root: the user switch is not checked");
        return;
    }
    let port = privileged_port();
    let shared = TempDir::new("nobody-dir");
    std::os::unix::fs::chown(shared.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    let config = format!(
        r#"
[runtime]
shutdown_timeout_ms = 2000
user = "nobody"
group = "nogroup"

[[handler]]
name = "echo"
plugin = "echo"
listen = ["tcp://127.0.0.1:{port}", "unix://{}/echo.sock", "unix://{{dir}}/root-dir.sock"]
"#,
        shared.path().display()
    );
    let mut loopd = Loopd::start(&config);
    let (uid, gid, groups) = ids(loopd.pid());
    figure("rel_operations.switched_uid", &uid);
    figure("rel_operations.switched_gid", &gid);
    figure("rel_operations.switched_groups", &groups);
    assert_eq!(uid, "65534 65534 65534 65534");
    assert_eq!(gid, "65534 65534 65534 65534");
    assert!(
        groups.split(' ').all(|g| g == "65534" || g.is_empty()),
        "{groups}"
    );
    let logs = loopd.logs();
    assert!(
        logs.contains("now running as user nobody (uid 65534), group nogroup (gid 65534)"),
        "{logs}"
    );
    assert!(!logs.contains("loopd runs as root"), "{logs}");
    // The socket in a root-owned directory cannot be removed by nobody: said at start.
    assert!(
        logs.contains("root-dir.sock cannot be removed when loopd stops"),
        "{logs}"
    );
    // The privileged port, bound as root, serves as nobody.
    let mut s = tcp(format!("127.0.0.1:{port}").parse().unwrap());
    s.write_all(b"as nobody").unwrap();
    let mut buf = [0u8; 9];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"as nobody");
    drop(s);
    // `loopd reload`, run by root, hears back from loopd running as nobody
    // (which could not signal it): the answer comes back on the request's
    // connection.
    let out = run_loopd(&["reload", "--pid", &loopd.pid().to_string()]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!said.contains("did not answer"), "{said}");
    assert!(
        said.contains(&format!("loopd (process {}) ", loopd.pid())),
        "{said}"
    );
    if !out.status.success() {
        // Nobody may not read the config in root's directory: still an answer.
        loopd.expect_error("reload failed");
    }
    loopd.signal(libc::SIGTERM);
    assert_eq!(loopd.wait_exit(TIMEOUT).code(), Some(0), "{}", loopd.logs());
    assert!(
        !shared.join("echo.sock").exists(),
        "nobody's directory: removed"
    );
    assert!(
        loopd.logs().contains("cannot remove the socket file"),
        "{}",
        loopd.logs()
    );
}

/// `loopd reload` run by a user who could not signal loopd is refused, with
/// the reason, and nothing is reloaded.
#[test]
fn loopd_reload_from_another_user_is_refused() {
    if !is_root() {
        println!("not root: other users' reload requests are not checked");
        return;
    }
    let loopd = Loopd::start(
        r#"
[[handler]]
name = "echo"
plugin = "echo"
listen = ["tcp://127.0.0.1:0"]
"#,
    );
    let out = run_as_nobody(&["reload", "--pid", &loopd.pid().to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("refused: only root or uid 0 may control loopd, not uid 65534"),
        "{stderr}"
    );
    assert!(loopd.wait_for_log("control request from process", TIMEOUT));
    assert!(!loopd.logs().contains("reloaded: "), "{}", loopd.logs());
}

/// Runs loopd as user nobody.
fn run_as_nobody(args: &[&str]) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    build_plugins();
    Command::new(loopd_bin())
        .args(args)
        .uid(NOBODY)
        .gid(NOBODY)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn a_user_switch_is_refused_when_loopd_is_not_root() {
    if !is_root() {
        println!("not root: cannot start loopd as another user");
        return;
    }
    let dir = TempDir::new("not-root");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let config = write_config(
        &dir,
        "[runtime]\nuser = \"root\"\n\n[[handler]]\nname = \"echo\"\nplugin = \"echo\"\nlisten = [\"tcp://127.0.0.1:0\"]\n",
    );
    let out = run_as_nobody(&[config.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("loopd.toml:2:8: runtime.user: loopd runs as uid 65534, not as root, so it cannot switch to user root (uid 0)"),
        "{stderr}"
    );
    assert!(!stderr.contains("listening on"), "{stderr}");
    // `loopd check` need not run as root: it warns.
    let out = run_as_nobody(&["check", config.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("a check need not be root"), "{stderr}");
    figure("rel_operations.non_root_switch_refused", true);
}

#[test]
fn writable_plugins_and_running_as_root_are_warned_about() {
    build_plugins();
    let dir = TempDir::new("writable-plugin");
    let so = dir.join("libloopd_echo.so");
    std::fs::copy(plugin_dir().join("libloopd_echo.so"), &so).unwrap();
    let set =
        |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    set(dir.path(), 0o755);
    set(&so, 0o755);
    let config = write_config(
        &dir,
        &format!(
            "[[handler]]\nname = \"echo\"\nplugin = \"{}\"\n",
            so.display()
        ),
    );
    let check = || {
        let out = run_loopd(&["check", config.to_str().unwrap()]);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let clean = check();
    assert!(!clean.contains("writable by"), "{clean}");
    assert_eq!(clean.contains("loopd runs as root"), is_root(), "{clean}");

    set(&so, 0o777);
    let w = check();
    assert!(
        w.contains(&format!(
            "handler `echo`: plugin file {} is writable by its group and by others (mode 0777)",
            so.display()
        )),
        "{w}"
    );
    set(&so, 0o755);
    set(dir.path(), 0o775);
    let w = check();
    assert!(
        w.contains(&format!("the directory {} of plugin", dir.path().display()))
            && w.contains("is writable by its group (mode 0775)"),
        "{w}"
    );
    set(dir.path(), 0o755);
    figure("rel_operations.writable_plugin_warned", true);
}
