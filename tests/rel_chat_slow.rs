//! Reliability: one chat client stops reading while the others chat
//! (issue 8, item 6).
//!
//! Several members send at once and every member reads; one more member
//! never reads after joining. Figures: the healthy members receive 100% of
//! the lines of every other sender, in each sender's order; the silent one
//! is cut off as a slow consumer (every healthy member hears it leave);
//! loopd's RSS grows by at most
//! `max_pending` + 16 MiB. (tests/chat_slow.rs covers one sender and the
//! two ways the limit is reached in more detail.)

mod chat_support;
mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chat_support::*;
use common::*;

/// chat's default `max_pending` (docs/handlers/chat.md), set explicitly.
const MAX_PENDING: usize = 1 << 20;
/// The slack over `max_pending`.
const SLACK: usize = 16 << 20;
/// Bytes of text per line, without the sender's tag.
const LINE_LEN: usize = 1000;

/// Line `j` of sender `s`: `s<s>-<j> ` and filler up to LINE_LEN.
fn line(s: usize, j: usize) -> Vec<u8> {
    let mut v = format!("s{s:02}-{j:06} ").into_bytes();
    let fill = b'a' + ((s + j) % 26) as u8;
    v.resize(LINE_LEN, fill);
    v
}

/// Who a line came from and its number, if it is a well-formed flood line.
fn parse(text: &[u8]) -> Option<(usize, usize)> {
    let head = std::str::from_utf8(text.get(..11)?).ok()?;
    let s = head.get(1..3)?.parse().ok()?;
    let j = head.get(4..10)?.parse().ok()?;
    (text == line(s, j).as_slice()).then_some((s, j))
}

/// Joins every fleet member and waits until each has seen every join.
fn gather(fleet: &mut Fleet, members: usize) -> Vec<String> {
    let n = fleet.len();
    let mut nicks: Vec<Option<String>> = vec![None; n];
    fleet.run_until(
        &mut nicks,
        "the welcomes",
        |nicks, i, l| {
            let l = std::str::from_utf8(l).unwrap();
            if l.starts_with("* welcome") {
                nicks[i] = Some(welcome_nick(l));
            }
        },
        |nicks| nicks.iter().all(Option::is_some),
    );
    for i in 0..n {
        fleet.send(i, b"/rooms\n");
    }
    let want = format!("* rooms: lobby ({members})");
    let mut synced = vec![false; n];
    fleet.run_until(
        &mut synced,
        "a /rooms answer at every client",
        |synced, i, l| {
            let l = std::str::from_utf8(l).unwrap();
            if l.starts_with("* rooms:") {
                assert_eq!(l, want, "client {i}");
                synced[i] = true;
            }
        },
        |synced| synced.iter().all(|&s| s),
    );
    nicks.into_iter().map(Option::unwrap).collect()
}

#[test]
fn one_member_stops_reading_while_the_others_chat() {
    // CI: 10,000 lines (10 MB: the kernel's send buffer for the silent
    // member, up to 4 MiB, plus max_pending, several times over) to each
    // of 20 members; soak: 30,000 lines to 100.
    let members = tier(20, 100);
    let senders = tier(4, 10);
    let lines_each = tier(2_500, 3_000);
    let window = 32;
    // Flooding senders on purpose (no rate limit), and every member hears
    // the silent one leave (no quiet room, even with 101 members).
    let loopd = Loopd::start(&chat_config(
        "",
        &format!("{UNLIMITED}quiet_above = 1000\nmax_pending = {MAX_PENDING}"),
    ));
    let addr = loopd.tcp("chat");

    // The silent member: takes a nick, shrinks its receive buffer so its
    // backlog lands in loopd quickly, and never reads again.
    let silent = Chatter::named(addr, "silent");
    small_receive_buffer(silent.stream(), 4096);
    let mut fleet = Fleet::connect(addr, members);
    let nicks = gather(&mut fleet, members + 1);
    let sender_of: HashMap<Vec<u8>, usize> = nicks[..senders]
        .iter()
        .enumerate()
        .map(|(s, n)| (format!("{n}: ").into_bytes(), s))
        .collect();
    let baseline = status_kib(loopd.pid(), "VmRSS");

    // next[i][s]: the number of the line client i expects next from sender s.
    let mut next = vec![vec![0usize; senders]; members];
    let mut left = vec![0usize; members];
    let mut wrong: Vec<String> = Vec::new();
    let mut sent = vec![0usize; senders];
    let started = Instant::now();
    let mut last_move = (0usize, Instant::now());
    loop {
        // The slowest reader of each sender's lines bounds its window.
        let floor = |next: &Vec<Vec<usize>>, s: usize| {
            (0..members)
                .filter(|&i| i != s)
                .map(|i| next[i][s])
                .min()
                .unwrap()
        };
        let done = (0..senders).all(|s| floor(&next, s) == lines_each);
        if done {
            break;
        }
        for (s, sent) in sent.iter_mut().enumerate() {
            while *sent < lines_each && *sent < floor(&next, s) + window {
                let mut l = line(s, *sent);
                l.push(b'\n');
                fleet.send(s, &l);
                *sent += 1;
            }
        }
        fleet.poll(Duration::from_millis(100), |i, l| {
            if l == b"* silent left" {
                left[i] += 1;
                return;
            }
            let Some(at) = memchr::memmem::find(l, b": ") else {
                wrong.push(format!("client {i}: {:?}", String::from_utf8_lossy(l)));
                return;
            };
            let from = sender_of.get(&l[..at + 2]).copied();
            match (from, parse(&l[at + 2..])) {
                (Some(s), Some((s2, j))) if s == s2 && s != i && next[i][s] == j => next[i][s] += 1,
                _ => wrong.push(format!(
                    "client {i}: {:?}",
                    String::from_utf8_lossy(&l[..l.len().min(60)])
                )),
            }
        });
        assert!(wrong.len() < 20, "unexpected lines: {wrong:#?}");
        let progress: usize = next.iter().flatten().sum();
        if progress != last_move.0 {
            last_move = (progress, Instant::now());
        }
        assert!(
            last_move.1.elapsed() < TIMEOUT,
            "no progress for {TIMEOUT:?}: sent {sent:?}"
        );
    }
    let elapsed = started.elapsed();
    let peak = status_kib(loopd.pid(), "VmHWM");
    let growth_kib = peak.saturating_sub(baseline);

    // What each healthy member should have: every line of every sender but itself.
    let total = senders * lines_each;
    let expected: usize = (0..members)
        .map(|i| total - if i < senders { lines_each } else { 0 })
        .sum();
    let received: usize = next.iter().flatten().sum();
    let cut_off = loopd.wait_for_log("disconnecting slow consumer silent (connection", TIMEOUT);
    // Not read here: loopd dropped its queue, but what the kernel had taken
    // for it (up to a send buffer, megabytes) still trickles out through
    // its 4 KiB window for a minute or two after the close.
    drop(silent);
    eprintln!(
        "{total} lines from {senders} senders to {members} members in {elapsed:?}; \
         loopd VmRSS {baseline} KiB, peak {peak} KiB"
    );

    figure(
        "rel_chat_slow.healthy_received_pct",
        format!("{:.3}", 100.0 * received as f64 / expected as f64),
    );
    figure(
        "rel_chat_slow.healthy_received",
        format!("{received}/{expected}"),
    );
    figure("rel_chat_slow.rss_growth_kib", growth_kib);
    figure("rel_chat_slow.rss_limit_kib", (MAX_PENDING + SLACK) >> 10);
    figure("rel_chat_slow.silent_cut_off", cut_off);
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert_eq!(received, expected, "healthy members lost lines");
    assert!(
        cut_off,
        "the silent member was never cut off:\n{}",
        loopd.logs()
    );
    for (i, &notices) in left.iter().enumerate() {
        assert!(!fleet.closed(i), "healthy member {i} was disconnected");
        assert_eq!(notices, 1, "member {i}: `* silent left` notices");
    }
    // Under valgrind (LOOPD_VALGRIND=1) loopd's RSS is mostly valgrind's.
    assert!(
        valgrind() || growth_kib <= (MAX_PENDING + SLACK) >> 10,
        "loopd grew by {growth_kib} KiB (limit max_pending + 16 MiB)"
    );
}
