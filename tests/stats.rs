//! `Runtime::stats()`: the counters match the traffic that was sent,
//! exactly, per handler instance, per listener and for the loop.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::TIMEOUT;
use loopd::config::FramingKind;
use loopd::{HandlerSpec, Runtime};
use loopd_handler_api::{ConnId, Ctx, Handler, NoConfig, SocketId, TimerId};

/// Echoes lines; `quit` closes the connection; datagrams are echoed to
/// their sender; every line sets a 1 ms timer.
struct Lines;

impl Handler for Lines {
    type Config = NoConfig;
    type Conn = ();
    fn create(_: &Ctx, _: &str, _: NoConfig) -> Result<Self, String> {
        Ok(Lines)
    }
    fn on_data(&mut self, ctx: &Ctx, conn: ConnId, _: &mut (), line: &[u8]) {
        if line == b"quit" {
            let _ = ctx.close(conn, loopd_handler_api::CloseMode::Flush);
            return;
        }
        let _ = ctx.send_parts(conn, &[line, b"\n"]);
        let _ = ctx.set_timer(Duration::from_millis(1), 0);
    }
    fn on_datagram(&mut self, ctx: &Ctx, socket: SocketId, peer: Option<SocketAddr>, data: &[u8]) {
        if let Some(peer) = peer {
            let _ = ctx.send_datagram(socket, peer, data);
        }
    }
    fn on_timer(&mut self, _: &Ctx, _: TimerId, _: u64) {}
}

fn run_until(rt: &mut Runtime, mut done: impl FnMut(&Runtime) -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !done(rt) {
        assert!(Instant::now() < deadline, "timed out: {:#?}", rt.stats());
        rt.run_once(Some(Duration::from_millis(5))).unwrap();
    }
}

#[test]
fn counters_match_the_traffic() {
    let mut rt = Runtime::builder()
        .handler(
            HandlerSpec::linked::<Lines>("lines")
                .listen("tcp://127.0.0.1:0")
                .listen("udp://127.0.0.1:0")
                .framing(FramingKind::Line)
                .max_frame(16),
        )
        .build()
        .unwrap();
    let tcp = rt.listeners_of("lines").next().unwrap().to_string();
    let udp = rt.listeners_of("lines").nth(1).unwrap().to_string();
    let tcp_addr = tcp.strip_prefix("tcp://").unwrap().to_string();
    let udp_addr = udp.strip_prefix("udp://").unwrap().to_string();

    // Three clients, each: 5 lines of "hello" (6 bytes each way), then a
    // line over max_frame (closed: frame too big) or "quit" (closed by
    // the handler) or EOF (closed by the peer).
    let endings: [&[u8]; 3] = [b"this line is far too long\n", b"quit\n", b""];
    let clients: Vec<_> = endings
        .iter()
        .map(|end| {
            let addr = tcp_addr.clone();
            let end = end.to_vec();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(TIMEOUT)).unwrap();
                for _ in 0..5 {
                    s.write_all(b"hello\n").unwrap();
                    let mut back = [0u8; 6];
                    s.read_exact(&mut back).unwrap();
                    assert_eq!(&back, b"hello\n");
                }
                s.write_all(&end).unwrap();
                s.shutdown(std::net::Shutdown::Write).unwrap();
                let mut rest = Vec::new();
                let _ = s.read_to_end(&mut rest);
            })
        })
        .collect();
    let udp_client = std::thread::spawn(move || {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut got = 0;
        // Loopback UDP does not drop here, but a lost reply is retried
        // rather than hang the test; the count checks below allow it.
        for i in 0..4u8 {
            for _ in 0..50 {
                s.send_to(&[i; 10], &udp_addr).unwrap();
                let mut buf = [0u8; 64];
                if let Ok((n, _)) = s.recv_from(&mut buf) {
                    assert_eq!(&buf[..n], &[i; 10]);
                    got += 1;
                    break;
                }
            }
        }
        got
    });
    run_until(&mut rt, |rt| {
        let s = rt.stats();
        let h = &s.handler("lines").unwrap().counters;
        clients.iter().all(|c| c.is_finished())
            && udp_client.is_finished()
            && h.closed_total() == 3
            && h.timers_active == 0
    });
    for c in clients {
        c.join().unwrap();
    }
    assert_eq!(udp_client.join().unwrap(), 4);

    let s = rt.stats();
    let h = &s.handler("lines").unwrap().counters;
    assert_eq!(h.accepted, 3);
    assert_eq!(h.active, 0);
    assert_eq!(h.closed.frame_too_big, 1, "{h:#?}");
    assert_eq!(h.closed.local, 1, "{h:#?}");
    assert_eq!(h.closed.peer, 1, "{h:#?}");
    assert_eq!(h.frames_in, 15 + 1, "15 hellos and one quit");
    assert_eq!(h.oversize_frames, 1);
    assert_eq!(
        h.bytes_in,
        3 * 5 * 6 + 26 + 5,
        "every byte read, oversize line included"
    );
    assert_eq!(h.bytes_out, 3 * 5 * 6);
    assert!(
        h.datagrams_in >= 4 && h.datagrams_out == h.datagrams_in,
        "{h:#?}"
    );
    assert_eq!(h.timers_set, 15);
    assert_eq!(h.timers_fired, 15);

    let l = s.listener(&tcp).unwrap();
    assert!(l.open);
    assert_eq!(l.handler, "lines");
    assert_eq!(l.counters.accepted, 3);
    assert_eq!(l.counters.bytes_out, h.bytes_out);
    assert_eq!(
        l.counters.timers_set, 0,
        "timers count on the instance only"
    );
    let u = s.listener(&udp).unwrap();
    assert_eq!(u.counters.datagrams_in, h.datagrams_in);
    assert_eq!(u.counters.accepted, 0);

    assert!(s.loop_stats.passes > 0);
    assert!(s.loop_stats.events >= 3 + 4, "{:?}", s.loop_stats);
}

#[test]
fn a_closed_listener_keeps_its_totals() {
    let mut rt = Runtime::builder()
        .handler(HandlerSpec::linked::<Lines>("lines").listen("tcp://127.0.0.1:0"))
        .build()
        .unwrap();
    let tcp = rt.listeners()[0].clone();
    let addr = tcp.strip_prefix("tcp://").unwrap().to_string();
    let client = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"x").unwrap();
    });
    run_until(&mut rt, |rt| {
        rt.stats().listener(&tcp).unwrap().counters.closed_total() == 1
    });
    client.join().unwrap();
    rt.handle().shutdown();
    run_until(&mut rt, |rt| rt.is_finished());
    let s = rt.stats();
    let l = s.listener(&tcp).unwrap();
    assert!(!l.open, "closed by the shutdown");
    assert_eq!(l.counters.accepted, 1);
    assert_eq!(l.counters.bytes_in, 1);
}

/// Counts lines by length in metrics it declares (ABI 1.4), and gauges
/// its open connections.
struct Measured {
    short: loopd_handler_api::Series,
    long: loopd_handler_api::Series,
    sizes: loopd_handler_api::Series,
}

impl Handler for Measured {
    type Config = NoConfig;
    type Conn = ();
    fn create(ctx: &Ctx, _: &str, _: NoConfig) -> Result<Self, String> {
        let e = |e: loopd_handler_api::Error| e.to_string();
        let lines = ctx
            .counter("lines_total", "Lines, by length.", &["len"])
            .map_err(e)?;
        let sizes = ctx
            .histogram("line_bytes", "Line sizes.", &[], &[2.0, 8.0])
            .map_err(e)?;
        Ok(Measured {
            short: ctx.series(lines, &["short"]).map_err(e)?,
            long: ctx.series(lines, &["long"]).map_err(e)?,
            sizes: ctx.series(sizes, &[]).map_err(e)?,
        })
    }
    fn on_data(&mut self, ctx: &Ctx, conn: ConnId, _: &mut (), line: &[u8]) {
        let s = if line.len() < 4 {
            self.short
        } else {
            self.long
        };
        ctx.metric_add(s, 1.0);
        ctx.metric_observe(self.sizes, line.len() as f64);
        let _ = ctx.send(conn, b"ok\n");
    }
}

#[test]
fn handler_metrics_are_in_the_stats() {
    let mut rt = Runtime::builder()
        .handler(
            HandlerSpec::linked::<Measured>("measured")
                .listen("tcp://127.0.0.1:0")
                .framing(FramingKind::Line),
        )
        .build()
        .unwrap();
    let addr = rt.listeners_of("measured").next().unwrap()["tcp://".len()..].to_string();
    let client = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s.write_all(b"a\nabcdef\nabcdefghijkl\n").unwrap();
        let mut got = [0u8; 9];
        s.read_exact(&mut got).unwrap();
    });
    run_until(&mut rt, |rt| {
        rt.stats().handler("measured").unwrap().counters.frames_in == 3
    });
    client.join().unwrap();
    let s = rt.stats();
    let m = &s.handler("measured").unwrap().metrics;
    assert_eq!(m.len(), 2);
    assert_eq!(m[0].name, "lines_total");
    assert_eq!(m[0].labels, ["len"]);
    let by = |v: &str| {
        m[0].series
            .iter()
            .find(|s| s.labels == [v])
            .map(|s| s.value)
    };
    assert_eq!((by("short"), by("long")), (Some(1.0), Some(2.0)));
    assert_eq!(m[1].buckets, [2.0, 8.0]);
    assert_eq!(m[1].series[0].counts, [1, 1, 1]);
    assert_eq!(m[1].series[0].value, 19.0);
    assert_eq!(m[1].series[0].count(), 3);
}

/// Sends until the output queue is full, to a client that never reads.
struct Flood;

impl Handler for Flood {
    type Config = NoConfig;
    type Conn = ();
    fn create(_: &Ctx, _: &str, _: NoConfig) -> Result<Self, String> {
        Ok(Flood)
    }
    fn on_data(&mut self, ctx: &Ctx, conn: ConnId, _: &mut (), _: &[u8]) {
        let chunk = vec![b'x'; 64 << 10];
        // Bounded: the kernel's buffers and the high watermark end it.
        for _ in 0..100_000 {
            if ctx.send(conn, &chunk).is_err() {
                break;
            }
        }
    }
}

#[test]
fn queued_output_is_summed_per_handler_and_listener() {
    let mut rt = Runtime::builder()
        .handler(
            HandlerSpec::linked::<Flood>("flood")
                .listen("tcp://127.0.0.1:0")
                .framing(FramingKind::Line),
        )
        .build()
        .unwrap();
    let url = rt.listeners_of("flood").next().unwrap().to_string();
    let mut s = TcpStream::connect(&url["tcp://".len()..]).unwrap();
    s.write_all(b"go\n").unwrap();
    run_until(&mut rt, |rt| {
        rt.stats().handler("flood").unwrap().counters.frames_in == 1
    });
    let stats = rt.stats();
    let queued = stats.handler("flood").unwrap().counters.output_queued;
    assert!(queued > 0, "{stats:#?}");
    assert_eq!(stats.listener(&url).unwrap().counters.output_queued, queued);
    drop(s);
}
