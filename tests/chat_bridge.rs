//! Chat rooms across loopd instances, bridged through a real redis-server
//! started by the test on a free loopback port (issue 19).
//!
//! - two instances: nicks unique across both, `/who` and `/rooms` list both,
//!   rooms stay separate, joins, renames, actions and leaves cross over;
//! - two and three instances: 10,000 lines from senders spread over the
//!   instances, every one delivered to every other member exactly once, in
//!   order per sender;
//! - Redis killed and started again: local chat never stops, members are
//!   told when the bridge goes and comes back, bridging resumes;
//! - an instance killed with SIGKILL: its members leave `/who` once their
//!   presence expires; one shut down gracefully leaves it at once;
//! - a slow consumer on one instance is cut off by that instance only.
//!
//! Pub/sub delivers what is published after a subscription takes effect,
//! so before counting on a line crossing over, a test proves the path with
//! [`converge`]: sync lines until one arrives.

mod chat_support;
mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_support::redis::Redis;
use chat_support::*;
use common::*;

/// Starts a chat instance bridged to `redis`, and waits until the bridge is
/// up.
fn bridged(redis: &Redis, chat_keys: &str) -> Loopd {
    let config = chat_config("", &format!("bridge = \"{}\"\n{chat_keys}", redis.url()));
    let loopd = Loopd::start(&config);
    assert!(
        loopd.wait_for_log("bridge: connected to", TIMEOUT),
        "{}",
        loopd.logs()
    );
    loopd
}

/// Has `from` say sync lines until `to` (on another instance) hears one,
/// then an end line: once `to` has that, everything `from`'s instance
/// publishes to that room reaches `to`'s instance. Returns the other lines
/// `to` got meanwhile.
fn converge(from: &Chatter, to: &mut Chatter) -> Vec<String> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut w = from.stream().try_clone().unwrap();
    let nick = from.nick.clone();
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            while !stop.load(Ordering::SeqCst) && started.elapsed() < TIMEOUT {
                w.write_all(b"sync\n").unwrap();
                std::thread::sleep(Duration::from_millis(100));
            }
            w.write_all(b"sync end\n").unwrap();
        })
    };
    let mut other = Vec::new();
    let sync = format!("{nick}: sync");
    loop {
        let line = to.recv();
        if line == sync {
            break;
        }
        other.push(line);
    }
    stop.store(true, Ordering::SeqCst);
    sender.join().unwrap();
    let end = format!("{nick}: sync end");
    loop {
        let line = to.recv();
        if line == end {
            return other;
        }
        if line != sync {
            other.push(line);
        }
    }
}

/// Sends `/who` until the answer is `want` (presence changes take a
/// heartbeat or an expiry to show); returns how many were asked.
fn wait_for_who(c: &mut Chatter, want: &str, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    let mut asked = 0;
    loop {
        c.send("/who");
        asked += 1;
        let mut got = c.recv();
        // Notices of joins and renames may come first.
        while !got.starts_with("* online in ")
            && (got.ends_with(" joined") || got.ends_with(" left") || got.contains(" is now "))
        {
            got = c.recv();
        }
        if got == want {
            return asked;
        }
        assert!(
            got.starts_with("* online in "),
            "{} got {got:?} where a /who answer was expected",
            c.nick
        );
        assert!(
            Instant::now() < deadline,
            "/who still says {got:?}, not {want:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn two_instances_share_rooms_nicks_and_lists() {
    let redis = Redis::start();
    let a_srv = bridged(&redis, "");
    let b_srv = bridged(&redis, "");
    let mut a = Chatter::join(a_srv.tcp("chat"));
    let mut b = Chatter::join(b_srv.tcp("chat"));
    // guest-N comes from Redis: never the same on two instances.
    assert_ne!(a.nick, b.nick);
    // Whether a heard b join depends on when A's subscription took
    // effect; from here on the path is proven, both ways.
    converge(&b, &mut a);
    converge(&a, &mut b);
    a.expect_reply("/nick alice", "* you are now alice");
    let old = std::mem::replace(&mut a.nick, "alice".into());
    b.expect(&format!("* {old} is now alice"));
    // Nicks are unique across instances, case-insensitively.
    b.expect_reply("/nick ALICE", "! nick ALICE is taken");
    b.expect_reply("/nick bob", "* you are now bob");
    let old = std::mem::replace(&mut b.nick, "bob".into());
    a.expect(&format!("* {old} is now bob"));

    a.send("hello from A");
    b.expect("alice: hello from A");
    b.send("/me waves");
    a.expect("+ bob waves");
    b.expect_reply("/who", "* online in lobby: alice, bob");
    a.expect_reply("/rooms", "* rooms: lobby (2)");

    // A third member, on B: a hears the join, the rename, and /who has 3.
    let mut c = Chatter::join(b_srv.tcp("chat"));
    a.expect(&format!("* {} joined", c.nick));
    b.expect(&format!("* {} joined", c.nick));
    c.expect_reply("/nick carol", "* you are now carol");
    let old = std::mem::replace(&mut c.nick, "carol".into());
    a.expect(&format!("* {old} is now carol"));
    b.expect(&format!("* {old} is now carol"));
    a.expect_reply("/who", "* online in lobby: alice, bob, carol");
    // Pages span instances too.
    let mut d = Chatter::join(a_srv.tcp("chat"));
    for x in [&mut a, &mut b, &mut c] {
        x.expect(&format!("* {} joined", d.nick));
    }
    d.expect_reply("/nick dave", "* you are now dave");
    let old = std::mem::replace(&mut d.nick, "dave".into());
    for x in [&mut a, &mut b, &mut c] {
        x.expect(&format!("* {old} is now dave"));
    }

    // Rooms stay separate: dev on both instances, lobby not told.
    a.expect_reply("/join dev", "* you are now in dev");
    for x in [&mut b, &mut c, &mut d] {
        x.expect("* alice left");
    }
    b.expect_reply("/join dev", "* you are now in dev");
    c.expect("* bob left");
    d.expect("* bob left");
    converge(&b, &mut a);
    converge(&a, &mut b);
    a.send("dev talk");
    b.expect("alice: dev talk");
    c.send("lobby talk");
    d.expect("carol: lobby talk");
    b.expect_reply("/who", "* online in dev: alice, bob");
    c.expect_reply("/who", "* online in lobby: carol, dave");
    d.expect_reply("/rooms", "* rooms: dev (2), lobby (2)");
    a.expect_quiet();
    b.expect_quiet();
    c.expect_quiet();

    // Leaving crosses over, and frees the nick everywhere.
    b.expect_reply("/quit", "* bye");
    a.expect("* bob left");
    a.expect_reply("/who", "* online in dev: alice");
    c.expect_reply("/nick bob", "* you are now bob");
    d.expect("* carol is now bob");
    a.expect_quiet();
    a_srv.assert_no_unexpected_errors();
    b_srv.assert_no_unexpected_errors();
}

/// `senders` clients spread over `instances` bridged instances send
/// `lines` numbered lines in all; every member must get every other
/// sender's lines once, in order.
fn lines_across(instances: usize, senders: usize, lines: usize) {
    let redis = Redis::start();
    let servers: Vec<Loopd> = (0..instances).map(|_| bridged(&redis, UNLIMITED)).collect();
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.tcp("chat")).collect();
    // Members: the senders round-robin, plus one listener per instance.
    let mut members: Vec<Chatter> = Vec::new();
    for i in 0..senders + instances {
        members.push(Chatter::join(addrs[i % instances]));
    }
    // Drain the join notices with a /rooms round trip each, then prove
    // every sender reaches every member.
    let total = members.len();
    for m in members.iter_mut() {
        m.send("/rooms");
        loop {
            let l = m.recv();
            if l.starts_with("* rooms: ") {
                break;
            }
            assert!(l.ends_with(" joined"), "{} got {l:?}", m.nick);
        }
    }
    for s in 0..senders {
        for r in 0..total {
            if r % instances == s % instances || r == s {
                continue;
            }
            let (from, to) = if s < r {
                let (x, y) = members.split_at_mut(r);
                (&x[s], &mut y[0])
            } else {
                let (x, y) = members.split_at_mut(s);
                (&y[0], &mut x[r])
            };
            let other = converge(from, to);
            assert!(
                other.iter().all(|l| l.ends_with(": sync")
                    || l.ends_with(": sync end")
                    || (l.starts_with("* guest-") && l.ends_with(" joined"))),
                "{other:?}"
            );
        }
    }
    // Sync lines from the same instance arrive directly: drain them.
    for m in members.iter_mut() {
        m.send("/rooms");
        loop {
            let l = m.recv();
            if l.starts_with("* rooms: ") {
                assert_eq!(l, format!("* rooms: lobby ({total})"));
                break;
            }
            assert!(
                l.contains(": sync") || l.ends_with(" joined"),
                "{} got {l:?}",
                m.nick
            );
        }
    }

    // The flood: each sender's share, as fast as the sockets take it.
    let per = lines / senders;
    let nicks: Vec<String> = members.iter().map(|m| m.nick.clone()).collect();
    let index: HashMap<String, usize> = nicks
        .iter()
        .enumerate()
        .map(|(i, n)| (n.clone(), i))
        .collect();
    let started = Instant::now();
    let writers: Vec<_> = (0..senders)
        .map(|s| {
            let mut w = members[s].stream().try_clone().unwrap();
            std::thread::spawn(move || {
                let mut batch = Vec::new();
                for n in 0..per {
                    batch.extend_from_slice(format!("n {n}\n").as_bytes());
                }
                w.write_all(&batch).unwrap();
            })
        })
        .collect();
    let readers: Vec<_> = members
        .into_iter()
        .enumerate()
        .map(|(r, mut m)| {
            let index = index.clone();
            std::thread::spawn(move || {
                let expected = if r < senders {
                    (senders - 1) * per
                } else {
                    senders * per
                };
                let mut next = vec![0usize; index.len()];
                let mut got = 0;
                while got < expected {
                    let line = m.recv();
                    if line.ends_with(": sync") || line.ends_with(": sync end") {
                        // Late from the convergence, on another instance.
                        continue;
                    }
                    let (nick, text) = line
                        .split_once(": n ")
                        .unwrap_or_else(|| panic!("{} got {line:?}", m.nick));
                    let s = index[nick];
                    let n: usize = text.parse().unwrap();
                    assert_eq!(n, next[s], "{} from {nick}: out of order or lost", m.nick);
                    next[s] += 1;
                    got += 1;
                }
                (got, m)
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let done: Vec<(usize, Chatter)> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    let elapsed = started.elapsed();
    let delivered: usize = done.iter().map(|(got, _)| got).sum();
    // Nothing more (nothing twice), with everyone still there.
    let mut members: Vec<Chatter> = done.into_iter().map(|(_, m)| m).collect();
    for m in members.iter_mut() {
        m.expect_quiet();
    }
    drop(members);
    let tag = format!("chat_bridge.instances_{instances}");
    figure(&format!("{tag}.lines"), per * senders);
    figure(&format!("{tag}.members"), total);
    figure(&format!("{tag}.deliveries"), delivered);
    figure(&format!("{tag}.elapsed_ms"), elapsed.as_millis());
    assert_eq!(delivered, per * senders * (total - 1));
    for s in &servers {
        assert!(!s.logs().contains("slow consumer"), "{}", s.logs());
        s.assert_no_unexpected_errors();
    }
}

#[test]
fn ten_thousand_lines_across_two_instances_arrive_once_in_order_per_sender() {
    lines_across(2, 4, 10_000);
}

#[test]
fn ten_thousand_lines_across_three_instances_arrive_once_in_order_per_sender() {
    lines_across(3, 5, 10_000);
}

#[test]
fn redis_killed_and_restarted_local_chat_goes_on_and_bridging_resumes() {
    let mut redis = Redis::start();
    let a_srv = bridged(&redis, "");
    let b_srv = bridged(&redis, "");
    let mut a = Chatter::named(a_srv.tcp("chat"), "alice");
    let mut a2 = Chatter::named(a_srv.tcp("chat"), "anna");
    let mut b = Chatter::named(b_srv.tcp("chat"), "bob");
    converge(&a, &mut b);
    converge(&b, &mut a);
    let drain = |c: &mut Chatter| {
        c.send("/rooms");
        loop {
            let l = c.recv();
            if l.starts_with("* rooms: ") {
                return;
            }
        }
    };
    drain(&mut a);
    drain(&mut a2);
    drain(&mut b);

    redis.kill();
    let down = "* the bridge to the other servers is down: until it is back, only this \
                server's members hear you";
    a.expect(down);
    a2.expect(down);
    b.expect(down);
    // Local chat never stops.
    a.send("still here");
    a2.expect("alice: still here");
    a2.expect_reply(
        "/who",
        "* online in lobby: alice, anna (this server only: the bridge to the others is down)",
    );
    b.expect_reply(
        "/who",
        "* online in lobby: bob (this server only: the bridge to the others is down)",
    );
    // A rename while down is checked locally only.
    a2.expect_reply("/nick ann", "* you are now ann");
    a2.nick = "ann".into();
    a.expect("* anna is now ann");
    assert!(
        a_srv.wait_for_log("cannot connect to", TIMEOUT),
        "{}",
        a_srv.logs()
    );

    redis.restart();
    let back = "* the bridge to the other servers is back";
    a.expect(back);
    a2.expect(back);
    b.expect(back);
    // What was said while down is not replayed; from now on it crosses.
    converge(&a, &mut b);
    converge(&b, &mut a2);
    drain(&mut a);
    drain(&mut a2);
    drain(&mut b);
    a.send("back again");
    b.expect("alice: back again");
    a2.expect("alice: back again");
    b.send("hi all");
    a.expect("bob: hi all");
    a2.expect("bob: hi all");
    // Presence was registered again.
    b.expect_reply("/who", "* online in lobby: alice, ann, bob");
    a.expect_reply("/nick BOB", "! nick BOB is taken");
    a.expect_quiet();
    assert!(
        a_srv.logs().contains("bridge: connected to") && a_srv.logs().contains("again"),
        "{}",
        a_srv.logs()
    );
}

#[test]
fn a_killed_instance_s_members_expire_and_a_stopped_one_s_go_at_once() {
    let redis = Redis::start();
    let ttl = "bridge_ttl_ms = 1500";
    let mut a_srv = bridged(&redis, ttl);
    let b_srv = bridged(&redis, ttl);
    // A long TTL: only a graceful shutdown removes its members quickly.
    let mut c_srv = bridged(&redis, "bridge_ttl_ms = 3600000");
    let _a = Chatter::named(a_srv.tcp("chat"), "alice");
    let mut b = Chatter::named(b_srv.tcp("chat"), "bob");
    let _c = Chatter::named(c_srv.tcp("chat"), "carol");
    wait_for_who(&mut b, "* online in lobby: alice, bob, carol", TIMEOUT);

    // SIGKILL: no goodbye; its presence expires after bridge_ttl_ms.
    a_srv.signal(libc::SIGKILL);
    a_srv.wait_exit(TIMEOUT);
    let started = Instant::now();
    let asked = wait_for_who(&mut b, "* online in lobby: bob, carol", TIMEOUT);
    figure(
        "chat_bridge.killed_expired_ms",
        started.elapsed().as_millis(),
    );
    figure("chat_bridge.killed_who_asked", asked);
    // Its nick is free again.
    b.expect_reply("/nick alice", "* you are now alice");
    b.expect_reply("/nick bob", "* you are now bob");

    // SIGTERM: its presence is deleted as it shuts down (its TTL is an
    // hour, so nothing else could remove it).
    let logs = c_srv.logs();
    let id = logs
        .split("instance id ")
        .nth(1)
        .and_then(|r| r.get(..16))
        .unwrap_or_else(|| panic!("no instance id in {logs}"))
        .to_string();
    let key = format!("loopd:chat:m:{id}");
    assert_eq!(redis.command(&["EXISTS", &key]), ":1");
    c_srv.signal(libc::SIGTERM);
    assert!(c_srv.wait_exit(TIMEOUT).success());
    assert_eq!(redis.command(&["EXISTS", &key]), ":0", "{}", c_srv.logs());
    assert_eq!(
        redis.command(&["SISMEMBER", "loopd:chat:instances", &id]),
        ":0"
    );
    b.expect_reply("/who", "* online in lobby: bob");
    b_srv.assert_no_unexpected_errors();
}

#[test]
fn a_remote_slow_consumer_is_cut_off_by_its_own_instance_only() {
    let redis = Redis::start();
    let keys = format!("{UNLIMITED}max_line = 1024\nmax_pending = 65536");
    let a_srv = bridged(&redis, &keys);
    let b_srv = bridged(&redis, &keys);
    let mut sender = Chatter::named(a_srv.tcp("chat"), "sender");
    let mut ra = Chatter::named(a_srv.tcp("chat"), "ra");
    let mut rb = Chatter::named(b_srv.tcp("chat"), "rb");
    // slow: on B, reads nothing.
    let mut slow = Chatter::named(b_srv.tcp("chat"), "slow");
    small_receive_buffer(slow.stream(), 4096);
    converge(&sender, &mut rb);
    converge(&sender, &mut slow);
    for c in [&mut sender, &mut ra, &mut rb] {
        c.send("/rooms");
        loop {
            if c.recv().starts_with("* rooms: ") {
                break;
            }
        }
    }
    // 12,000 lines of 1 KiB: 12 MiB, far over slow's 64 KiB of max_pending
    // plus what the kernel buffers for it (loopd's send buffer autotunes up
    // to tcp_wmem's maximum, 4 MiB by default: 4 MiB of lines could all fit
    // there and never reach max_pending).
    let n = 12_000;
    let mut batch = Vec::new();
    for i in 0..n {
        let mut line = format!("{i:05} ");
        line.push_str(&"x".repeat(1000));
        line.push('\n');
        batch.extend_from_slice(line.as_bytes());
    }
    let mut w = sender.stream().try_clone().unwrap();
    let writer = std::thread::spawn(move || w.write_all(&batch).unwrap());
    let read_all = move |c: &mut Chatter| {
        let mut next = 0;
        while next < n {
            let l = c.recv();
            let Some(text) = l.strip_prefix("sender: ") else {
                assert_eq!(l, "* slow left", "{} got {l:?}", c.nick);
                continue;
            };
            let i: usize = text[..5].parse().unwrap();
            assert_eq!(i, next, "{}: out of order or lost", c.nick);
            next += 1;
        }
        next
    };
    // Both fast readers read at once: either one left unread while the
    // other is read would be a slow consumer too.
    let reader_b = std::thread::spawn(move || {
        let got = read_all(&mut rb);
        (got, rb)
    });
    let got_a = read_all(&mut ra);
    let (got_b, _rb) = reader_b.join().unwrap();
    writer.join().unwrap();
    assert!(
        b_srv.wait_for_log("disconnecting slow consumer slow", TIMEOUT),
        "{}",
        b_srv.logs()
    );
    // The sender's instance never saw a slow consumer: slow is not its.
    let a_logs = a_srv.logs();
    figure("chat_bridge.slow_lines", n);
    figure(
        "chat_bridge.slow_fast_readers_got",
        format!("{got_a}+{got_b}"),
    );
    figure(
        "chat_bridge.slow_cut_on_sender_instance",
        a_logs.matches("slow consumer").count(),
    );
    assert!(!a_logs.contains("slow consumer"), "{a_logs}");
    assert_eq!(
        b_srv.logs().matches("disconnecting slow consumer").count(),
        1
    );
    // The sender was never disturbed: it hears slow leave, like anyone.
    sender.expect("* slow left");
    sender.expect_quiet();
    drop(sender);
}
