//! A real browser: headless Chromium loads the example site from a test
//! server. The page must render (its DOM holds the site's content, the
//! stylesheet is applied and the image decoded), a screenshot is taken, and
//! the access log shows the page, the stylesheet and the image fetched with
//! 200.
//!
//! Needs Debian's `chromium` (`.ci/run` installs it if missing). Set
//! `LOOPD_TEST_SCREENSHOT=/some/file.png` to keep the screenshot.

mod common;
mod http_util;

use common::*;
use http_util::*;

/// A probe page: once loaded, it writes what the browser made of the
/// stylesheet and the image into the DOM.
const PROBE: &str = r#"<!DOCTYPE html>
<html><head><meta charset="utf-8"><link rel="stylesheet" href="/style.css"></head>
<body><header class="top" id="top">probe</header>
<img id="logo" src="/img/loop.png" alt="">
<pre id="result">pending</pre>
<script>
window.addEventListener('load', function () {
  var top = getComputedStyle(document.getElementById('top'));
  var img = document.getElementById('logo');
  document.getElementById('result').textContent =
    'display=' + top.display +
    ' background=' + top.backgroundImage.split('(')[0] +
    ' image=' + img.naturalWidth + 'x' + img.naturalHeight;
});
</script></body></html>
"#;

#[test]
fn chromium_renders_the_example_site() {
    let site = Site::new();
    std::fs::write(site.root.join("probe.html"), PROBE).unwrap();
    let loopd = site.serve("");
    let base = format!("http://{}", loopd.tcp("http"));
    let tmp = TempDir::new("http-browser");

    // 1. The page's DOM, as the browser built it.
    let out = run_chromium(
        &tmp.join("profile-dom"),
        &[
            "--virtual-time-budget=5000",
            "--dump-dom",
            &format!("{base}/"),
        ],
    );
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("<h1 id=\"title\">One loop, many handlers.</h1>"),
        "the page did not render:\n{dom}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dom.contains("href=\"/style.css\""));
    assert!(dom.contains("src=\"/img/loop.png\""));

    // 2. The stylesheet is applied and the image decoded.
    let out = run_chromium(
        &tmp.join("profile-probe"),
        &[
            "--virtual-time-budget=5000",
            "--dump-dom",
            &format!("{base}/probe.html"),
        ],
    );
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("display=flex background=linear-gradient image=256x256"),
        "stylesheet or image not used by the browser:\n{dom}"
    );

    // 3. A screenshot of the home page.
    let shot = tmp.join("home.png");
    let out = run_chromium(
        &tmp.join("profile-shot"),
        &[
            "--window-size=1200,900",
            &format!("--screenshot={}", shot.display()),
            &format!("{base}/"),
        ],
    );
    let png = std::fs::read(&shot).unwrap_or_else(|e| {
        panic!(
            "no screenshot ({e}):\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!((width, height), (1200, 900));
    // A blank page compresses to a few KiB; the rendered site (gradient,
    // logo, text) to far more.
    assert!(
        png.len() > 30_000,
        "screenshot of {} bytes looks blank",
        png.len()
    );
    if let Some(keep) = std::env::var_os("LOOPD_TEST_SCREENSHOT") {
        std::fs::copy(&shot, keep).unwrap();
    }

    // 4. The access log: the page, its stylesheet and its image, all 200.
    for request in [
        "\"GET / HTTP/1.1\" 200 ",
        "\"GET /style.css HTTP/1.1\" 200 ",
        "\"GET /img/loop.png HTTP/1.1\" 200 ",
        "\"GET /probe.html HTTP/1.1\" 200 ",
    ] {
        assert!(
            wait_access(&loopd, request),
            "no {request} in the access log:\n{}",
            access_lines(&loopd).join("\n")
        );
    }
    for line in access_lines(&loopd) {
        assert!(
            !line.contains("\" 4") && !line.contains("\" 5"),
            "the browser got an error: {line}"
        );
    }
}
