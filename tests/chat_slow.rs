//! Slow consumers: a client that stops reading is disconnected once its
//! pending output exceeds `max_pending`, with a log line naming it; everyone
//! else keeps getting every line, in order; loopd's memory stays bounded.
//! Also both ways the limit is reached (loopd refusing at its high watermark
//! with chat holding the rest, or a high watermark above `max_pending`), and
//! a client that is merely behind losing nothing.

mod chat_support;
mod common;

use std::time::{Duration, Instant};

use chat_support::*;
use common::*;

/// Bytes of text in each line, without `"\n"`.
const LINE_LEN: usize = 1024;

/// The bytes after a flood line's number: the same in every line.
fn filler() -> &'static [u8] {
    static FILLER: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    FILLER.get_or_init(|| (7..LINE_LEN).map(|k| b'a' + (k % 26) as u8).collect())
}

/// Line `j` of the flood: a 6-digit number, a space, filler; `LINE_LEN` bytes.
fn flood_line(j: usize) -> Vec<u8> {
    let mut line = format!("{j:06} ").into_bytes();
    line.extend_from_slice(filler());
    line
}

/// Checks that `text` is flood line `j` without building it.
fn is_flood_line(text: &[u8], j: usize) -> bool {
    let number = text
        .get(..6)
        .and_then(|d| std::str::from_utf8(d).ok())
        .and_then(|d| d.parse::<usize>().ok());
    text.len() == LINE_LEN && number == Some(j) && text[6] == b' ' && text[7..] == *filler()
}

/// Joins `n` fleet clients, waits for their welcomes, then for a `/rooms`
/// answer each (so every join notice is out). Returns their nicks.
fn gather(fleet: &mut Fleet, members: usize) -> Vec<String> {
    let n = fleet.len();
    let mut nicks: Vec<Option<String>> = vec![None; n];
    let mut synced = vec![false; n];
    fleet.run_until(
        &mut nicks,
        "the welcomes",
        |nicks, i, line| {
            let line = std::str::from_utf8(line).unwrap();
            if line.starts_with("* welcome") {
                nicks[i] = Some(welcome_nick(line));
            }
        },
        |nicks| nicks.iter().all(Option::is_some),
    );
    for i in 0..n {
        fleet.send(i, b"/rooms\n");
    }
    let want = format!("* rooms: lobby ({members})");
    fleet.run_until(
        &mut synced,
        "a /rooms answer at every client",
        |synced, i, line| {
            let line = std::str::from_utf8(line).unwrap();
            if line.starts_with("* rooms:") {
                assert_eq!(line, want, "client {i}");
                synced[i] = true;
            } else {
                assert!(line.ends_with(" joined"), "client {i} got {line:?}");
            }
        },
        |synced| synced.iter().all(|&s| s),
    );
    nicks.into_iter().map(Option::unwrap).collect()
}

/// Per-receiver progress through the flood.
struct Progress {
    /// Sender nick plus ": ".
    prefix: Vec<u8>,
    /// Lines received, per client (the sender's entry stays 0).
    received: Vec<usize>,
    /// `* slow left` notices, per client.
    left: Vec<usize>,
    /// Held back: lines other than flood lines and the leave notice.
    unexpected: Vec<String>,
}

impl Progress {
    fn on_line(&mut self, i: usize, line: &[u8]) {
        if line == b"* slow left" {
            self.left[i] += 1;
            return;
        }
        let j = self.received[i];
        match line.strip_prefix(self.prefix.as_slice()) {
            Some(text) if i != 0 && is_flood_line(text, j) => self.received[i] += 1,
            _ => {
                let text = String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned();
                self.unexpected
                    .push(format!("client {i} (expecting line {j}): {text:?}"));
            }
        }
        assert!(
            self.unexpected.len() < 20,
            "unexpected lines: {:#?}",
            self.unexpected
        );
    }
}

/// Sends flood lines from fleet client 0, never more than `window` lines
/// ahead of the slowest other fleet client (the fleet reads as fast as it
/// can; the window only keeps a reading client from falling a megabyte
/// behind when the machine is busy), until `lines` are sent or `stop()`
/// says so, then waits until every other fleet client has all that was
/// sent. Returns how many were sent. Fails if nothing moves for [`TIMEOUT`].
fn flood(
    fleet: &mut Fleet,
    progress: &mut Progress,
    lines: usize,
    window: usize,
    stop: impl Fn() -> bool,
) -> usize {
    let mut sent = progress.received[1..].iter().copied().min().unwrap();
    let mut last_progress = Instant::now();
    let mut last_floor = sent;
    let mut stopped = false;
    loop {
        let floor = progress.received[1..].iter().copied().min().unwrap();
        if floor == sent && (sent == lines || stopped) {
            return sent;
        }
        if floor != last_floor {
            last_floor = floor;
            last_progress = Instant::now();
        }
        assert!(
            last_progress.elapsed() < TIMEOUT,
            "no progress for {TIMEOUT:?}: sent {sent}, slowest reader at {floor}, unexpected: {:#?}",
            progress.unexpected
        );
        stopped = stopped || stop();
        while !stopped && sent < lines && sent < floor + window {
            let mut line = flood_line(sent);
            line.push(b'\n');
            fleet.send(0, &line);
            sent += 1;
        }
        fleet.poll(Duration::from_millis(100), |i, line| {
            progress.on_line(i, line)
        });
    }
}

/// Whether loopd logged `needle` yet (no waiting).
fn logged(loopd: &Loopd, needle: &str) -> bool {
    loopd.wait_for_log(needle, Duration::ZERO)
}

/// Asserts what a cut-off client received: every line it got is in order,
/// starting at line 0 with none missing, and it stops before `total`.
fn assert_in_order_prefix(lines: &[String], prefix: &str, total: usize) -> usize {
    let mut flood: Vec<&String> = lines.iter().filter(|l| l.starts_with(prefix)).collect();
    // The very last line may have been cut short by the disconnect (see
    // `read_until_closed`): then it must be the start of the next line.
    if let Some(last) = flood.last() {
        let j = flood.len() - 1;
        let text = &last.as_bytes()[prefix.len()..];
        if text.len() < LINE_LEN && lines.last() == Some(*last) {
            assert!(
                flood_line(j).starts_with(text),
                "the cut-off client's last, partial line {j} is wrong: {:?}",
                &last[..last.len().min(80)]
            );
            flood.pop();
        }
    }
    for (j, line) in flood.iter().enumerate() {
        assert!(
            is_flood_line(&line.as_bytes()[prefix.len()..], j),
            "the cut-off client's line {j} is wrong: {:?}",
            &line[..line.len().min(80)]
        );
    }
    assert!(
        flood.len() < total,
        "the slow client received all {total} lines"
    );
    flood.len()
}

#[test]
fn a_client_that_stops_reading_is_cut_off_and_the_other_98_get_everything() {
    const LINES: usize = 20_000;
    const RECEIVERS: usize = 98;
    const MAX_PENDING: usize = 1 << 20;
    const SLACK: usize = 16 << 20;
    // The flood needs no rate limit (it would keep the slow client's
    // backlog small), and every leave notice is counted (no quiet room).
    let loopd = Loopd::start(&chat_config("", &format!("{UNLIMITED}quiet_above = 1000")));
    let addr = loopd.tcp("chat");

    // The slow one takes a nick, then never reads again.
    let mut slow = Chatter::named(addr, "slow");
    // Client 0 sends; 1..=98 read.
    let mut fleet = Fleet::connect(addr, 1 + RECEIVERS);
    let nicks = gather(&mut fleet, 2 + RECEIVERS);
    let baseline = status_kib(loopd.pid(), "VmRSS");

    let mut progress = Progress {
        prefix: format!("{}: ", nicks[0]).into_bytes(),
        received: vec![0; fleet.len()],
        left: vec![0; fleet.len()],
        unexpected: Vec::new(),
    };
    let started = Instant::now();
    flood(&mut fleet, &mut progress, LINES, 64, || false);
    let elapsed = started.elapsed();

    let rss = status_kib(loopd.pid(), "VmRSS");
    let peak = status_kib(loopd.pid(), "VmHWM");
    eprintln!(
        "{LINES} lines of {LINE_LEN} bytes to {RECEIVERS} readers in {elapsed:?} \
         (loopd used {:?} of CPU); loopd VmRSS {baseline} KiB -> {rss} KiB, peak {peak} KiB",
        cpu_time(loopd.pid())
    );
    assert!(progress.unexpected.is_empty(), "{:#?}", progress.unexpected);
    // The other 98 got 100%, and the slow one's leave notice exactly once
    // (the sender too).
    for i in 0..fleet.len() {
        assert!(!fleet.closed(i), "fleet client {i} was disconnected");
        assert_eq!(progress.left[i], 1, "client {i}: `* slow left` notices");
    }
    assert!(progress.received[1..].iter().all(|&n| n == LINES));

    // The log names it.
    assert!(
        loopd.wait_for_log("disconnecting slow consumer slow (connection", TIMEOUT),
        "{}",
        loopd.logs()
    );
    // Memory: peak growth under max_pending + 16 MiB.
    let limit = (MAX_PENDING + SLACK) >> 10;
    assert!(
        peak.saturating_sub(baseline) < limit,
        "loopd grew from {baseline} KiB to a peak of {peak} KiB (limit +{limit} KiB)"
    );

    // The slow one was really disconnected, and what it got before that
    // is every line from the first, in order.
    let (lines, error) = slow.read_until_closed();
    let got = assert_in_order_prefix(&lines, &progress.prefix_str(), LINES);
    eprintln!(
        "the slow client read {got} flood lines before being cut off ({})",
        error.map_or("EOF".to_string(), |e| e.to_string())
    );
}

#[test]
fn held_back_output_arrives_in_order_and_over_max_pending_is_cut_off() {
    // A tiny high watermark: loopd refuses sends early, chat holds the rest.
    let config = chat_config(
        "output_high_watermark = 4096\noutput_low_watermark = 1024",
        UNLIMITED,
    );
    let loopd = Loopd::start(&config);
    let addr = loopd.tcp("chat");
    let mut behind = Chatter::named(addr, "behind");
    let mut slow = Chatter::named(addr, "slow");
    behind.expect("* guest-2 joined");
    behind.expect("* guest-2 is now slow");
    let mut fleet = Fleet::connect(addr, 2);
    let nicks = gather(&mut fleet, 4);
    let prefix = format!("{}: ", nicks[0]);
    let new_progress = |from: usize| Progress {
        prefix: prefix.clone().into_bytes(),
        received: vec![from; 2],
        left: vec![0; 2],
        unexpected: Vec::new(),
    };

    // "behind" and "slow" stop reading. Flood until the kernel buffers and
    // loopd's 4 KiB queue are full and chat starts holding lines for
    // "behind", then 200 lines (200 KiB, under max_pending) more.
    let mut progress = new_progress(0);
    let holding = || logged(&loopd, "behind (connection");
    let filled = flood(&mut fleet, &mut progress, 100_000, 64, holding);
    assert!(holding(), "chat never had to hold output back");
    let sent = flood(&mut fleet, &mut progress, filled + 200, 64, || false);
    assert_eq!(progress.left, [0, 0], "someone was cut off early");
    eprintln!("chat began holding output after {filled} lines");

    // "behind" catches up: everything, in order.
    behind.expect(&format!("* {} joined", nicks[0]));
    behind.expect(&format!("* {} joined", nicks[1]));
    for j in 0..sent {
        let line = behind.recv();
        assert!(
            line.strip_prefix(&prefix)
                .is_some_and(|t| is_flood_line(t.as_bytes(), j)),
            "behind: line {j} is {:?}",
            &line[..line.len().min(80)]
        );
    }
    behind.expect_quiet();

    // Now "behind" reads along while "slow" still does not, until "slow"
    // goes over max_pending.
    let reader = std::thread::spawn({
        let prefix = prefix.clone();
        move || {
            let (mut next, mut left) = (sent, 0);
            while left == 0 {
                let line = behind.recv();
                if line == "* slow left" {
                    left += 1;
                } else if let Some(text) = line.strip_prefix(&prefix) {
                    assert!(is_flood_line(text.as_bytes(), next), "behind: line {next}");
                    next += 1;
                } else {
                    panic!("behind got {line:?}");
                }
            }
            (behind, next)
        }
    });
    let mut progress = new_progress(sent);
    let cut = || logged(&loopd, "disconnecting slow consumer slow");
    let total = flood(&mut fleet, &mut progress, sent + 100_000, 64, cut);
    assert!(cut(), "slow was never cut off");
    assert_eq!(progress.left, [1, 1]);
    let (mut behind, read) = reader.join().expect("the reader of behind");
    // The rest of the flood (sent after the leave notice), then nothing.
    for j in read..total {
        let line = behind.recv();
        assert!(
            line.strip_prefix(&prefix)
                .is_some_and(|t| is_flood_line(t.as_bytes(), j)),
            "behind: line {j}"
        );
    }
    behind.expect_quiet();
    behind.expect_reply(
        "/who",
        &format!("* online in lobby: behind, {}, {}", nicks[0], nicks[1]),
    );
    // "slow" got a gapless prefix, then was closed.
    let (lines, _) = slow.read_until_closed();
    assert_in_order_prefix(&lines, &prefix, total);
}

#[test]
fn a_high_watermark_above_max_pending_still_cuts_off_at_max_pending() {
    // loopd would queue up to 8 MiB for a client; chat cuts it off at 128 KiB.
    const MAX_PENDING: usize = 128 << 10;
    let config = chat_config(
        "output_high_watermark = 8388608",
        &format!("{UNLIMITED}max_pending = {MAX_PENDING}"),
    );
    let loopd = Loopd::start(&config);
    let addr = loopd.tcp("chat");
    let mut slow = Chatter::named(addr, "slow");
    let mut fleet = Fleet::connect(addr, 2);
    let nicks = gather(&mut fleet, 3);
    let prefix = format!("{}: ", nicks[0]);
    let mut progress = Progress {
        prefix: prefix.clone().into_bytes(),
        received: vec![0; 2],
        left: vec![0; 2],
        unexpected: Vec::new(),
    };
    let cut = || logged(&loopd, "disconnecting slow consumer slow");
    let total = flood(&mut fleet, &mut progress, 100_000, 64, cut);
    assert!(cut(), "slow was never cut off");
    assert_eq!(progress.left, [1, 1]);
    let (lines, _) = slow.read_until_closed();
    assert_in_order_prefix(&lines, &prefix, total);
    // Cut off for what loopd queued (never AGAIN at this watermark), so
    // chat never held anything back.
    assert!(!loopd.logs().contains("holding its output"));
}

impl Progress {
    fn prefix_str(&self) -> String {
        String::from_utf8(self.prefix.clone()).unwrap()
    }
}
