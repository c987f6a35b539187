//! Fan-out under load: 500 clients in one room, 20 of them sending 50 lines
//! each, all at once. Every client receives every line from the others
//! exactly once and in each sender's order: loss 0.
//!
//! One thread drives all 500 clients through `polling` (tests/chat_support).

mod chat_support;
mod common;

use std::collections::HashMap;

use chat_support::*;
use common::*;

const CLIENTS: usize = 500;
const SENDERS: usize = 20;
const LINES: usize = 50;

/// Client index of sender `s`: spread over the fleet.
fn sender_client(s: usize) -> usize {
    s * (CLIENTS / SENDERS) + 7
}

#[derive(Default)]
struct Tally {
    nicks: Vec<Option<String>>,
    welcomed: usize,
    /// Sender nick -> sender number.
    sender_of: HashMap<String, usize>,
    /// [client][sender] -> the line number expected next.
    next: Vec<Vec<usize>>,
    /// Lines each client still has to receive.
    missing: Vec<usize>,
    missing_total: usize,
    /// Clients that received the end marker.
    ended: Vec<bool>,
    ended_total: usize,
}

fn text(line: &[u8]) -> &str {
    std::str::from_utf8(line).expect("the server sent UTF-8")
}

#[test]
fn five_hundred_clients_get_every_line_exactly_once_in_order() {
    // Fan-out at full speed: no rate limit (a sender's 50 lines at once
    // would otherwise partly wait, partly be refused).
    let loopd = Loopd::start(&chat_config("", UNLIMITED));
    let mut fleet = Fleet::connect(loopd.tcp("chat"), CLIENTS);
    let mut t = Tally {
        nicks: vec![None; CLIENTS],
        ..Tally::default()
    };

    // Everyone is in: a welcome each (join notices for later clients are
    // expected on the way).
    fleet.run_until(
        &mut t,
        "500 welcomes",
        |t, i, line| {
            let line = text(line);
            if line.starts_with("* welcome") {
                assert!(t.nicks[i].is_none(), "client {i} welcomed twice");
                t.nicks[i] = Some(welcome_nick(line));
                t.welcomed += 1;
            } else {
                assert!(
                    line.starts_with("* guest-") && line.ends_with(" joined"),
                    "client {i} got {line:?} while clients were joining"
                );
            }
        },
        |t| t.welcomed == CLIENTS,
    );
    // A round trip through the server per client would prove the join
    // notices are all out; instead each client can only get lines the
    // senders send after this point, and nothing else is tolerated.
    for s in 0..SENDERS {
        let nick = t.nicks[sender_client(s)].clone().unwrap();
        t.sender_of.insert(nick, s);
    }
    t.next = vec![vec![0; SENDERS]; CLIENTS];
    t.missing = (0..CLIENTS)
        .map(|i| {
            let own = (0..SENDERS).any(|s| sender_client(s) == i);
            LINES * (SENDERS - usize::from(own))
        })
        .collect();
    t.missing_total = t.missing.iter().sum();
    assert_eq!(t.missing_total, SENDERS * LINES * (CLIENTS - 1));

    // All senders at once, interleaved.
    for j in 0..LINES {
        for s in 0..SENDERS {
            fleet.send(
                sender_client(s),
                format!("line {j} from sender {s}\n").as_bytes(),
            );
        }
    }
    let mut joins_late = 0usize;
    fleet.run_until(
        &mut t,
        "every line at every client",
        |t, i, line| {
            let line = text(line);
            if line.starts_with("* guest-") && line.ends_with(" joined") {
                // A join notice sent before the first line, read only now.
                assert!(
                    t.next[i].iter().all(|&n| n == 0),
                    "client {i}: join notice {line:?} after chat lines"
                );
                joins_late += 1;
                return;
            }
            let (nick, said) = line
                .split_once(": ")
                .unwrap_or_else(|| panic!("client {i} got {line:?}"));
            let s = *t
                .sender_of
                .get(nick)
                .unwrap_or_else(|| panic!("client {i} got {line:?} from a non-sender"));
            assert_ne!(sender_client(s), i, "sender {s} got its own line back");
            let j = t.next[i][s];
            assert_eq!(
                said,
                format!("line {j} from sender {s}"),
                "client {i}: out of order, lost or repeated"
            );
            t.next[i][s] += 1;
            t.missing[i] -= 1;
            t.missing_total -= 1;
        },
        |t| t.missing_total == 0,
    );
    eprintln!("{joins_late} join notices were still in flight when the senders started");

    // Exactly once: after an end marker from one sender, which every other
    // client receives after all earlier lines, nothing else arrived.
    t.ended = vec![false; CLIENTS];
    let marker_from = sender_client(0);
    fleet.send(marker_from, b"end\n");
    let marker = format!("{}: end", t.nicks[marker_from].as_ref().unwrap());
    fleet.run_until(
        &mut t,
        "the end marker at every client",
        |t, i, line| {
            let line = text(line);
            assert_eq!(line, marker, "client {i}: a line after all were received");
            assert!(!t.ended[i], "client {i} got the marker twice");
            t.ended[i] = true;
            t.ended_total += 1;
        },
        |t| t.ended_total == CLIENTS - 1,
    );
    assert!(!t.ended[marker_from]);
    for i in 0..CLIENTS {
        assert!(!fleet.closed(i), "client {i} was disconnected");
        assert_eq!(fleet.unsent(i), 0);
    }
    let logs = loopd.logs();
    assert!(
        !logs.contains("slow consumer") && !logs.contains("panicked"),
        "{logs}"
    );
}
