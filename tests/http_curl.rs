//! The http handler against curl: `-I`, `--range`, `-z` (If-Modified-Since),
//! connection reuse, and a 100 MiB file whose SHA-256 must match.
//!
//! Needs `curl` and `sha256sum` (`.ci/run` installs curl if missing).

mod common;
mod http_util;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::*;
use http_util::*;

/// Runs curl with `args`, bounded by TIMEOUT (killed beyond it).
fn curl(args: &[&str]) -> Output {
    let mut child = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "60"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("curl must be installed (apt-get install curl; .ci/run does it)");
    let deadline = Instant::now() + 3 * TIMEOUT;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("curl {args:?} did not finish");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn url(loopd: &Loopd, path: &str) -> String {
    format!("http://{}{path}", loopd.tcp("http"))
}

/// Header lines of a `curl -I` / `-i` dump, lower-cased names.
fn headers(dump: &str) -> Vec<(String, String)> {
    dump.lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.trim().to_string()))
        .collect()
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

#[test]
fn curl_head_shows_the_headers() {
    let site = Site::new();
    let loopd = site.serve("");
    let dump = ok(&curl(&["-I", &url(&loopd, "/style.css")]));
    assert!(dump.starts_with("HTTP/1.1 200 OK\r\n"), "{dump}");
    let h = headers(&dump);
    assert_eq!(header(&h, "content-type"), Some("text/css; charset=utf-8"));
    let len = site.file("style.css").len().to_string();
    assert_eq!(header(&h, "content-length"), Some(len.as_str()));
    for name in ["date", "server", "last-modified", "etag", "accept-ranges"] {
        assert!(header(&h, name).is_some(), "{name} missing:\n{dump}");
    }
    // -I on a directory without its slash: the redirect's headers.
    let dump = ok(&curl(&["-I", &url(&loopd, "/docs")]));
    assert!(dump.starts_with("HTTP/1.1 301"), "{dump}");
    assert_eq!(header(&headers(&dump), "location"), Some("/docs/"));
    // -L follows it.
    let body = ok(&curl(&["-L", &url(&loopd, "/docs")]));
    assert_eq!(body.as_bytes(), site.file("docs/index.html"));
}

#[test]
fn curl_range_downloads_a_slice() {
    let site = Site::new();
    let loopd = site.serve("");
    let data = site.file("data.bin");
    let dir = TempDir::new("http-curl-range");
    let out = dir.join("slice");
    let code = ok(&curl(&[
        "--range",
        "1000-70999",
        "-o",
        out.to_str().unwrap(),
        "-w",
        "%{http_code}",
        &url(&loopd, "/data.bin"),
    ]));
    assert_eq!(code, "206");
    assert!(std::fs::read(&out).unwrap() == data[1000..71000]);
    let dump = ok(&curl(&["-i", "--range", "-100", &url(&loopd, "/data.bin")]));
    let h = headers(&dump);
    assert_eq!(
        header(&h, "content-range"),
        Some(
            format!(
                "bytes {}-{}/{}",
                data.len() - 100,
                data.len() - 1,
                data.len()
            )
            .as_str()
        )
    );
    let code = ok(&curl(&[
        "--range",
        "200000-",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &url(&loopd, "/data.bin"),
    ]));
    assert_eq!(code, "416");
}

#[test]
fn curl_z_sends_if_modified_since() {
    let site = Site::new();
    let loopd = site.serve("");
    let target = url(&loopd, "/hello.txt");
    let code = |when: &str| -> String {
        ok(&curl(&[
            "-z",
            when,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &target,
        ]))
    };
    // A date after the file's modification: not modified.
    let later = httpdate_in(Duration::from_secs(3600));
    assert_eq!(code(&later), "304");
    // A date long before it: the file.
    assert_eq!(code("Thu, 01 Jan 1998 00:00:00 GMT"), "200");
    // -z with a local file uses that file's time.
    let dir = TempDir::new("http-curl-z");
    let newer = dir.join("newer");
    std::fs::write(&newer, "x").unwrap();
    let f = std::fs::File::options().write(true).open(&newer).unwrap();
    f.set_modified(SystemTime::now() + Duration::from_secs(3600))
        .unwrap();
    assert_eq!(code(newer.to_str().unwrap()), "304");
}

/// The HTTP-date (IMF-fixdate) `d` from now.
fn httpdate_in(d: Duration) -> String {
    let secs = (SystemTime::now() + d)
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // 1970-01-01 was a Thursday.
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    let (y, m, dd) = civil(days as i64);
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(m - 1) as usize];
    format!(
        "{weekday}, {dd:02} {month} {y} {:02}:{:02}:{:02} GMT",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn civil(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[test]
fn curl_reuses_the_connection() {
    let site = Site::new();
    let loopd = site.serve("");
    let out = curl(&[
        "-v",
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
        &url(&loopd, "/"),
        &url(&loopd, "/style.css"),
        &url(&loopd, "/img/loop.png"),
    ]);
    ok(&out);
    let verbose = String::from_utf8_lossy(&out.stderr);
    // "Re-using existing connection" (curl 7) or "Re-using existing http:
    // connection" (curl 8).
    let reused = verbose
        .lines()
        .filter(|l| l.contains("existing") && (l.contains("Re-using") || l.contains("Reusing")))
        .count();
    assert_eq!(reused, 2, "{verbose}");
}

#[test]
fn curl_downloads_100_mib_intact() {
    let site = Site::new();
    // 100 MiB made at test time, never committed: 1 MiB blocks that all
    // differ, so a dropped, repeated or reordered chunk changes the hash.
    let path = site.root.join("big.bin");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        for block in 0..100u32 {
            let mut b = pattern(1 << 20, block as u8);
            b[..4].copy_from_slice(&block.to_be_bytes());
            f.write_all(&b).unwrap();
        }
        f.flush().unwrap();
    }
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 100 << 20);
    let expected = sha256(&path);
    let loopd = site.serve("");
    let dir = TempDir::new("http-curl-big");
    let out = dir.join("big.bin");
    let code = ok(&curl(&[
        "-o",
        out.to_str().unwrap(),
        "-w",
        "%{http_code} %{size_download}",
        &url(&loopd, "/big.bin"),
    ]));
    assert_eq!(code, format!("200 {}", 100u64 << 20));
    assert_eq!(sha256(&out), expected);
    // And a range from the middle of it.
    let code = ok(&curl(&[
        "--range",
        "52428800-",
        "-o",
        out.to_str().unwrap(),
        "-w",
        "%{http_code}",
        &url(&loopd, "/big.bin"),
    ]));
    assert_eq!(code, "206");
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 50 << 20);
}

fn sha256(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum (coreutils) must be installed");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}
