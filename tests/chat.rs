//! The chat handler's protocol, end to end: a scripted conversation through
//! every command, leave notices for every way of leaving, half-written lines,
//! long lines with every `max_frame` setting, the client limit, shutdown,
//! the shipped config and bad configs. (A framing other than `line` is
//! refused before chat starts: tests/setup_errors.rs.)

mod chat_support;
mod common;

use std::net::{Shutdown, SocketAddr};

use chat_support::*;
use common::*;

fn start(handler_keys: &str, chat_keys: &str) -> (Loopd, SocketAddr) {
    let loopd = Loopd::start(&chat_config(handler_keys, chat_keys));
    let addr = loopd.tcp("chat");
    (loopd, addr)
}

#[test]
fn a_scripted_conversation_covers_every_command() {
    let (_loopd, addr) = start("", "");

    // Joining: a welcome naming the nick and the room; the room is told.
    let mut a = Chatter::join(addr);
    assert_eq!(a.nick, "guest-1");
    let mut b = Chatter::join(addr);
    assert_eq!(b.nick, "guest-2");
    a.expect("* guest-2 joined");

    // /nick, collisions (case-insensitive), invalid nicks.
    a.expect_reply("/nick alice", "* you are now alice");
    b.expect("* guest-1 is now alice");
    b.expect_reply("/nick ALICE", "! nick ALICE is taken");
    b.expect_reply("/nick Alice", "! nick Alice is taken");
    b.expect_reply("/nick two words", "! invalid nick");
    b.expect_reply("/nick bob!", "! invalid nick");
    b.expect_reply("/nick bøb", "! invalid nick");
    b.expect_reply(&format!("/nick {}", "n".repeat(33)), "! invalid nick");
    b.expect_reply("/nick", "! usage: /nick NAME");
    a.expect_quiet();
    b.expect_reply("/nick bob", "* you are now bob");
    a.expect("* guest-2 is now bob");
    let long_nick = "N".repeat(32);
    b.expect_reply(
        &format!("/nick {long_nick}"),
        &format!("* you are now {long_nick}"),
    );
    a.expect(&format!("* bob is now {long_nick}"));
    b.expect_reply("/NICK bob", "* you are now bob");
    a.expect(&format!("* {long_nick} is now bob"));

    // guest-N skips a number somebody took by hand.
    a.expect_reply("/nick guest-3", "* you are now guest-3");
    b.expect("* alice is now guest-3");
    let mut c = Chatter::join(addr);
    assert_eq!(c.nick, "guest-4");
    a.expect("* guest-4 joined");
    b.expect("* guest-4 joined");
    // Changing only the case of one's own nick is allowed; the same nick
    // again is confirmed without bothering the room.
    a.expect_reply("/nick Alice", "* you are now Alice");
    b.expect("* guest-3 is now Alice");
    c.expect("* guest-3 is now Alice");
    a.expect_reply("/nick alice", "* you are now alice");
    b.expect("* Alice is now alice");
    c.expect("* Alice is now alice");
    a.expect_reply("/nick alice", "* you are now alice");
    b.expect_quiet();
    c.expect_quiet();

    // Plain text goes to everyone else; the sender gets nothing back.
    a.send("hello, world ✓ ünïcödé 日本語");
    b.expect("alice: hello, world ✓ ünïcödé 日本語");
    c.expect("alice: hello, world ✓ ünïcödé 日本語");
    a.expect_quiet();
    a.send_raw(b"sent with CRLF\r\n");
    b.expect("alice: sent with CRLF");
    c.expect("alice: sent with CRLF");
    a.send_raw(b"written in ");
    a.send_raw(b"three ");
    a.send_raw(b"pieces\n");
    b.expect("alice: written in three pieces");
    c.expect("alice: written in three pieces");
    a.send("//nick is how you rename");
    b.expect("alice: /nick is how you rename");
    c.expect("alice: /nick is how you rename");
    // Blank lines are ignored.
    a.send_raw(b"\n   \n\t\n");
    a.expect_quiet();
    b.expect_quiet();

    // /me goes to everyone else too.
    b.expect_reply("/me", "! usage: /me ACTION");
    b.send("/me waves at everyone");
    a.expect("+ bob waves at everyone");
    c.expect("+ bob waves at everyone");
    b.expect_quiet();

    // /who is sorted; /join leaves one room for another (created on demand,
    // named as first spelled, matched case-insensitively).
    c.expect_reply("/who", "* online in lobby: alice, bob, guest-4");
    c.expect_reply("/join Dev", "* you are now in Dev");
    a.expect("* guest-4 left");
    b.expect("* guest-4 left");
    c.expect_reply("/who", "* online in Dev: guest-4");
    b.expect_reply("/join dev", "* you are now in Dev");
    a.expect("* bob left");
    c.expect("* bob joined");
    c.expect_reply("/rooms", "* rooms: Dev (2), lobby (1)");
    b.expect_reply("/join DEV", "* you are already in Dev");
    b.expect_reply("/join no/such/room", "! invalid room name");
    b.expect_reply(&format!("/join {}", "r".repeat(33)), "! invalid room name");
    b.expect_reply("/join", "! usage: /join ROOM");

    // Text, actions and nick changes stay in their room.
    c.send("only for dev");
    b.expect("guest-4: only for dev");
    b.expect_reply("/nick bobby", "* you are now bobby");
    c.expect("* bob is now bobby");
    a.send("only for the lobby");
    a.send("/me sits alone");
    a.expect_quiet();
    b.expect_quiet();
    c.expect_quiet();

    // A room disappears with its last member.
    a.expect_reply("/join dev", "* you are now in Dev");
    b.expect("* alice joined");
    c.expect("* alice joined");
    a.expect_reply("/rooms", "* rooms: Dev (3)");
    a.expect_reply("/who", "* online in Dev: alice, bobby, guest-4");
    a.expect_reply("/join zoo", "* you are now in zoo");
    b.expect("* alice left");
    c.expect("* alice left");
    a.expect_reply("/join attic", "* you are now in attic");
    a.expect_reply("/rooms", "* rooms: attic (1), Dev (2)");
    a.expect_reply("/join Dev", "* you are now in Dev");
    b.expect("* alice joined");
    c.expect("* alice joined");

    // /help lists every command.
    a.send("/help");
    let mut help = Vec::new();
    loop {
        let line = a.recv();
        assert!(line.starts_with("* "), "help line {line:?}");
        let last = line.starts_with("* any other line");
        help.push(line);
        if last {
            break;
        }
    }
    let help = help.join("\n");
    for cmd in [
        "/nick NAME",
        "/join ROOM",
        "/who",
        "/rooms",
        "/me ACTION",
        "/quit",
        "/help",
    ] {
        assert!(help.contains(cmd), "/help does not list {cmd}:\n{help}");
    }
    a.expect_quiet();

    // Unknown commands and misuse; commands are case-insensitive.
    a.expect_reply("/x", "! unknown command /x (try /help)");
    a.expect_reply("/Dance wildly", "! unknown command /Dance (try /help)");
    a.expect_reply("/", "! unknown command / (try /help)");
    a.expect_reply("/who is there", "! usage: /who [FROM]");
    a.expect_reply("/rooms all of them", "! usage: /rooms [FROM]");
    a.expect_reply("/help me", "! usage: /help");
    a.expect_reply("/quit now", "! usage: /quit");
    a.expect_reply("/WHO", "* online in Dev: alice, bobby, guest-4");

    // Lines that are not clean text are refused and not relayed.
    a.send_raw(b"caf\xe9\n");
    a.expect("! invalid UTF-8: lines must be UTF-8 text");
    a.send_raw(b"\x1b[2J gotcha\n");
    a.expect("! control characters are not allowed");
    b.expect_quiet();
    c.expect_quiet();

    // /quit: a goodbye, the connection closes, the room is told once.
    c.expect_reply("/quit", "* bye");
    assert_eq!(c.read_to_eof(), "", "nothing after /quit's goodbye");
    a.expect("* guest-4 left");
    b.expect("* guest-4 left");
    a.expect_reply("/who", "* online in Dev: alice, bobby");
    b.expect_quiet();
}

#[test]
fn leave_notices_go_out_exactly_once_for_every_way_of_leaving() {
    let (loopd, addr) = start("", "");
    let mut w = Chatter::named(addr, "watcher");
    let mut joined = 0;
    let mut newcomer = |w: &mut Chatter, nick: &str| {
        let c = Chatter::named(addr, nick);
        joined += 1;
        w.expect(&format!("* guest-{} joined", joined + 1));
        w.expect(&format!("* guest-{} is now {nick}", joined + 1));
        c
    };

    // /quit.
    let mut q = newcomer(&mut w, "quitter");
    q.expect_reply("/quit", "* bye");
    assert_eq!(q.read_to_eof(), "");
    w.expect("* quitter left");

    // EOF (the client shuts down its sending side).
    let mut e = newcomer(&mut w, "eof");
    e.stream().shutdown(Shutdown::Write).unwrap();
    w.expect("* eof left");
    assert_eq!(e.read_to_eof(), "", "closed after EOF");

    // A plain close.
    let d = newcomer(&mut w, "dropped");
    drop(d);
    w.expect("* dropped left");

    // A reset (RST instead of FIN).
    let r = newcomer(&mut w, "reset");
    reset_on_drop(r.stream());
    drop(r);
    w.expect("* reset left");

    // Leaving from another room tells that room only.
    let mut m = newcomer(&mut w, "mover");
    m.expect_reply("/join elsewhere", "* you are now in elsewhere");
    w.expect("* mover left");
    let mut other = Chatter::named(addr, "other");
    w.expect("* guest-7 joined");
    w.expect("* guest-7 is now other");
    other.expect_reply("/join elsewhere", "* you are now in elsewhere");
    m.expect("* other joined");
    w.expect("* other left");
    reset_on_drop(m.stream());
    drop(m);
    other.expect("* mover left");

    // No second notice for anyone, and every nick is free again.
    w.expect_quiet();
    other.expect_quiet();
    w.expect_reply("/who", "* online in lobby: watcher");
    w.expect_reply("/rooms", "* rooms: elsewhere (1), lobby (1)");
    for nick in ["quitter", "eof", "dropped", "reset", "mover"] {
        w.expect_reply(&format!("/nick {nick}"), &format!("* you are now {nick}"));
    }
    assert!(
        !loopd.logs().contains("panicked"),
        "a hook panicked:\n{}",
        loopd.logs()
    );
}

#[test]
fn half_written_lines_are_never_broadcast_under_the_default_line_framing() {
    let (loopd, addr) = start("", "");
    let mut w = Chatter::named(addr, "watcher");
    for (n, how) in ["eof", "close", "reset", "quit-after", "command"]
        .into_iter()
        .enumerate()
    {
        let mut h = Chatter::named(addr, "half");
        w.expect(&format!("* guest-{} joined", n + 2));
        w.expect(&format!("* guest-{} is now half", n + 2));
        h.send("a complete line");
        w.expect("half: a complete line");
        match how {
            "eof" => {
                h.send_raw(b"a half-writ");
                h.stream().shutdown(Shutdown::Write).unwrap();
            }
            "close" => {
                h.send_raw(b"a half-writ");
                drop(h);
            }
            "reset" => {
                h.send_raw(b"a half-writ");
                reset_on_drop(h.stream());
                drop(h);
            }
            // The fragment was never ended: "/quit" arriving later is just
            // more of the same unfinished line, so the peer leaves by EOF.
            "quit-after" => {
                h.send_raw(b"a half-writ");
                h.send_raw(b"ten /quit");
                h.stream().shutdown(Shutdown::Write).unwrap();
            }
            // An unfinished command is not run either ("* half waves"
            // would reach the watcher before the leave notice).
            _ => {
                h.send_raw(b"/me waves\r");
                h.stream().shutdown(Shutdown::Write).unwrap();
            }
        }
        // The very next line is the leave notice: had the fragment been
        // relayed, it would have come first.
        w.expect("* half left");
    }
    w.expect_quiet();
    assert!(loopd.wait_for_log("EOF; a half-written line dropped (11 bytes)", TIMEOUT));
    assert!(loopd.wait_for_log("EOF; a half-written line dropped (20 bytes)", TIMEOUT));
    assert!(loopd.wait_for_log("EOF; a half-written line dropped (9 bytes)", TIMEOUT));
}

#[test]
fn long_lines_get_an_error_and_the_connection_stays() {
    // The same behaviour whatever loopd's max_frame is, as long as it is not
    // below max_line: loopd's default (1 MiB: lines up to it reach chat
    // whole), the shipped setting (max_frame = max_line: loopd skips longer
    // lines as they stream in), and one in between.
    for handler_keys in ["", "max_frame = 4096", "max_frame = 8192"] {
        let (loopd, addr) = start(handler_keys, "");
        let mut a = Chatter::join(addr);
        let mut b = Chatter::join(addr);
        a.expect("* guest-2 joined");

        // Exactly max_line bytes is fine, with or without \r.
        let full = "x".repeat(4096);
        a.send(&full);
        b.expect(&format!("guest-1: {full}"));
        a.send_raw(format!("{full}\r\n").as_bytes());
        b.expect(&format!("guest-1: {full}"));

        // One more is refused, and not relayed; so is one over max_frame
        // = 8192.
        for len in [4097, 4098, 5000, 8193, 10_000] {
            a.send(&"y".repeat(len));
            a.expect("! line too long (max 4096 bytes)");
        }
        b.expect_quiet();

        // Far longer than loopd's default max_frame (1 MiB): still one
        // error, no disconnect, and nothing of it relayed.
        let huge = vec![b'z'; 3 << 20];
        for chunk in huge.chunks(64 << 10) {
            a.send_raw(chunk);
        }
        a.send_raw(b"\n");
        a.expect("! line too long (max 4096 bytes)");
        a.send("still here");
        b.expect("guest-1: still here");
        a.expect_quiet();
        b.expect_quiet();

        // A long line in small pieces, followed by a good one in the same
        // write.
        let mut pieces = vec![b'p'; 5000];
        pieces.extend_from_slice(b"\nafter the long one\n");
        for chunk in pieces.chunks(100) {
            a.send_raw(chunk);
        }
        a.expect("! line too long (max 4096 bytes)");
        b.expect("guest-1: after the long one");
        a.expect_quiet();

        // loopd never disconnected anyone for it.
        assert!(
            !loopd.logs().contains("exceeds max_frame"),
            "{handler_keys:?}:\n{}",
            loopd.logs()
        );
    }
}

/// Resets a process's peak RSS (VmHWM) to its current RSS
/// (`/proc/PID/clear_refs`, Linux 4.0+).
fn reset_peak_rss(pid: i32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("writing clear_refs");
}

#[test]
fn a_megabyte_line_is_answered_and_skipped_as_it_streams_in() {
    // The shipped config: max_frame = max_line = 4096.
    let loopd = Loopd::start(&shipped_chat_config());
    let addr = loopd.tcp("chat");
    let mut a = Chatter::join(addr);
    let mut b = Chatter::join(addr);
    a.expect("* guest-2 joined");
    a.expect_quiet();
    b.expect_quiet();

    let pid = loopd.pid();
    let before = status_kib(pid, "VmRSS");
    reset_peak_rss(pid);
    // 1 MiB without its newline: the error comes before the line ends.
    const LINE: usize = 1 << 20;
    let huge = vec![b'm'; LINE];
    for chunk in huge.chunks(64 << 10) {
        a.send_raw(chunk);
    }
    a.expect("! line too long (max 4096 bytes)");

    // The line ends; the next one is a normal line, relayed as usual, and
    // the error came exactly once.
    a.send_raw(b"\nback to normal\n");
    b.expect("guest-1: back to normal");
    a.expect_quiet();
    b.expect_quiet();
    assert!(
        !loopd.logs().contains("exceeds max_frame"),
        "{}",
        loopd.logs()
    );
    // loopd has read all of it by now (the round trips above came after).
    let peak = status_kib(pid, "VmHWM");
    let after = status_kib(pid, "VmRSS");

    eprintln!("a {LINE}-byte line: loopd VmRSS {before} KiB -> {after} KiB, peak {peak} KiB");
    // Had loopd buffered the line, its peak would be up by at least its
    // size; a quarter of it is far above what reading and discarding
    // through loopd's 64 KiB read buffer costs.
    let limit_kib = (LINE / 4) >> 10;
    assert!(
        peak.saturating_sub(before) < limit_kib,
        "loopd's peak RSS grew by {} KiB for one skipped {LINE}-byte line (limit {limit_kib} KiB)",
        peak.saturating_sub(before)
    );
}

#[test]
fn a_max_frame_below_max_line_lowers_the_limit_with_a_warning() {
    let (loopd, addr) = start("max_frame = 1000", "");
    let mut a = Chatter::join(addr);
    let mut b = Chatter::join(addr);
    a.expect("* guest-2 joined");
    let ok = "k".repeat(1000);
    a.send(&ok);
    b.expect(&format!("guest-1: {ok}"));
    // The reply names the limit that applied.
    a.expect_reply(&"k".repeat(1001), "! line too long (max 1000 bytes)");
    a.expect_reply(&"k".repeat(5000), "! line too long (max 1000 bytes)");
    a.send("still here");
    b.expect("guest-1: still here");
    b.expect_quiet();
    assert!(loopd.wait_for_log(
        "max_frame (1000 bytes) is below chat's max_line (4096 bytes)",
        TIMEOUT
    ));
}

#[test]
fn max_line_is_configurable() {
    let (_loopd, addr) = start("", "max_line = 10");
    let mut a = Chatter::join(addr);
    let mut b = Chatter::join(addr);
    a.expect("* guest-2 joined");
    a.send("0123456789");
    b.expect("guest-1: 0123456789");
    a.expect_reply("0123456789a", "! line too long (max 10 bytes)");
    // Commands count too.
    a.expect_reply("/nick abcdefgh", "! line too long (max 10 bytes)");
    b.expect_quiet();
}

#[test]
fn the_client_after_max_clients_gets_server_full() {
    let (loopd, addr) = start("", "max_clients = 2");
    let mut a = Chatter::join(addr);
    let b = Chatter::join(addr);
    a.expect("* guest-2 joined");

    for _ in 0..3 {
        let mut extra = LineClient::connect(addr);
        assert_eq!(extra.recv(), "! server full");
        assert_eq!(extra.read_to_eof(), "", "closed right after");
    }
    assert!(loopd.wait_for_log("server full (max_clients = 2)", TIMEOUT));
    // Nobody was told about the refused ones.
    a.expect_quiet();

    // Once someone leaves, there is room again.
    drop(b);
    a.expect("* guest-2 left");
    let c = Chatter::join(addr);
    assert_eq!(c.nick, "guest-3");
    a.expect("* guest-3 joined");
    a.expect_reply("/who", "* online in lobby: guest-1, guest-3");
}

#[test]
fn shutdown_tells_every_client_and_closes_them() {
    let (mut loopd, addr) = start("", "");
    let mut a = Chatter::named(addr, "alice");
    let mut b = Chatter::named(addr, "bob");
    a.expect("* guest-2 joined");
    a.expect("* guest-2 is now bob");
    b.expect_reply("/join dev", "* you are now in dev");
    a.expect("* bob left");
    b.send_raw(b"half a line");

    loopd.signal(libc::SIGTERM);
    for c in [&mut a, &mut b] {
        c.expect("* server shutting down");
        assert_eq!(c.read_to_eof(), "", "nothing after the shutdown notice");
    }
    let status = loopd.wait_exit(TIMEOUT);
    assert!(status.success(), "{status}:\n{}", loopd.logs());
    assert!(loopd.logs().contains("closing 2 chat client(s)"));
}

#[test]
fn the_shipped_config_runs_chat_with_line_framing_and_max_frame_at_max_line() {
    let config = shipped_chat_config();
    for key in ["framing = \"line\"", "max_frame = 4096", "max_line = 4096"] {
        assert!(
            config.lines().any(|l| l.starts_with(key)),
            "examples/loopd.toml's chat section has no `{key}`:\n{config}"
        );
    }
    let loopd = Loopd::start(&config);
    let addr = loopd.tcp("chat");
    let mut a = Chatter::named(addr, "alice");
    let mut b = Chatter::join(addr);
    a.expect(&format!("* {} joined", b.nick));
    b.send("hi alice");
    a.expect(&format!("{}: hi alice", b.nick));
    let full = "f".repeat(4096);
    b.send(&full);
    a.expect(&format!("{}: {full}", b.nick));
    b.expect_reply(&"f".repeat(4097), "! line too long (max 4096 bytes)");
    b.send_raw(b"half");
    b.stream().shutdown(Shutdown::Write).unwrap();
    a.expect(&format!("* {} left", b.nick));
    a.expect_quiet();
    assert!(!loopd.logs().contains("chat needs framing"));
}

#[test]
fn bad_chat_config_stops_loopd_before_it_listens() {
    for (keys, expect) in [
        (
            "max_line = 0",
            "max_line = 0 is out of range: 1 to 1048576 bytes",
        ),
        ("max_line = 2000000", "max_line = 2000000 is out of range"),
        (
            "max_pending = 1000",
            "max_pending = 1000 is out of range: 4160 (max_line + 64",
        ),
        (
            "max_line = 100\nmax_pending = 163",
            "max_pending = 163 is out of range: 164",
        ),
        ("max_clients = 0", "max_clients = 0"),
        ("max_clients = -1", "invalid"),
        ("max_line = \"4096\"", "invalid type"),
        ("max_lines = 10", "unknown field `max_lines`"),
        (
            "rate_lines = 2000000",
            "rate_lines = 2000000 is out of range: 0 (no limit) to 1000000",
        ),
        ("rate_lines = -1", "invalid"),
        (
            "burst_lines = 0",
            "burst_lines = 0 is out of range: 1 to 1000000",
        ),
        (
            "rate_bytes = 2000000000",
            "rate_bytes = 2000000000 is out of range",
        ),
        (
            "burst_bytes = 1000",
            "burst_bytes = 1000 is out of range: 4096 (max_line",
        ),
        ("max_list = 0", "max_list = 0 is out of range: 1 to 10000"),
        ("quiet_above = -1", "invalid"),
    ] {
        let dir = TempDir::new("chat-config");
        let path = write_config(&dir, &chat_config("", keys));
        let out = run_loopd(&["check", path.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{keys:?} was accepted:\n{err}");
        assert!(
            err.contains(expect),
            "{keys:?}: expected {expect:?} in:\n{err}"
        );
        assert!(
            err.contains("chat"),
            "{keys:?}: the instance is not named:\n{err}"
        );
    }
    // And the limits at their edges are fine.
    let dir = TempDir::new("chat-config");
    let keys = "max_line = 1\nmax_pending = 65\nmax_clients = 1";
    let path = write_config(&dir, &chat_config("", keys));
    let out = run_loopd(&["check", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn actions_cannot_pass_for_notices_and_invisible_characters_are_removed() {
    let (_loopd, addr) = start("", "");
    let mut a = Chatter::named(addr, "alice");
    let mut b = Chatter::named(addr, "bob");
    a.expect("* guest-2 joined");
    a.expect("* guest-2 is now bob");

    // `/me left` looked exactly like the server's `* bob left`.
    b.send("/me left");
    a.expect("+ bob left");
    b.send("/me is now admin");
    a.expect("+ bob is now admin");

    // Trojan Source: an override that would show the rest reversed, and
    // zero-width characters inside words, are removed from relayed text.
    b.send("access\u{202E}nimda\u{202C} granted");
    a.expect("bob: accessnimda granted");
    b.send("\u{FEFF}hi\u{200B}there\u{200C}\u{200D}\u{2060}!");
    a.expect("bob: hithere!");
    b.send("/me \u{2066}waves\u{2069} \u{202A}\u{202B}\u{202D}\u{2067}\u{2068}");
    a.expect("+ bob waves");
    // A line of nothing else is blank, and ignored.
    b.send("\u{200B}\u{FEFF} \u{202E}");
    a.expect_quiet();
    // Other non-ASCII text is untouched.
    b.send("héllo ✓ 日本語 \u{200E}");
    a.expect("bob: héllo ✓ 日本語 \u{200E}");
    // The Unicode line breaks are refused like control characters: some
    // clients would show the rest as a line of its own.
    b.expect_reply(
        "fine\u{2028}* alice left",
        "! control characters are not allowed",
    );
    b.expect_reply("x\u{2029}y", "! control characters are not allowed");
    a.expect_quiet();
    // Commands and nicks go through the same cleaning.
    b.expect_reply("/ni\u{200B}ck ca\u{202E}rol", "* you are now carol");
    a.expect("* bob is now carol");
    b.expect_reply("/who\u{FEFF}", "* online in lobby: alice, carol");
}

#[test]
fn a_fast_sender_is_read_at_the_rate_and_nothing_it_sends_is_lost() {
    // 5 lines a second, bursts of 3, no byte limit.
    let (loopd, addr) = start("", "rate_lines = 5\nburst_lines = 3\nrate_bytes = 0");
    let mut w = Chatter::named(addr, "watcher");
    // No command before the test: its bucket is full.
    let mut s = Chatter::join(addr);
    w.expect("* guest-2 joined");

    // Ten lines at once, then /quit: 3 go at once, the rest as the bucket
    // refills (chat stops reading the sender meanwhile); /quit comes after
    // them, in order, and is not held to the rate itself.
    let mut burst = String::new();
    for i in 0..10 {
        burst.push_str(&format!("line {i}\n"));
    }
    burst.push_str("/quit\n");
    s.send_raw(burst.as_bytes());
    let mut relayed = Vec::new();
    loop {
        let line = w.recv();
        if line == "* guest-2 left" {
            break;
        }
        let text = line
            .strip_prefix("guest-2: line ")
            .unwrap_or_else(|| panic!("watcher got {line:?}"));
        relayed.push(text.parse::<usize>().unwrap());
    }
    let (replies, err) = s.read_until_closed();
    assert!(err.is_none(), "{err:?}");
    // Nothing refused, nothing to tell the sender but goodbye.
    assert_eq!(replies, ["* bye"]);
    assert_eq!(relayed, (0..10).collect::<Vec<_>>(), "all, in order");
    w.expect_quiet();
    assert!(
        loopd.wait_for_log("rate limit (5 lines/s): paused reading 1 time(s)", TIMEOUT),
        "{}",
        loopd.logs()
    );
}

/// Lines too long are refused, and count against the rate limit all the
/// same: a client sending only those is paused like one sending too many
/// lines, and every one still gets its answer, in order.
#[test]
fn lines_too_long_count_against_the_rate_limit() {
    let (loopd, addr) = start(
        "",
        "max_line = 50\nrate_lines = 5\nburst_lines = 3\nrate_bytes = 0",
    );
    let mut s = Chatter::join(addr);
    let mut burst = String::new();
    for _ in 0..10 {
        burst.push_str(&"x".repeat(60));
        burst.push('\n');
    }
    burst.push_str("/quit\n");
    s.send_raw(burst.as_bytes());
    let (replies, err) = s.read_until_closed();
    assert!(err.is_none(), "{err:?}");
    let mut expected = vec!["! line too long (max 50 bytes)"; 10];
    expected.push("* bye");
    assert_eq!(replies, expected);
    assert!(
        loopd.wait_for_log("lines too long)", TIMEOUT)
            && loopd.logs().contains("paused reading 1 time(s)"),
        "{}",
        loopd.logs()
    );
}

#[test]
fn the_byte_limit_holds_long_lines_back_and_eof_waits_for_them() {
    // 100 bytes a second, bursts of 100; lines up to 50 bytes.
    let (_loopd, addr) = start(
        "",
        "max_line = 50\nrate_lines = 0\nrate_bytes = 100\nburst_bytes = 100",
    );
    let mut w = Chatter::join(addr);
    let mut s = Chatter::join(addr);
    w.expect(&format!("* {} joined", s.nick));
    // Five lines of 40 bytes: two fit the burst, the other three go as the
    // bucket refills (at 100 bytes a second). Then EOF: loopd holds it
    // back while chat is not reading, so the sender leaves only after its
    // last line has gone.
    let line = |i: usize| format!("{i}{}", "b".repeat(39));
    let mut all = String::new();
    for i in 0..5 {
        all.push_str(&line(i));
        all.push('\n');
    }
    s.send_raw(all.as_bytes());
    s.stream().shutdown(Shutdown::Write).unwrap();
    for i in 0..5 {
        w.expect(&format!("{}: {}", s.nick, line(i)));
    }
    w.expect(&format!("* {} left", s.nick));
    w.expect_quiet();
    let (replies, err) = s.read_until_closed();
    assert!(err.is_none(), "{err:?}");
    assert!(replies.is_empty(), "then closed: {replies:?}");
}

#[test]
fn big_rooms_are_quiet_and_lists_come_a_page_at_a_time() {
    let (_loopd, addr) = start("", "quiet_above = 3\nmax_list = 2");
    let mut a = Chatter::join(addr);
    let mut b = Chatter::join(addr);
    a.expect("* guest-2 joined");
    let mut c = Chatter::join(addr);
    a.expect("* guest-3 joined");
    b.expect("* guest-3 joined");
    // The fourth member makes the room quiet: no join notice, no leave
    // notice while it is over 3.
    let mut d = Chatter::join(addr);
    let mut e = Chatter::join(addr);
    a.expect_quiet();
    d.expect_reply("/quit", "* bye");
    assert_eq!(d.read_to_eof(), "");
    a.expect_reply(
        "/who",
        "* online in lobby: guest-1, guest-2; 2 more: /who guest-3",
    );
    a.expect_reply(
        "/who guest-3",
        "* online in lobby from guest-3: guest-3, guest-5",
    );
    a.expect_reply("/who GUEST-5", "* online in lobby from GUEST-5: guest-5");
    a.expect_reply("/who zz", "* online in lobby from zz: none");
    // Still 4 (d is gone): c leaves unannounced.
    c.expect_reply("/quit", "* bye");
    assert_eq!(c.read_to_eof(), "");
    a.expect_quiet();
    // 3 left: announced again.
    b.expect_reply("/join x", "* you are now in x");
    a.expect("* guest-2 left");
    e.expect("* guest-2 left");
    b.expect_reply("/join lobby", "* you are now in lobby");
    a.expect("* guest-2 joined");
    e.expect("* guest-2 joined");
    // A fourth makes it quiet again; a room of more than 3 says so to
    // whoever joins it.
    let mut f = Chatter::join(addr);
    a.expect_quiet();
    a.expect_reply("/join big", "* you are now in big");
    b.expect_reply("/join big", "* you are now in big");
    a.expect("* guest-2 joined");
    for x in [&mut e, &mut f] {
        x.expect("* guest-2 left");
    }
    e.expect_reply("/join big", "* you are now in big");
    f.expect("* guest-5 left");
    a.expect("* guest-5 joined");
    b.expect("* guest-5 joined");
    f.expect_reply(
        "/join big",
        "* you are now in big (4 members: joins and leaves are not announced in rooms of \
         more than 3)",
    );
    a.expect_quiet();
    // f leaves a room of 4 (quiet), e one of 3, b one of 2.
    f.expect_reply("/join dev", "* you are now in dev");
    e.expect_reply("/join cellar", "* you are now in cellar");
    a.expect("* guest-5 left");
    b.expect("* guest-5 left");
    b.expect_reply("/join Attic", "* you are now in Attic");
    a.expect("* guest-2 left");
    a.expect_quiet();
    a.expect_reply(
        "/rooms",
        "* rooms: Attic (1), big (1); 2 more: /rooms cellar",
    );
    a.expect_reply("/rooms cellar", "* rooms from cellar: cellar (1), dev (1)");
    a.expect_reply("/rooms c", "* rooms from c: cellar (1), dev (1)");
    a.expect_reply(
        "/rooms BIG",
        "* rooms from BIG: big (1), cellar (1); 1 more: /rooms dev",
    );
    a.expect_reply("/rooms zoo", "* rooms from zoo: none");
}
