// majordomo dashboard: plain JS, no build step. Reads /api/v1 (same commands as the socket),
// stays live over the SSE stream /api/v1/events, draws charts with the vendored uPlot.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const api = async (cmd, args, post) => {
    let url = "/api/v1/" + cmd;
    const init = { credentials: "same-origin", headers: {} };
    if (post) {
      init.method = "POST";
      init.headers["Content-Type"] = "application/json";
      init.headers["X-Majordomo-Csrf"] = "1";
      init.body = JSON.stringify(args || {});
    } else if (args) {
      url += "?" + new URLSearchParams(args).toString();
    }
    const r = await fetch(url, init);
    if (r.status === 401) { location.href = "/"; throw new Error("logged out"); }
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error((body.error && body.error.message) || r.statusText);
    return body;
  };
  const el = (tag, attrs, ...kids) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
    }
    for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(k == null ? "" : String(k)));
    return e;
  };
  const fill = (tbody, rows, empty, cols) => {
    tbody.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: cols, class: "detail" }, empty))]));
  };
  const dur = (s) => {
    if (s == null) return "–";
    s = Math.floor(s);
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
    return Math.floor(s / 86400) + "d " + Math.floor((s % 86400) / 3600) + "h";
  };
  const bytes = (b) => {
    if (b == null) return "–";
    const u = ["B", "KiB", "MiB", "GiB", "TiB"]; let i = 0;
    while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
    return b.toFixed(i ? 1 : 0) + " " + u[i];
  };
  const toast = (msg) => {
    const t = $("toast"); t.textContent = msg; t.classList.add("show");
    clearTimeout(toast.timer); toast.timer = setTimeout(() => t.classList.remove("show"), 2500);
  };
  const pill = (state) => el("span", { class: "pill state-" + state, "data-state": state }, state);

  // Overview.
  async function loadStatus() {
    const s = await api("status");
    $("instance").textContent = "· " + s.instance;
    $("version").textContent = s.version;
    $("uptime").textContent = dur(s.uptime_s);
    $("nfiring").textContent = (s.alerts && s.alerts.firing != null) ? s.alerts.firing : ((s.alerts && s.alerts.active) || []).length || 0;
    fill($("subsystems"), Object.entries(s.subsystems).map(([n, x]) =>
      el("tr", {}, el("td", {}, n), el("td", {}, pill(x.state)), el("td", { class: "detail" }, x.detail || ""))), "none", 3);
  }

  // Programs.
  const programs = new Map();
  function programRow(p) {
    const act = (cmd) => async (ev) => {
      ev.target.disabled = true;
      try { await api(cmd, { name: p.name }, true); toast(cmd + " " + p.name); }
      catch (e) { toast(e.message); }
      finally { ev.target.disabled = false; }
    };
    return el("tr", { id: "program-" + p.name, "data-program": p.name },
      el("td", {}, p.name),
      el("td", { class: "state" }, pill(p.state)),
      el("td", {}, p.pid || "–"),
      el("td", {}, dur(p.uptime_s)),
      el("td", {}, p.restarts),
      el("td", { class: "hide-narrow" }, p.cpu_s != null ? p.cpu_s.toFixed(2) + "s" : "–"),
      el("td", { class: "hide-narrow" }, bytes(p.rss_bytes)),
      el("td", {},
        el("button", { type: "button", class: "start", onclick: act("start") }, "Start"), " ",
        el("button", { type: "button", class: "stop", onclick: act("stop") }, "Stop"), " ",
        el("button", { type: "button", class: "restart", onclick: act("restart") }, "Restart"), " ",
        el("button", { type: "button", class: "log", onclick: () => openLog(p.name) }, "Log")));
  }
  // A program's output: the last lines (`logs`), read again every 2 s while shown.
  let logName = null;
  async function loadLog() {
    if (!logName) return;
    const pre = $("log-text");
    const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    try {
      const t = await api("logs", { name: logName, lines: 200 });
      $("log-file").textContent = t.file;
      if (pre.textContent !== t.text) { pre.textContent = t.text || "(no output yet)"; if (atEnd) pre.scrollTop = pre.scrollHeight; }
    } catch (e) { pre.textContent = "logs: " + e.message; }
  }
  function openLog(name) {
    logName = name; $("log-name").textContent = name; $("log-text").textContent = "";
    $("log-panel").hidden = false; loadLog().then(() => { $("log-text").scrollTop = $("log-text").scrollHeight; });
    clearInterval(openLog.t); openLog.t = setInterval(loadLog, 2000);
  }
  async function loadPrograms() {
    try {
      const r = await api("ps");
      programs.clear();
      for (const p of r.programs) programs.set(p.name, p);
      $("nprograms").textContent = r.programs.length;
      fill($("program-rows"), r.programs.map(programRow), "no [[program]] configured", 8);
    } catch (e) { fill($("program-rows"), [], "supervisor: " + e.message, 8); }
  }
  function programState(ev) {
    const row = document.querySelector('[data-program="' + CSS.escape(ev.name) + '"] .state');
    if (row) row.replaceChildren(pill(ev.state)); else loadPrograms();
    clearTimeout(programState.t); programState.t = setTimeout(loadPrograms, 700);
  }

  // Metrics.
  let chart = null;
  async function loadMetricNames() {
    try {
      const now = await api("metrics");
      const sel = $("metric-name"); const cur = sel.value;
      const names = Object.keys(now.values || {}).sort();
      if (names.length) {
        sel.replaceChildren(...names.map((n) => el("option", { value: n }, n)));
        sel.value = names.includes(cur) ? cur : (names.includes("cpu.used_pct") ? "cpu.used_pct" : names[0]);
      }
    } catch (e) { $("chart-note").textContent = "monitor: " + e.message; }
  }
  async function drawChart() {
    const name = $("metric-name").value, since = $("metric-range").value;
    let h;
    try { h = await api("metrics", { name, since }); } catch (e) { $("chart-note").textContent = "monitor: " + e.message; return; }
    const s = (h.series || {})[name];
    const pts = s ? s.points : [];
    const data = [pts.map((p) => p.t), pts.map((p) => p.min), pts.map((p) => p.avg), pts.map((p) => p.max)];
    const box = $("chart");
    const width = Math.max(260, box.clientWidth - 10);
    const dark = matchMedia("(prefers-color-scheme: dark)").matches;
    const axis = { stroke: dark ? "#9aa0aa" : "#6b7280", grid: { stroke: dark ? "#2b2f37" : "#e3e4e8" } };
    const opts = {
      width, height: 240,
      series: [{}, { label: "min", stroke: "#60a5fa88" }, { label: "avg", stroke: "#2563eb", width: 2 }, { label: "max", stroke: "#ef444488" }],
      axes: [axis, axis],
    };
    if (chart) chart.destroy();
    if (typeof uPlot === "undefined") { $("chart-note").textContent = "chart library not loaded"; return; }
    chart = new uPlot(opts, data, box);
    box.dataset.points = String(pts.length);
    $("chart-note").textContent = pts.length + " points of " + name + " over " + since + (s && s.stats ? " · avg " + s.stats.avg.toFixed(2) : "");
  }

  // Alerts and notifications.
  async function loadAlerts() {
    try {
      const a = await api("alerts");
      const rows = a.active.concat(a.recent.slice(0, 20)).map((x) =>
        el("tr", {}, el("td", {}, x.check), el("td", {}, pill(x.state)), el("td", {}, x.severity), el("td", { class: "detail" }, x.summary), el("td", {}, x.since)));
      fill($("alert-rows"), rows, "no alerts", 5);
    } catch (e) { fill($("alert-rows"), [], "monitor: " + e.message, 5); }
    try {
      const n = await api("notify.log");
      fill($("notify-rows"), n.deliveries.slice(0, 30).map((d) =>
        el("tr", {}, el("td", {}, d.at || ""), el("td", {}, d.notifier || ""), el("td", {}, d.outcome || ""), el("td", { class: "detail" }, d.alert || d.summary || ""))), "no notifications", 4);
    } catch (e) { fill($("notify-rows"), [], "notifications: " + e.message, 4); }
  }

  // Pipelines.
  async function loadPipelines() {
    try {
      const q = await api("queue.stats");
      fill($("pipeline-rows"), q.pipelines.map((p) => {
        const c = p.counts;
        const act = (cmd) => async () => { try { const r = await api(cmd, { pipeline: p.pipeline }, true); toast(cmd + ": " + JSON.stringify(r)); loadPipelines(); } catch (e) { toast(e.message); } };
        return el("tr", {}, el("td", {}, p.pipeline), el("td", {}, c.queued + c.input), el("td", {}, c.processing), el("td", {}, c.done),
          el("td", {}, c.failed + c.error), el("td", {}, c.dead), el("td", {}, dur(p.oldest_pending_age_s)),
          el("td", {}, el("button", { type: "button", onclick: act("queue.retry") }, "Retry"), " ", el("button", { type: "button", onclick: act("queue.purge") }, "Purge")));
      }), "no [[pipeline]] configured", 8);
    } catch (e) { fill($("pipeline-rows"), [], "pipelines: " + e.message, 8); }
  }

  // Jobs: next run, the last run, run now; a job's history on demand.
  let jobName = null;
  const outcome = (r) => r && r.outcome ? pill(r.outcome) : (r ? pill("running") : "–");
  async function loadJobs() {
    try {
      const l = await api("job.ls");
      fill($("job-rows"), l.jobs.map((j) => {
        const run = async (ev) => {
          ev.target.disabled = true;
          try { const r = await api("job.run", { name: j.name }, true); toast(j.name + ": " + r.result); }
          catch (e) { toast(e.message); }
          finally { ev.target.disabled = false; }
        };
        return el("tr", { "data-job": j.name }, el("td", {}, j.name), el("td", { class: "detail" }, j.schedule),
          el("td", {}, j.paused ? "paused" : (j.next || "–")), el("td", {}, j.last ? j.last.started : "–"),
          el("td", { class: "outcome" }, j.running ? pill("running") : outcome(j.last)),
          el("td", {}, el("button", { type: "button", class: "run", onclick: run }, "Run now"), " ",
            el("button", { type: "button", class: "history", onclick: () => openJob(j.name) }, "History")));
      }), "no [[job]] configured", 6);
    } catch (e) { fill($("job-rows"), [], "scheduler: " + e.message, 6); }
    if (jobName) loadRuns();
  }
  async function loadRuns() {
    try {
      const runs = await api("job.history", { name: jobName, limit: 20 });
      fill($("run-rows"), runs.map((r) => el("tr", {}, el("td", {}, r.started), el("td", {}, r.trigger), el("td", {}, r.late_ms + " ms"),
        el("td", {}, r.duration_ms != null ? r.duration_ms + " ms" : "–"), el("td", {}, outcome(r)), el("td", {}, r.exit_code != null ? r.exit_code : "–"),
        el("td", { class: "out" }, r.output_tail))), "no runs yet", 7);
    } catch (e) { fill($("run-rows"), [], "job.history: " + e.message, 7); }
  }
  function openJob(name) { jobName = name; $("job-name").textContent = name; $("job-panel").hidden = false; loadRuns(); }

  // Bus.
  let lastBus = null;
  async function loadBus() {
    try {
      const b = await api("bus.ls");
      const c = b.counters;
      $("bus-conns").textContent = c.connections; $("bus-pub").textContent = c.published; $("bus-del").textContent = c.delivered;
      const now = Date.now();
      if (lastBus) $("bus-rate").textContent = ((c.delivered - lastBus.d) / ((now - lastBus.t) / 1000)).toFixed(1);
      lastBus = { d: c.delivered, t: now };
      fill($("endpoint-rows"), b.endpoints.map((e) => el("tr", {}, el("td", {}, e.id || e.endpoint || ""), el("td", {}, e.conn != null ? e.conn : ""))), "no endpoints", 2);
    } catch (e) { fill($("endpoint-rows"), [], "bus: " + e.message, 2); }
  }

  // Fleet: the instances on this instance's NATS server (nats.fleet) and on the LAN
  // (discovery.peers). Either subsystem may be off: its command then answers enabled: false
  // (an older daemon: unknown command).
  const off = (e, what) => /unknown command/.test(e.message) ? what + " is off on this instance" : what + ": " + e.message;
  async function loadFleet() {
    try {
      const f = await api("nats.fleet");
      fill($("fleet-rows"), f.members.map((m) => el("tr", { "data-member": m.node + "/" + m.instance },
        el("td", {}, m.node), el("td", {}, m.instance), el("td", {}, m.version), el("td", {}, dur(m.uptime_s)),
        el("td", {}, (m.roles || []).join(", ") || "–"),
        el("td", { class: "detail" }, m.firing ? m.firing + " firing: " + (m.alerts || []).join(", ") : "–"))),
        f.reason || "no instance answered", 6);
      $("fleet-note").textContent = f.enabled === false ? "" : f.members.length + " instance(s) answered a fleet ping";
    } catch (e) { fill($("fleet-rows"), [], off(e, "NATS ([nats] servers)"), 6); $("fleet-note").textContent = ""; }
    try {
      const p = await api("discovery.peers");
      fill($("lan-rows"), p.peers.map((x) => {
        const addr = (x.addresses || []).find((a) => !a.includes(":")) || (x.addresses || [])[0];
        const link = x.http_port && addr ? el("a", { href: "http://" + addr + ":" + x.http_port + "/" }, addr + ":" + x.http_port) : "–";
        return el("tr", { "data-peer": x.node + "/" + x.instance }, el("td", {}, x.node), el("td", {}, x.instance), el("td", {}, x.version),
          el("td", {}, (x.roles || []).join(", ") || "–"), el("td", { class: "detail" }, (x.addresses || []).join(", ")), el("td", {}, link));
      }), p.reason || "no peer seen on the LAN yet", 6);
      $("lan-note").textContent = "";
    } catch (e) { fill($("lan-rows"), [], off(e, "LAN discovery ([discovery] enabled)"), 6); }
  }

  // Live.
  function live() {
    const es = new EventSource("/api/v1/events");
    es.onopen = () => { $("live").textContent = "live"; $("live").className = "pill on"; };
    es.onerror = () => { $("live").textContent = "reconnecting"; $("live").className = "pill off"; };
    es.onmessage = () => {};
    const log = (kind, data) => {
      const li = el("li", {}, new Date().toLocaleTimeString() + " " + kind + " " + data);
      const ol = $("events"); ol.prepend(li);
      while (ol.children.length > 50) ol.lastChild.remove();
    };
    const kinds = ["daemon.started", "daemon.stopping", "config.reloaded", "config.rejected", "subsystem.state", "program.state",
      "alert.pending", "alert.firing", "alert.resolved", "alert.cancelled", "notify.delivered", "notify.failed", "notify.suppressed",
      "job.started", "job.finished", "endpoint.up", "endpoint.down", "lagged"];
    for (const k of kinds) {
      es.addEventListener(k, (m) => {
        log(k, m.data);
        let ev = {}; try { ev = JSON.parse(m.data); } catch (_) {}
        if (k === "program.state") programState(ev);
        else if (k.startsWith("alert.") || k.startsWith("notify.")) { loadAlerts(); loadStatus(); }
        else if (k.startsWith("job.")) { clearTimeout(loadJobs.t); loadJobs.t = setTimeout(loadJobs, 300); }
        else if (k === "subsystem.state" || k === "config.reloaded") { loadStatus(); }
      });
    }
    // Unknown kinds still show up in the log.
    es.addEventListener("message", (m) => log("event", m.data));
  }

  $("logout").addEventListener("click", async () => {
    await fetch("/logout", { method: "POST", headers: { "X-Majordomo-Csrf": "1" }, credentials: "same-origin" });
    location.href = "/";
  });
  $("log-close").addEventListener("click", () => { logName = null; clearInterval(openLog.t); $("log-panel").hidden = true; });
  $("job-close").addEventListener("click", () => { jobName = null; $("job-panel").hidden = true; });
  $("metric-name").addEventListener("change", drawChart);
  $("metric-range").addEventListener("change", drawChart);
  addEventListener("resize", () => { if (chart) chart.setSize({ width: Math.max(260, $("chart").clientWidth - 10), height: 240 }); });

  async function start() {
    live();
    await Promise.allSettled([loadStatus(), loadPrograms(), loadAlerts(), loadPipelines(), loadJobs(), loadBus(), loadFleet()]);
    await loadMetricNames();
    await drawChart();
    setInterval(() => { loadStatus(); loadBus(); }, 5000);
    setInterval(loadPrograms, 10000);
    setInterval(loadFleet, 15000);
    setInterval(drawChart, 60000);
    document.body.dataset.ready = "1";
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start); else start();
})();
