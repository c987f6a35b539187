//! The live page: fetches `/metrics` every second and charts, for every
//! handler by name, its open connections, bytes/s (in + out) and the
//! loop's passes/s. Inline SVG, no external resources.

/// The whole page.
pub(crate) const HTML: &str = r##"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>loopd status</title>
<style>
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{padding:.2em .8em;border-bottom:1px solid #ddd;text-align:right}
th:first-child,td:first-child{text-align:left}.charts{display:flex;flex-wrap:wrap;gap:1em}
figure{margin:0}figcaption{font-size:12px;color:#555}svg{background:#f7f7f7;border:1px solid #ddd}
</style></head><body>
<h1>loopd status</h1>
<p id="info">loading /metrics&hellip;</p>
<table id="handlers"><thead><tr><th>handler</th><th>connections</th><th>accepted</th>
<th>received bytes</th><th>sent bytes</th><th>frames</th><th>bytes/s</th></tr></thead><tbody></tbody></table>
<div class="charts" id="charts"></div>
<script>
"use strict";
const N = 60, hist = {}, passes = [];
let last = null;
function parse(text) {
  const m = {};
  for (const line of text.split("\n")) {
    if (!line || line[0] === "#") continue;
    const r = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (.*)$/.exec(line);
    if (!r) continue;
    const labels = {};
    if (r[3]) for (const p of r[3].match(/[a-zA-Z_]+="(?:[^"\\]|\\.)*"/g) || []) {
      const i = p.indexOf("=");
      labels[p.slice(0, i)] = p.slice(i + 2, -1).replace(/\\"/g, '"').replace(/\\\\/g, "\\");
    }
    (m[r[1]] = m[r[1]] || []).push({labels, value: Number(r[4])});
  }
  return m;
}
function byHandler(m, name) {
  const o = {};
  for (const s of m[name] || []) o[s.labels.handler] = (o[s.labels.handler] || 0) + s.value;
  return o;
}
function total(m, name) { return (m[name] || []).reduce((a, s) => a + s.value, 0); }
function push(a, v) { a.push(v); if (a.length > N) a.shift(); }
function chart(title, data) {
  const w = 240, h = 60, max = Math.max(1, ...data);
  const pts = data.map((v, i) => (i * w / (N - 1)).toFixed(1) + "," + (h - v * h / max).toFixed(1)).join(" ");
  const cur = data.length ? data[data.length - 1] : 0;
  return '<figure><svg width="' + w + '" height="' + h + '" viewBox="0 0 ' + w + " " + h +
    '"><polyline fill="none" stroke="#2a6" stroke-width="1.5" points="' + pts + '"/></svg><figcaption>' +
    title + ": " + Math.round(cur) + " (max " + Math.round(max) + ")</figcaption></figure>";
}
function esc(s) { return String(s).replace(/[&<>"]/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;"})[c]); }
async function tick() {
  try {
    const r = await fetch("/metrics", {cache: "no-store"});
    const m = parse(await r.text()), now = Date.now();
    const active = byHandler(m, "loopd_connections_active"),
      accepted = byHandler(m, "loopd_connections_accepted_total"),
      rx = byHandler(m, "loopd_received_bytes_total"), tx = byHandler(m, "loopd_sent_bytes_total"),
      frames = byHandler(m, "loopd_frames_total"), p = total(m, "loopd_loop_passes_total");
    const dt = last ? (now - last.t) / 1000 : 0;
    let rows = "", charts = "";
    push(passes, dt > 0 ? (p - last.p) / dt : 0);
    for (const h of Object.keys(active).sort()) {
      const bytes = (rx[h] || 0) + (tx[h] || 0);
      const rate = dt > 0 && last.b[h] !== undefined ? (bytes - last.b[h]) / dt : 0;
      const s = hist[h] = hist[h] || {conns: [], rate: []};
      push(s.conns, active[h]); push(s.rate, rate);
      rows += '<tr data-handler="' + esc(h) + '"><td>' + esc(h) + "</td><td>" + active[h] + "</td><td>" +
        (accepted[h] || 0) + "</td><td>" + (rx[h] || 0) + "</td><td>" + (tx[h] || 0) + "</td><td>" +
        (frames[h] || 0) + "</td><td>" + Math.round(rate) + "</td></tr>";
      charts += chart(esc(h) + " connections", s.conns) + chart(esc(h) + " bytes/s", s.rate);
    }
    charts += chart("loop passes/s", passes);
    document.querySelector("#handlers tbody").innerHTML = rows;
    document.getElementById("charts").innerHTML = charts;
    const b = (m.loopd_build_info || [{labels: {}}])[0].labels;
    document.getElementById("info").textContent = "loopd " + (b.version || "?") + ", ABI " +
      (b.abi || "?") + ", updated " + new Date(now).toLocaleTimeString();
    last = {t: now, p, b: Object.fromEntries(Object.keys(active).map(h => [h, (rx[h] || 0) + (tx[h] || 0)]))};
  } catch (e) {
    document.getElementById("info").textContent = "cannot read /metrics: " + e;
  }
}
tick();
setInterval(tick, 1000);
</script></body></html>
"##;
