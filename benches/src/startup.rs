//! Benchmark 6, start-up: the time from exec to every listener accepting,
//! with four plugins loaded (echo, chat, http, udp-broadcast; one listener
//! each). TCP listeners count once a connect succeeds; the UDP relay once a
//! datagram sent to it arrives at its target.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::http::{handler_built, make_site};
use crate::results::{Bench, Case};
use crate::server::{free_port, free_udp_port, Server};
use crate::{peers, Ctx};

const LIMIT: Duration = Duration::from_secs(10);

/// Runs the start-up benchmark.
pub fn bench(ctx: &Ctx) -> Result<Bench> {
    let mut bench = Bench {
        id: "startup".into(),
        ..Bench::default()
    };
    let missing: Vec<String> = ["chat", "http", "udp-broadcast"]
        .iter()
        .filter_map(|h| handler_built(ctx, h))
        .collect();
    if !missing.is_empty() {
        bench.skipped = Some(format!(
            "{}; timed with the handlers that exist instead",
            missing.join("; ")
        ));
    }
    let have = |h: &str| handler_built(ctx, h).is_none();
    let root = ctx.work.join("www-startup");
    make_site(&root)?;
    let runs = if ctx.smoke { 2 } else { 20 };
    let mut case = Case {
        label: "exec → all listeners accepting".into(),
        ..Case::default()
    };
    let mut plugins = 0;
    for i in 0..runs {
        let mut config = peers::RUNTIME_TABLE.to_string();
        let mut tcp: Vec<SocketAddr> = Vec::new();
        let mut add_tcp = |config: &mut String, name: &str, extra: &str| -> Result<()> {
            let port = free_port()?;
            config.push_str(&format!(
                "[[handler]]\nname = \"{name}\"\nplugin = \"{name}\"\nlisten = [\"tcp://127.0.0.1:{port}\"]\n{extra}\n"
            ));
            tcp.push(SocketAddr::from(([127, 0, 0, 1], port)));
            Ok(())
        };
        add_tcp(&mut config, "echo", "")?;
        if have("chat") {
            add_tcp(&mut config, "chat", "")?;
        }
        if have("http") {
            add_tcp(
                &mut config,
                "http",
                &format!("[handler.config]\nroot = \"{}\"", root.display()),
            )?;
        }
        let mut udp = None;
        if have("udp-broadcast") {
            let port = free_udp_port()?;
            let target = UdpSocket::bind("127.0.0.1:0")?;
            target.set_nonblocking(true)?;
            config.push_str(&format!(
                "[[handler]]\nname = \"relay\"\nplugin = \"udp-broadcast\"\nlisten = [\"udp://127.0.0.1:{port}\"]\n[handler.config]\nbroadcast_to = [\"{}\"]\n",
                target.local_addr()?
            ));
            let sender = UdpSocket::bind("127.0.0.1:0")?;
            sender.connect(("127.0.0.1", port))?;
            udp = Some((sender, target));
        }
        plugins = tcp.len() + usize::from(udp.is_some());
        let path = peers::write_file(&ctx.work, "startup.toml", &config)?;
        let t0 = Instant::now();
        let mut server = Server::spawn(
            "loopd-startup",
            &ctx.bin.join("loopd"),
            &[path.display().to_string()],
            &ctx.work.join("startup.log"),
        )?;
        let mut up = vec![false; tcp.len()];
        let mut udp_up = udp.is_none();
        let mut buf = [0u8; 64];
        loop {
            for (k, addr) in tcp.iter().enumerate() {
                if !up[k] && TcpStream::connect(addr).is_ok() {
                    up[k] = true;
                }
            }
            if let Some((sender, target)) = &udp {
                if !udp_up {
                    let _ = sender.send(b"startup probe");
                    if target.recv(&mut buf).is_ok() {
                        udp_up = true;
                    }
                }
            }
            if udp_up && up.iter().all(|&u| u) {
                break;
            }
            if t0.elapsed() > LIMIT {
                server.check_alive()?;
                bail!("loopd was not accepting on every listener after {LIMIT:?}");
            }
            server
                .check_alive()
                .context("loopd exited during start-up")?;
            std::thread::sleep(Duration::from_micros(50));
        }
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        server.stop();
        println!(
            "startup run {}/{runs}: {ms:.2} ms to {plugins} listeners accepting",
            i + 1
        );
        let mut m = BTreeMap::new();
        m.insert("startup_ms".into(), ms);
        m.insert("plugins".into(), plugins as f64);
        case.push("loopd", m);
    }
    case.params.insert("plugins".into(), plugins as f64);
    bench.cases.push(case);
    Ok(bench)
}
