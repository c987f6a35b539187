//! Reliability: thousands of chat clients joining, thousands of rooms, and
//! a command flood (issue 20, item 7).
//!
//! Before: 8,000 clients joining one room made 32 million join notices
//! (6.4 s of loopd's CPU), and `/rooms` with 5,000 rooms answered 190 kB
//! to a 7-byte command, as often as a client cared to ask. Now, with chat's
//! defaults (`quiet_above = 100`, `max_list = 100`, 10 lines a second):
//! - the join storm makes exactly 100 × 99 / 2 = 4,950 join notices (one
//!   per existing member for each of the first 100 joins, none after);
//! - leaving a room of more than 100 is not announced either: 7,899 clients
//!   leave and the 100 left behind hear nothing until the room is down to
//!   100, then one leave notice each for the next;
//! - `/rooms` answers at most 100 rooms (under 5 kB), with a cursor; walking
//!   the cursor lists each of the 5,001 rooms exactly once, in order;
//! - 10,000 `/rooms` sent at once get a burst and then 10 a second
//!   answered, and nothing else (nothing refused): chat stops reading the
//!   client while its commands wait.
//!
//! The figures are counts and bytes; loopd's CPU time is reported, not
//! asserted.

mod chat_support;
mod common;

use std::time::{Duration, Instant};

use chat_support::*;
use common::*;

/// chat's defaults (docs/handlers/chat.md).
const QUIET_ABOVE: usize = 100;
const MAX_LIST: usize = 100;

/// Client 0 blasts commands; 1..=100 stay in the lobby and watch; the next
/// `rooms` each make a room of their own; the rest stay in the lobby.
const WATCHERS: usize = 100;

/// The longest `/rooms` answer a page can be: 100 entries of a 32-byte
/// name, ` (NNNNN)` and `, `, and the header and cursor.
const PAGE_BOUND: usize = MAX_LIST * (32 + 8 + 2) + 64 + 32;

fn text(line: &[u8]) -> &str {
    std::str::from_utf8(line).expect("the server sent UTF-8")
}

/// The guest number in a welcome line.
fn guest_number(line: &str) -> usize {
    welcome_nick(line)
        .strip_prefix("guest-")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a guest: {line:?}"))
}

#[derive(Default)]
struct Storm {
    guest: Vec<usize>,
    welcomed: usize,
    joins: Vec<usize>,
    synced: Vec<bool>,
    synced_total: usize,
    unexpected: Vec<String>,
}

#[test]
fn join_storms_room_lists_and_command_floods_stay_bounded() {
    // The figures; a quarter of them under valgrind (20 to 50
    // times slower), where every count is still exact.
    let (clients, rooms) = if valgrind() {
        (2_000, 1_250)
    } else {
        (8_000, 5_000)
    };
    let loopd = Loopd::start_with(&chat_config("", ""), "info", |_| {});
    let addr = loopd.tcp("chat");
    let pid = loopd.pid();

    // 1. The join storm.
    let cpu_before = cpu_time(pid);
    let started = Instant::now();
    let mut fleet = Fleet::connect(addr, clients);
    let mut s = Storm {
        guest: vec![0; clients],
        joins: vec![0; clients],
        synced: vec![false; clients],
        ..Storm::default()
    };
    fleet.run_until(
        &mut s,
        "every welcome",
        |s, i, line| {
            let line = text(line);
            if line.starts_with("* welcome") {
                s.guest[i] = guest_number(line);
                s.welcomed += 1;
            } else if line.starts_with("* guest-") && line.ends_with(" joined") {
                s.joins[i] += 1;
            } else {
                s.unexpected.push(format!("client {i}: {line:?}"));
            }
        },
        |s| s.welcomed == clients,
    );
    // Each client's /rooms answer comes after every notice sent to it.
    for i in 0..clients {
        fleet.send(i, b"/rooms\n");
    }
    let want = format!("* rooms: lobby ({clients})");
    fleet.run_until(
        &mut s,
        "a /rooms answer at every client",
        |s, i, line| {
            let line = text(line);
            if line == want {
                s.synced[i] = true;
                s.synced_total += 1;
            } else if line.starts_with("* guest-") && line.ends_with(" joined") {
                s.joins[i] += 1;
            } else {
                s.unexpected.push(format!("client {i}: {line:?}"));
            }
        },
        |s| s.synced_total == clients,
    );
    let storm_cpu = cpu_time(pid) - cpu_before;
    let join_notices: usize = s.joins.iter().sum();
    figure("rel_chat_rooms.clients", clients);
    figure("rel_chat_rooms.join_notices", join_notices);
    figure(
        "rel_chat_rooms.join_notices_unbounded",
        clients * (clients - 1) / 2,
    );
    figure(
        "rel_chat_rooms.join_storm_cpu_s",
        format!("{:.2}", storm_cpu.as_secs_f64()),
    );
    figure(
        "rel_chat_rooms.join_storm_ms",
        started.elapsed().as_millis(),
    );
    assert!(
        s.unexpected.is_empty(),
        "{:#?}",
        &s.unexpected[..s.unexpected.len().min(20)]
    );
    assert_eq!(join_notices, QUIET_ABOVE * (QUIET_ABOVE - 1) / 2);
    for i in 0..clients {
        // Guest g hears the joins of guests g+1 ..= 100.
        let g = s.guest[i];
        assert_eq!(s.joins[i], QUIET_ABOVE.saturating_sub(g), "guest-{g}");
    }

    // 2. 5,000 rooms. Leaving a room of 8,000 is quiet.
    let first_room = WATCHERS + 1;
    for i in first_room..first_room + rooms {
        fleet.send(i, format!("/join room-{i:04}\n").as_bytes());
    }
    let mut moved = 0;
    let mut unexpected = Vec::new();
    fleet.run_until(
        &mut moved,
        "5,000 /join answers",
        |moved, i, line| {
            let line = text(line);
            if line == format!("* you are now in room-{i:04}") {
                *moved += 1;
            } else {
                unexpected.push(format!("client {i}: {line:?}"));
            }
        },
        |moved| *moved == rooms,
    );
    assert!(
        unexpected.is_empty(),
        "{:#?}",
        &unexpected[..unexpected.len().min(20)]
    );
    // One page, then the whole list by its cursor.
    let total_rooms = rooms + 1;
    let lobby = clients - rooms;
    let mut pages: Vec<String> = Vec::new();
    let mut next = String::new();
    let mut listed: Vec<String> = Vec::new();
    loop {
        let command = if next.is_empty() {
            "/rooms\n".to_string()
        } else {
            format!("/rooms {next}\n")
        };
        fleet.send(1, command.as_bytes());
        let mut answer: Option<String> = None;
        fleet.run_until(
            &mut answer,
            "a /rooms answer",
            |answer, i, line| {
                assert_eq!(i, 1, "client {i} got {:?}", text(line));
                *answer = Some(text(line).to_string());
            },
            |answer| answer.is_some(),
        );
        let answer = answer.unwrap();
        let body = answer
            .split_once(": ")
            .map(|(_, b)| b)
            .unwrap_or_else(|| panic!("{answer:?}"));
        let (entries, more) = match body.rsplit_once("; ") {
            Some((entries, more)) => (entries, Some(more)),
            None => (body, None),
        };
        for e in entries.split(", ") {
            let (name, count) = e.rsplit_once(" (").unwrap_or_else(|| panic!("{e:?}"));
            let want = if name == "lobby" { lobby } else { 1 };
            assert_eq!(count, format!("{want})"), "{e:?}");
            listed.push(name.to_string());
        }
        pages.push(answer.clone());
        match more {
            Some(more) => {
                let (left, cursor) = more
                    .split_once(" more: /rooms ")
                    .unwrap_or_else(|| panic!("{more:?}"));
                assert_eq!(left.parse::<usize>().unwrap(), total_rooms - listed.len());
                next = cursor.to_string();
            }
            None => break,
        }
    }
    let first_page_bytes = pages[0].len() + 1;
    let largest_page = pages.iter().map(|p| p.len() + 1).max().unwrap();
    let mut sorted = listed.clone();
    sorted.sort_by_key(|n| n.to_ascii_lowercase());
    sorted.dedup();
    // What one /rooms answered before it was paged: every room.
    let bodies: Vec<&str> = pages
        .iter()
        .map(|p| {
            let body = p.split_once(": ").unwrap().1;
            body.rsplit_once("; ").map_or(body, |(entries, _)| entries)
        })
        .collect();
    let unpaged_bytes = "* rooms: ".len() + bodies.join(", ").len() + 1;
    figure("rel_chat_rooms.rooms", total_rooms);
    figure("rel_chat_rooms.rooms_unpaged_bytes", unpaged_bytes);
    figure("rel_chat_rooms.rooms_first_page_bytes", first_page_bytes);
    figure("rel_chat_rooms.rooms_largest_page_bytes", largest_page);
    figure("rel_chat_rooms.rooms_pages", pages.len());
    figure("rel_chat_rooms.rooms_listed", listed.len());
    assert!(largest_page <= PAGE_BOUND, "{largest_page} bytes");
    assert_eq!(listed.len(), total_rooms, "every room once");
    assert_eq!(sorted, listed, "in order, none twice");
    assert_eq!(pages.len(), total_rooms.div_ceil(MAX_LIST));
    // /who in a room of 3,000: one page too.
    fleet.send(1, b"/who\n");
    let mut who: Option<String> = None;
    fleet.run_until(
        &mut who,
        "a /who answer",
        |who, _, line| *who = Some(text(line).to_string()),
        |who| who.is_some(),
    );
    let who = who.unwrap();
    figure("rel_chat_rooms.who_bytes", who.len() + 1);
    let (nicks, more) = who
        .strip_prefix("* online in lobby: ")
        .and_then(|w| w.rsplit_once("; "))
        .unwrap_or_else(|| panic!("{who:?}"));
    assert_eq!(nicks.split(", ").count(), MAX_LIST, "{who:?}");
    assert!(
        more.starts_with(&format!("{} more: /who guest-", lobby - MAX_LIST)),
        "{who:?}"
    );
    assert!(who.len() < MAX_LIST * 34 + 64, "{} bytes", who.len());

    // 3. A command flood: 10,000 /rooms at once, then /quit. chat runs
    // them at the rate limit, not reading the rest meanwhile; after the
    // window the client hangs up (loopd notices when the next answer
    // bounces) and the rest are never run.
    let commands = 10_000;
    let mut blast = "/rooms\n".repeat(commands);
    blast.push_str("/quit\n");
    let window = tier(Duration::from_secs(3), Duration::from_secs(10));
    let started = Instant::now();
    fleet.send(0, blast.as_bytes());
    #[derive(Default)]
    struct Flood {
        answers: usize,
        answer_bytes: usize,
        unexpected: Vec<String>,
    }
    let mut f = Flood::default();
    while started.elapsed() < window {
        fleet.poll(Duration::from_millis(100), |i, line| {
            assert_eq!(i, 0, "client {i} got {:?}", text(line));
            let line = text(line);
            if line.starts_with("* rooms: ") {
                f.answers += 1;
                f.answer_bytes += line.len() + 1;
            } else {
                f.unexpected.push(line.to_string());
            }
        });
    }
    let elapsed = started.elapsed();
    fleet.close(0);
    let bound = 20 + (10.0 * (elapsed.as_secs_f64() + 1.0)) as usize;
    figure("rel_chat_rooms.command_flood_sent", commands);
    figure("rel_chat_rooms.command_flood_answered", f.answers);
    figure("rel_chat_rooms.command_flood_answered_bound", bound);
    figure("rel_chat_rooms.command_flood_answer_bytes", f.answer_bytes);
    figure(
        "rel_chat_rooms.command_flood_unpaged_unlimited_bytes",
        commands * unpaged_bytes,
    );
    // Only answers: nothing refused.
    assert!(f.unexpected.is_empty(), "{:?}", f.unexpected);
    assert!(
        f.answers >= 20 && f.answers <= bound,
        "{} answered",
        f.answers
    );
    assert!(f.answer_bytes <= f.answers * PAGE_BOUND);

    // 4. The leave storm: everyone but the watchers goes. The room is over
    // 100 until the last of them has left: no notice reaches a watcher.
    let cpu_before = cpu_time(pid);
    for i in first_room..clients {
        fleet.close(i);
    }
    let deadline = Instant::now() + TIMEOUT;
    let mut left_notices = vec![0usize; clients];
    let mut last_rooms = String::new();
    while last_rooms != format!("* rooms: lobby ({WATCHERS})") {
        assert!(Instant::now() < deadline, "still {last_rooms:?}");
        std::thread::sleep(Duration::from_millis(200));
        fleet.send(1, b"/rooms\n");
        let mut answer: Option<String> = None;
        fleet.run_until(
            &mut answer,
            "a /rooms answer",
            |answer, i, line| {
                let line = text(line);
                if line.starts_with("* rooms: ") && i == 1 {
                    *answer = Some(line.to_string());
                } else if line.ends_with(" left") {
                    left_notices[i] += 1;
                } else {
                    panic!("client {i} got {line:?}");
                }
            },
            |answer| answer.is_some(),
        );
        last_rooms = answer.unwrap();
    }
    let leave_cpu = cpu_time(pid) - cpu_before;
    // Every watcher proves nothing else is on its way.
    let mut synced = 0;
    for i in 1..=WATCHERS {
        fleet.send(i, b"/rooms\n");
    }
    fleet.run_until(
        &mut synced,
        "a /rooms answer at every watcher",
        |synced, i, line| {
            let line = text(line);
            if line == format!("* rooms: lobby ({WATCHERS})") {
                *synced += 1;
            } else if line.ends_with(" left") {
                left_notices[i] += 1;
            } else {
                panic!("client {i} got {line:?}");
            }
        },
        |synced| *synced == WATCHERS,
    );
    let quiet_leaves: usize = left_notices.iter().sum();
    // Now at 100: the next leave is announced to the 99 others.
    fleet.close(WATCHERS);
    let mut heard = 0;
    fleet.run_until(
        &mut heard,
        "99 leave notices",
        |heard, i, line| {
            let line = text(line);
            assert!(line.ends_with(" left"), "client {i} got {line:?}");
            *heard += 1;
        },
        |heard| *heard == WATCHERS - 1,
    );
    figure("rel_chat_rooms.leavers", clients - first_room);
    figure("rel_chat_rooms.leave_notices_while_over_100", quiet_leaves);
    figure("rel_chat_rooms.leave_notices_at_100", heard);
    figure(
        "rel_chat_rooms.leave_storm_cpu_s",
        format!("{:.2}", leave_cpu.as_secs_f64()),
    );
    assert_eq!(quiet_leaves, 0);
    assert_eq!(heard, WATCHERS - 1);
    for i in 1..WATCHERS {
        assert!(!fleet.closed(i), "watcher {i} was disconnected");
    }
    assert!(!loopd.logs().contains("slow consumer"), "{}", loopd.logs());
}
