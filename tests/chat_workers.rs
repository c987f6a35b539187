//! Chat with `[runtime] workers = 2`, without Redis: members whose
//! connections land on both workers share rooms (every line, complete and
//! in order per sender), nicks (one taken on the other worker is refused),
//! `/who` and `/rooms`; a slow consumer is cut off while the others go on;
//! posts that find a sibling's mailbox full are retried, nothing lost; with
//! a Redis bridge as well, the workers are bridge instances and no line
//! comes twice.

mod chat_support;
mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chat_support::*;
use common::*;

const TIMEOUT: Duration = Duration::from_secs(10);

fn start(handler_keys: &str, chat_keys: &str) -> (Loopd, SocketAddr) {
    let config =
        chat_config(handler_keys, chat_keys).replacen("[runtime]\n", "[runtime]\nworkers = 2\n", 1);
    let loopd = Loopd::start(&config);
    let addr = loopd.tcp("chat");
    (loopd, addr)
}

/// The worker a member's connection landed on, from chat's debug line
/// `NICK joined (connection C, worker W)`.
fn worker_of(loopd: &Loopd, nick: &str) -> u32 {
    let needle = format!(" {nick} joined (connection ");
    assert!(
        loopd.wait_for_log(&needle, TIMEOUT),
        "no join logged for {nick}"
    );
    let logs = loopd.logs();
    let line = logs
        .lines()
        .find(|l| l.contains(&needle))
        .expect("the join line");
    let w = line
        .rsplit_once(", worker ")
        .and_then(|(_, w)| w.trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("no worker in {line:?}"));
    assert!(w < 2, "{line:?}");
    w
}

/// How many times [`start_members`] starts loopd for members on both
/// workers.
const STARTS: usize = 5;

/// Starts loopd as [`start`] does, runs `after_start` on it, and joins `n`
/// members; returns them with their workers. Every test here needs members
/// on both workers, and the kernel picks a worker's `SO_REUSEPORT` socket
/// by a hash of the client's port, so all `n` can land on one (both ways,
/// 2 in 2^n: for 12 members about one start in 2,000). Then loopd is
/// started again, at most [`STARTS`] times.
fn start_members(
    handler_keys: &str,
    chat_keys: &str,
    n: usize,
    after_start: impl Fn(&Loopd),
) -> (Loopd, Vec<(Chatter, u32)>) {
    let mut tries = Vec::new();
    loop {
        let (loopd, addr) = start(handler_keys, chat_keys);
        after_start(&loopd);
        let members: Vec<(Chatter, u32)> = (0..n)
            .map(|_| {
                let c = Chatter::join(addr);
                let w = worker_of(&loopd, &c.nick);
                (c, w)
            })
            .collect();
        let per_worker = [0, 1].map(|w| members.iter().filter(|m| m.1 == w).count());
        tries.push(per_worker);
        if per_worker.iter().all(|&k| k > 0) {
            figure("chat_workers_members_per_worker", format!("{tries:?}"));
            return (loopd, members);
        }
        assert!(
            tries.len() < STARTS,
            "in {STARTS} starts the kernel gave every connection to one worker: {tries:?}"
        );
    }
}

/// The nicks of a `/who` answer (one page).
fn who(c: &mut Chatter, room: &str) -> Vec<String> {
    c.send("/who");
    let line = c.recv();
    let list = line
        .strip_prefix(&format!("* online in {room}: "))
        .unwrap_or_else(|| panic!("not a /who answer: {line:?}"));
    list.split(", ").map(str::to_string).collect()
}

/// Asks `/who` until it lists `want` members (the other worker's presence
/// arrives by post, a moment later); returns that answer.
fn who_until(c: &mut Chatter, room: &str, want: usize) -> Vec<String> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let nicks = who(c, room);
        if nicks.len() == want || Instant::now() > deadline {
            return nicks;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn thirty_members_on_both_workers_hear_every_line_in_order() {
    const MEMBERS: usize = 30;
    const LINES: usize = 20;
    let (loopd, mut members) =
        start_members("", &format!("{UNLIMITED}quiet_above = 0"), MEMBERS, |_| {});

    // /who lists the members of both workers, from either worker.
    let mut all: Vec<String> = members.iter().map(|m| m.0.nick.clone()).collect();
    all.sort();
    for w in [0, 1] {
        let m = members.iter_mut().find(|m| m.1 == w).unwrap();
        let mut nicks = who_until(&mut m.0, "lobby", MEMBERS);
        nicks.sort();
        assert_eq!(nicks, all, "/who on worker {w}");
        m.0.send("/rooms");
        m.0.expect(&format!("* rooms: lobby ({MEMBERS})"));
    }

    // Everyone talks at once; everyone hears everyone else, in order.
    for (c, _) in members.iter_mut() {
        for j in 0..LINES {
            c.send(&format!("{j} from {} {}", c.nick, "x".repeat(j * 10)));
        }
    }
    for (c, w) in members.iter_mut() {
        let mut next: HashMap<String, usize> = HashMap::new();
        for _ in 0..(MEMBERS - 1) * LINES {
            let line = c.recv();
            let (sender, text) = line.split_once(": ").expect("a relayed line");
            let j = next.entry(sender.to_string()).or_default();
            assert_eq!(
                text,
                format!("{j} from {sender} {}", "x".repeat(*j * 10)),
                "{} (worker {w}) from {sender}",
                c.nick
            );
            *j += 1;
        }
        assert_eq!(next.len(), MEMBERS - 1, "{} heard everyone else", c.nick);
        assert!(next.values().all(|&n| n == LINES));
        c.expect_quiet();
    }

    // /rooms counts the rooms of both workers.
    let i0 = members.iter().position(|m| m.1 == 0).unwrap();
    let i1 = members.iter().position(|m| m.1 == 1).unwrap();
    // (Rooms of more than quiet_above = 0 members say so when joined.)
    let joined = |c: &mut Chatter, room: &str| {
        c.send(&format!("/join {room}"));
        let got = c.recv();
        assert!(
            got.starts_with(&format!("* you are now in {room} (")),
            "{got:?}"
        );
    };
    joined(&mut members[i0].0, "dev");
    joined(&mut members[i1].0, "Ops");
    let want = format!("* rooms: dev (1), lobby ({}), Ops (1)", MEMBERS - 2);
    let deadline = Instant::now() + TIMEOUT;
    for i in [i0, i1] {
        loop {
            members[i].0.send("/rooms");
            let got = members[i].0.recv();
            if got == want || Instant::now() > deadline {
                assert_eq!(got, want);
                break;
            }
        }
    }
    // A line in dev reaches the member of the other worker who joins it.
    joined(&mut members[i1].0, "dev");
    let mut dev = who_until(&mut members[i0].0, "dev", 2);
    dev.sort();
    let mut want = vec![members[i0].0.nick.clone(), members[i1].0.nick.clone()];
    want.sort();
    assert_eq!(dev, want, "/who in dev on worker 0");
    members[i0].0.send("over here");
    let from = members[i0].0.nick.clone();
    members[i1].0.expect(&format!("{from}: over here"));
    loopd.assert_no_unexpected_errors();
}

/// Sends `line` and returns the answer, past the rename notices of the
/// room (other members renaming themselves meanwhile).
fn answer(c: &mut Chatter, line: &str) -> String {
    c.send(line);
    loop {
        let got = c.recv();
        if !(got.starts_with("* ") && got.contains(" is now ") && !got.starts_with("* you ")) {
            return got;
        }
    }
}

#[test]
fn a_nick_taken_on_another_worker_is_refused() {
    let (loopd, mut members) = start_members("", "quiet_above = 0", 12, |_| {});
    // Guest nicks are unique over both workers.
    let mut nicks: Vec<&str> = members.iter().map(|m| m.0.nick.as_str()).collect();
    nicks.sort();
    nicks.dedup();
    assert_eq!(nicks.len(), members.len(), "{nicks:?}");

    let i0 = members.iter().position(|m| m.1 == 0).unwrap();
    let i1 = members.iter().position(|m| m.1 == 1).unwrap();
    // Taken on worker 0, refused on worker 1, and the other way round.
    assert_eq!(
        answer(&mut members[i0].0, "/nick alice"),
        "* you are now alice"
    );
    assert_eq!(
        answer(&mut members[i1].0, "/nick ALICE"),
        "! nick ALICE is taken"
    );
    assert_eq!(answer(&mut members[i1].0, "/nick bob"), "* you are now bob");
    assert_eq!(
        answer(&mut members[i0].0, "/nick Bob"),
        "! nick Bob is taken"
    );
    // Another member of worker 1 cannot take it either.
    if let Some(j) = members.iter().rposition(|m| m.1 == 1).filter(|&j| j != i1) {
        assert_eq!(
            answer(&mut members[j].0, "/nick bob"),
            "! nick bob is taken"
        );
    }
    // A nick given up on worker 1 is free again, once worker 0 hears it.
    assert_eq!(
        answer(&mut members[i1].0, "/nick carol"),
        "* you are now carol"
    );
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let got = answer(&mut members[i0].0, "/nick bob");
        if got == "* you are now bob" {
            break;
        }
        assert_eq!(got, "! nick bob is taken");
        assert!(Instant::now() < deadline, "bob was never given back");
        std::thread::sleep(Duration::from_millis(20));
    }
    loopd.assert_no_unexpected_errors();
}

#[test]
fn a_slow_consumer_is_cut_off_while_the_others_go_on() {
    const LINE_LEN: usize = 4000;
    const ROUND: usize = 25;
    let (loopd, mut members) = start_members(
        "output_high_watermark = 4096\noutput_low_watermark = 1024",
        &format!("{UNLIMITED}quiet_above = 0\nmax_pending = 262144"),
        12,
        |_| {},
    );
    let sender = members.iter().position(|m| m.1 == 0).unwrap();
    // The slow one, on the other worker: it gets the lines by post.
    let slow = members.iter().position(|m| m.1 == 1).unwrap();
    small_receive_buffer(members[slow].0.stream(), 4096);
    let slow_nick = members[slow].0.nick.clone();
    let cut = format!("disconnecting slow consumer {slow_nick} ");
    // Wait until the sender's worker knows the whole room.
    let n = members.len();
    who_until(&mut members[sender].0, "lobby", n);

    let mut sent = 0;
    let mut after = 0;
    while after < 5 {
        assert!(sent < 10_000, "{slow_nick} was never cut off");
        for _ in 0..ROUND {
            let text = format!("{sent:06} {}", "s".repeat(LINE_LEN - 7));
            members[sender].0.send(&text);
            sent += 1;
        }
        // Every member but the slow one reads what was sent.
        for (i, (c, _)) in members.iter_mut().enumerate() {
            if i == slow || i == sender {
                continue;
            }
            for j in sent - ROUND..sent {
                let line = c.recv();
                let (_, text) = line.split_once(": ").expect("a relayed line");
                assert_eq!(&text[..7], format!("{j:06} "), "{}", c.nick);
                assert_eq!(text.len(), LINE_LEN);
            }
        }
        if loopd.logs().contains(&cut) {
            after += 1;
        }
    }
    figure("chat_workers_lines_before_cut_off", sent - 5 * ROUND);
    // The slow one is gone from the room, on the sender's worker too (its
    // worker's gone record arrives by post).
    let left = who_until(&mut members[sender].0, "lobby", n - 1);
    assert_eq!(left.len(), n - 1, "{left:?}");
    assert!(!left.contains(&slow_nick), "{left:?}");
    members[sender].0.expect_quiet();
    loopd.assert_no_unexpected_errors();
}

#[test]
fn a_full_mailbox_delays_lines_but_loses_none() {
    // A mailbox of one message: most posts find it full, and are posted
    // again until the sibling takes them.
    const MEMBERS: usize = 12;
    const LINES: usize = 100;
    let (loopd, mut members) = start_members(
        "mailbox_messages = 1",
        &format!("{UNLIMITED}quiet_above = 0"),
        MEMBERS,
        |_| {},
    );
    // Whether a post finds the mailbox full depends on how the two workers'
    // passes interleave, so the burst is repeated (at most ROUNDS times)
    // until one has; every round must deliver every line, in order.
    const ROUNDS: usize = 5;
    const RETRIED: &str = "post(s) of chat retried so far";
    who_until(&mut members[0].0, "lobby", MEMBERS);
    let mut full = false;
    for round in 0..ROUNDS {
        every_line_to_everyone(&mut members, round * LINES..(round + 1) * LINES);
        // The line is written by the log thread, maybe after the lines
        // arrived.
        if loopd.wait_for_log(RETRIED, Duration::from_secs(1)) {
            full = true;
            break;
        }
    }
    assert!(
        full,
        "no post found the mailbox full in {ROUNDS} rounds of {LINES} lines from each of {MEMBERS}"
    );
    loopd.assert_no_unexpected_errors();
}

/// Has `from` say `sync` until `to` hears one, then `sync end`: once `to`
/// has that, the path from `from`'s worker to `to`'s is up (a Redis
/// subscription takes effect a moment after the join).
fn converge(from: &Chatter, to: &mut Chatter) {
    use std::io::Write as _;
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let mut w = from.stream().try_clone().unwrap();
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            while !stop.load(Ordering::SeqCst) && started.elapsed() < TIMEOUT {
                w.write_all(b"sync\n").unwrap();
                std::thread::sleep(Duration::from_millis(50));
            }
            w.write_all(b"sync end\n").unwrap();
        })
    };
    let sync = format!("{}: sync", from.nick);
    while to.recv() != sync {}
    stop.store(true, Ordering::SeqCst);
    sender.join().unwrap();
}

/// Reads until `line`, past sync lines only.
fn skip_to(c: &mut Chatter, line: &str) {
    loop {
        let got = c.recv();
        if got == line {
            return;
        }
        assert!(got.ends_with(": sync"), "{}: {got:?}", c.nick);
    }
}

#[test]
fn with_a_bridge_each_worker_is_a_bridge_instance_and_no_line_comes_twice() {
    const MEMBERS: usize = 10;
    const LINES: usize = 10;
    let redis = chat_support::redis::Redis::start();
    let (loopd, mut members) = start_members(
        "",
        &format!("bridge = \"{}\"\n{UNLIMITED}quiet_above = 0", redis.url()),
        MEMBERS,
        |loopd| {
            assert!(
                loopd.wait_for_logs("bridge: connected to", 2, TIMEOUT),
                "{}",
                loopd.logs()
            );
        },
    );
    let a = members.iter().position(|m| m.1 == 0).unwrap();
    let b = members.iter().position(|m| m.1 == 1).unwrap();
    // Both directions proven, and every member past the sync lines.
    let (lo, hi) = members.split_at_mut(a.max(b));
    let (ma, mb) = if a < b {
        (&mut lo[a], &mut hi[0])
    } else {
        (&mut hi[0], &mut lo[b])
    };
    converge(&ma.0, &mut mb.0);
    converge(&mb.0, &mut ma.0);
    let ends = [a, b].map(|i| format!("{}: sync end", members[i].0.nick));
    for (i, (c, _)) in members.iter_mut().enumerate() {
        if i != a {
            skip_to(c, &ends[0]);
        }
        if i != b {
            skip_to(c, &ends[1]);
        }
    }
    every_line_to_everyone(&mut members, 0..LINES);
    loopd.assert_no_unexpected_errors();
}

/// Every member says `{j} from {nick}` for each `j` of `lines`; then every
/// member must hear each other member's lines, each once, in order, and
/// nothing more.
fn every_line_to_everyone(members: &mut [(Chatter, u32)], lines: std::ops::Range<usize>) {
    for (c, _) in members.iter_mut() {
        for j in lines.clone() {
            c.send(&format!("{j} from {}", c.nick));
        }
    }
    let others = members.len() - 1;
    for (c, w) in members.iter_mut() {
        let mut next: HashMap<String, usize> = HashMap::new();
        for _ in 0..others * lines.len() {
            let line = c.recv();
            let (sender, text) = line.split_once(": ").expect("a relayed line");
            let j = next.entry(sender.to_string()).or_insert(lines.start);
            assert_eq!(
                text,
                format!("{j} from {sender}"),
                "{} (worker {w}, lines {lines:?})",
                c.nick
            );
            *j += 1;
        }
        assert_eq!(next.len(), others, "{}: {next:?}", c.nick);
        assert!(
            next.values().all(|&n| n == lines.end),
            "{}: {next:?}",
            c.nick
        );
        c.expect_quiet();
    }
}

#[test]
fn max_clients_is_the_processs_split_between_the_workers() {
    // 4 for the process: 2 per worker.
    let (loopd, addr) = start("", "max_clients = 4");
    let mut welcomed = Vec::new();
    let mut refused = 0;
    for _ in 0..16 {
        let mut c = LineClient::connect(addr);
        let first = c.recv();
        if first == "! server full" {
            assert_eq!(c.read_to_eof(), "", "closed right after");
            refused += 1;
        } else {
            welcomed.push(c);
        }
    }
    figure(
        "chat_workers_max_clients_4",
        format!("welcomed={} refused={refused}", welcomed.len()),
    );
    assert!(
        (1..=4).contains(&welcomed.len()),
        "{} welcomed with max_clients = 4",
        welcomed.len()
    );
    assert_eq!(welcomed.len() + refused, 16);
    assert!(loopd.wait_for_log("its share of 2 workers'", TIMEOUT));
    // The join lines are written by the log thread, maybe after the
    // welcomes arrived: wait for them.
    let deadline = std::time::Instant::now() + TIMEOUT;
    let (logs, joined) = loop {
        let logs = loopd.logs();
        let joined = [0, 1].map(|w| {
            logs.lines()
                .filter(|l| {
                    l.contains(" joined (connection ") && l.ends_with(&format!(", worker {w})"))
                })
                .count()
        });
        if joined.iter().sum::<usize>() >= welcomed.len() || std::time::Instant::now() > deadline {
            break (logs, joined);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(joined.iter().sum::<usize>(), welcomed.len(), "{logs}");
    assert!(
        joined.iter().all(|&j| j <= 2),
        "{joined:?} of max_clients = 4:\n{logs}"
    );
}
