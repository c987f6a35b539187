//! Resource limits: max_connections refuses politely, and running out of file
//! descriptors pauses accepting instead of spinning.

mod common;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn max_connections_refuses_the_next_client_and_recovers() {
    let loopd =
        Loopd::start(&probe_config("").replace("[runtime]", "[runtime]\nmax_connections = 5"));
    let mut clients: Vec<LineClient> = (0..5)
        .map(|_| LineClient::connect(loopd.tcp("probe")))
        .collect();
    for c in &mut clients {
        assert_eq!(c.cmd("echo in"), "in");
    }
    let mut extra = tcp(loopd.tcp("probe"));
    let mut buf = [0u8; 16];
    let n = extra.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the sixth client is closed at once");
    assert!(
        loopd.wait_for_log("max_connections (5) reached", TIMEOUT),
        "{}",
        loopd.logs()
    );

    drop(clients.pop());
    assert!(loopd.wait_for_log("probe: closed", TIMEOUT));
    let mut again = LineClient::connect(loopd.tcp("probe"));
    assert_eq!(again.cmd("echo back"), "back", "a slot freed up");
    for c in &mut clients {
        assert_eq!(c.cmd("echo still"), "still");
    }
}

/// CPU time (user + system) of a process, from /proc.
fn cpu_time(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_comm.split(' ').collect();
    // Fields 14 and 15 of stat (utime, stime), counted from after the comm field.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

#[test]
fn running_out_of_descriptors_pauses_accept_instead_of_spinning() {
    let config = r#"
[[handler]]
name = "echo"
plugin = "echo"
listen = ["tcp://127.0.0.1:0"]
"#;
    let loopd = Loopd::start_with(config, "info", |cmd| {
        // SAFETY: setrlimit is async-signal-safe; it only changes the child's limit.
        unsafe {
            cmd.pre_exec(|| {
                let lim = libc::rlimit {
                    rlim_cur: 24,
                    rlim_max: 24,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    let addr = loopd.tcp("echo");
    // More clients than descriptors: the kernel completes the handshakes
    // (backlog) but loopd cannot accept them all.
    let mut clients = Vec::new();
    for _ in 0..40 {
        clients.push(tcp(addr));
    }
    assert!(
        loopd.wait_for_log("pausing this listener", TIMEOUT),
        "loopd should report EMFILE and back off:\n{}",
        loopd.logs()
    );

    // While starved, loopd must sleep between attempts, not spin.
    let (cpu0, t0) = (cpu_time(loopd.pid()), Instant::now());
    std::thread::sleep(Duration::from_millis(1500));
    let (cpu, wall) = (cpu_time(loopd.pid()) - cpu0, t0.elapsed());
    assert!(
        cpu < wall / 2,
        "loopd used {cpu:?} of CPU in {wall:?} while out of descriptors: it is spinning"
    );

    // Free descriptors: the waiting clients get served once accept resumes.
    clients.truncate(5);
    let mut served = 0;
    for mut c in clients.drain(..) {
        c.write_all_and_check(b"ping");
        served += 1;
    }
    let mut late = tcp(addr);
    late.write_all_and_check(b"late");
    assert_eq!(served, 5);
}

trait EchoCheck {
    fn write_all_and_check(&mut self, data: &[u8]);
}

impl EchoCheck for std::net::TcpStream {
    fn write_all_and_check(&mut self, data: &[u8]) {
        use std::io::Write;
        self.write_all(data).unwrap();
        let mut got = vec![0u8; data.len()];
        self.read_exact(&mut got)
            .expect("echo after accept resumed");
        assert_eq!(got, data);
    }
}
