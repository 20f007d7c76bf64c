// Fulcrum's live dashboard: polls GET /api/v1/status and draws totals, one table per upstream group and
// small charts, and changes servers with PATCH /api/v1/upstreams/{group}/servers/{id}.
//
// Rules kept here: the DOM is built with createElement and textContent only (API data is never parsed as
// HTML); the admin token lives in sessionStorage for this tab and goes out as a bearer header; one poll is
// in flight at a time; rows are updated in place so an input being edited survives the next poll.
"use strict";

(() => {
  const STATUS_PATH = "api/v1/status";
  const TOKEN_KEY = "fulcrum.admin.token";
  const HISTORY = 180; // samples kept per server: 3 minutes at one poll a second
  const REQUEST_TIMEOUT_MS = 5000;
  const NONE = "\u2013"; // what a figure not known yet shows
  const LOST = "connection lost \u2014 retrying";
  const SVG_NS = "http://www.w3.org/2000/svg";
  const INTERVAL_MS = pollInterval();

  const COLUMNS = [
    { field: "id", label: "Server" },
    { field: "state", label: "State" },
    { field: "health", label: "Health" },
    { field: "weight", label: "Weight" },
    { field: "active", label: "Active", num: true, title: "requests in flight" },
    { field: "rps", label: "Req/s", num: true, title: "requests per second between the last two polls" },
    { field: "error_rate", label: "Errors", num: true, title: "errors / requests between the last two polls" },
    { field: "p50_ms", label: "p50", num: true, title: "median response time, last minute" },
    { field: "p99_ms", label: "p99", num: true, title: "99th percentile response time, last minute" },
    { field: "bytes_per_s", label: "Bytes/s", num: true, title: "response bytes per second, last minute" },
    { field: "new_connection_share", label: "New conn", num: true,
      title: "share of the last minute's requests that opened a new upstream connection" },
    { field: "trend", label: "Trend" },
    { field: "actions", label: "" },
  ];
  const ACTIONS = [
    { action: "drain", label: "Drain", state: "draining", title: "finish requests in flight, take no new ones" },
    { action: "enable", label: "Enable", state: "enabled", title: "take requests again" },
    { action: "disable", label: "Disable", state: "disabled", title: "take no requests" },
  ];
  // down reasons an operator chose; the others say the server is unwell
  const CHOSEN = new Set(["draining", "disabled"]);

  const $ = (id) => document.getElementById(id);
  const ui = {
    main: $("main"), version: $("version"), updated: $("updated"), connection: $("connection"),
    messages: $("messages"), auth: $("auth"), form: $("token-form"), tokenInput: $("token-input"),
    tokenError: $("token-error"), lost: $("lost"), lostDetail: $("lost-detail"), tokenSubmit: $("token-submit"), totals: $("totals"),
    totalChart: $("total-chart"), totalSpan: $("total-span"), groups: $("groups"), footer: $("footer"),
  };

  const app = {
    token: readToken(),
    polling: false,
    again: false,
    timer: null,
    last: null, // the previous status and when it came
    totalSeries: [],
    totalChart: null,
    groups: new Map(), // group name -> {section, tbody, meta, rows: Map(id -> row)}
    history: new Map(), // group + "\n" + id -> {requests, errors, rps: [], p99: []}
  };

  // -- the API ------------------------------------------------------------------------------------------

  class NetworkError extends Error {}
  class AuthError extends Error {}
  class ApiError extends Error {}

  /** One call to the admin API; resolves to its JSON, rejects with one of the three errors above. */
  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (app.token) headers.Authorization = "Bearer " + app.token;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), REQUEST_TIMEOUT_MS);
    let response;
    let text;
    try {
      response = await fetch(path, {
        method, headers, body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store", credentials: "omit", signal: abort.signal,
      });
      text = await response.text();
    } catch (err) {
      throw new NetworkError(abort.signal.aborted ? "no answer within " + REQUEST_TIMEOUT_MS / 1000 + " s"
        : "cannot reach the admin API");
    } finally {
      clearTimeout(timer);
    }
    let data = null;
    try {
      data = JSON.parse(text);
    } catch (err) {
      data = null;
    }
    const why = data && typeof data.error === "string" ? data.error : "HTTP " + response.status;
    if (response.status === 401) throw new AuthError(why);
    if (!response.ok) throw new ApiError(why);
    if (data === null) throw new ApiError("the answer is not JSON (is this Fulcrum's admin listener?)");
    return data;
  }

  function serverPath(group, id) {
    return "api/v1/upstreams/" + encodeURIComponent(group) + "/servers/" + encodeURIComponent(id);
  }

  // -- polling ------------------------------------------------------------------------------------------

  /** Poll now (or right after the poll in flight), then every INTERVAL_MS. */
  function pollNow() {
    if (app.polling) {
      app.again = true;
      return;
    }
    clearTimeout(app.timer);
    app.timer = null;
    poll();
  }

  function schedule() {
    clearTimeout(app.timer);
    app.timer = setTimeout(pollNow, app.again ? 0 : INTERVAL_MS);
    app.again = false;
  }

  async function poll() {
    app.polling = true;
    try {
      const status = await api("GET", STATUS_PATH);
      if (!status || !Array.isArray(status.upstreams)) throw new ApiError("the answer is not a Fulcrum status");
      showConnection("live", "live");
      clearNote("poll");
      showData();
      render(status);
      schedule();
    } catch (err) {
      if (err instanceof AuthError) {
        askToken(err.message); // polling waits for the token
      } else if (err instanceof NetworkError) {
        showConnection("lost", LOST);
        schedule();
      } else {
        showConnection("error", "error");
        note("error", "GET /" + STATUS_PATH + ": " + err.message, "poll");
        schedule();
      }
    } finally {
      app.polling = false;
    }
  }

  function showConnection(state, text) {
    ui.connection.dataset.state = state;
    ui.connection.textContent = text;
    ui.main.classList.toggle("stale", state === "lost" || state === "error");
    ui.lost.hidden = state !== "lost";
    if (state === "lost") {
      setText(ui.lostDetail, app.last
        ? "The admin API does not answer; the figures below are from " + clock(app.last.wall) + "."
        : "The admin API does not answer.");
    }
  }

  // -- the token ----------------------------------------------------------------------------------------

  function readToken() {
    try {
      return sessionStorage.getItem(TOKEN_KEY);
    } catch (err) {
      return null; // storage refused (a sandboxed page): the token lives in memory only
    }
  }

  function keepToken(token) {
    app.token = token;
    try {
      if (token) sessionStorage.setItem(TOKEN_KEY, token);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch (err) {
      // memory only, as above
    }
  }

  /** The API wants a token: a wrong one is forgotten and its error shown; polling waits for the form. */
  function askToken(message) {
    const hadToken = Boolean(app.token);
    keepToken(null);
    clearTimeout(app.timer);
    app.timer = null;
    showConnection("auth", "token needed");
    ui.totals.hidden = true;
    ui.groups.hidden = true;
    ui.footer.hidden = true;
    ui.auth.hidden = false;
    ui.tokenSubmit.disabled = false;
    ui.tokenSubmit.textContent = "Connect";
    setTokenError(hadToken ? message : "");
    ui.tokenInput.focus();
    ui.tokenInput.select();
  }

  function setTokenError(message) {
    ui.tokenError.textContent = message;
    ui.tokenError.hidden = !message;
    ui.tokenInput.setAttribute("aria-invalid", message ? "true" : "false");
  }

  ui.form.addEventListener("submit", (event) => {
    event.preventDefault();
    const token = ui.tokenInput.value.trim();
    if (!token) {
      setTokenError("Enter the token.");
      return;
    }
    if (!/^[\x21-\x7e]+$/.test(token)) {
      setTokenError("A token is visible ASCII characters only (it travels in an HTTP header).");
      return;
    }
    keepToken(token);
    setTokenError("");
    ui.tokenSubmit.disabled = true;
    ui.tokenSubmit.textContent = "Connecting\u2026";
    pollNow();
  });

  function showData() {
    if (!ui.auth.hidden) {
      ui.auth.hidden = true;
      ui.tokenInput.value = "";
    }
    ui.totals.hidden = false;
    ui.groups.hidden = false;
    ui.footer.hidden = false;
  }

  // -- messages -----------------------------------------------------------------------------------------

  /** Show a message; "ok" ones fade by themselves, errors stay until closed. A key replaces its own. */
  function note(kind, text, key) {
    if (key) clearNote(key);
    const box = document.createElement("div");
    box.className = "msg msg-" + kind;
    box.setAttribute("role", kind === "error" ? "alert" : "status");
    if (key) box.dataset.key = key;
    const body = document.createElement("span");
    body.className = "msg-text";
    body.textContent = text;
    const close = document.createElement("button");
    close.type = "button";
    close.className = "msg-close";
    close.setAttribute("aria-label", "dismiss");
    close.textContent = "\u00d7";
    close.addEventListener("click", () => box.remove());
    box.append(body, close);
    ui.messages.append(box);
    while (ui.messages.children.length > 4) ui.messages.firstElementChild.remove();
    if (kind !== "error") setTimeout(() => box.remove(), 4000);
  }

  function clearNote(key) {
    for (const box of ui.messages.querySelectorAll(".msg")) {
      if (box.dataset.key === key) box.remove();
    }
  }

  // -- drawing the status -------------------------------------------------------------------------------

  function render(status) {
    const now = performance.now();
    const last = app.last;
    // The server's own clock between the two answers, so a slow answer does not bend the rates.
    let seconds = last ? status.uptime_s - last.status.uptime_s : 0;
    if (!(seconds > 0.05) && last) seconds = (now - last.at) / 1000;
    const restarted = last !== null && status.uptime_s < last.status.uptime_s;
    const dt = last && !restarted && seconds > 0 ? seconds : null;

    ui.version.textContent = status.version ? "v" + status.version : "";
    const wall = new Date();
    ui.updated.textContent = "updated " + clock(wall);
    renderTotals(status, last ? last.status : null, dt);

    const seen = new Set();
    const order = [];
    for (const group of status.upstreams) {
      const view = groupView(group.name);
      order.push(view.section);
      seen.add(group.name);
      renderGroup(view, group, dt);
    }
    for (const [name, view] of app.groups) {
      if (!seen.has(name)) {
        view.section.remove();
        app.groups.delete(name);
      }
    }
    reorder(ui.groups, order);
    if (status.upstreams.length === 0) {
      ui.groups.replaceChildren(element("p", "empty", "No upstream groups in the running config."));
    } else {
      const empty = ui.groups.querySelector(":scope > .empty");
      if (empty) empty.remove();
    }
    app.last = { status, at: now, wall };
  }

  function renderTotals(status, before, dt) {
    let rps = null;
    if (before && dt) {
      const delta = status.requests_total - before.requests_total;
      if (delta >= 0) rps = delta / dt;
    }
    if (before) push(app.totalSeries, rps);
    setTotal("rps", formatRate(rps));
    setTotal("requests_total", formatCount(status.requests_total));
    setTotal("responses_5xx", isNumber(status.responses_5xx) ? formatCount(status.responses_5xx) + " answered 5xx" : "");
    setTotal("success_rate", formatPercent(status.success_rate, 2));
    setTotal("retries_total", isNumber(status.retries_total) ? formatCount(status.retries_total) + " retries" : "");
    setTotal("connections_active", formatCount(status.connections_active));
    setTotal("connections_total",
      isNumber(status.connections_total) ? "active · " + formatCount(status.connections_total) + " total" : "");
    setTotal("uptime", formatDuration(status.uptime_s));
    setTotal("memory", formatBytes(status.memory_bytes));
    setTotal("workers", formatCount(status.workers));
    const procs = Array.isArray(status.worker_processes) ? status.worker_processes : [];
    const restarts = procs.reduce((n, w) => n + (isNumber(w.restarts) ? w.restarts : 0), 0);
    setTotal("workers_up", procs.length
      ? `${formatCount(procs.filter((w) => w.up).length)} up · ${formatCount(restarts)} restart${restarts === 1 ? "" : "s"}`
      : "");
    const rate = document.querySelector('[data-total="success_rate"]');
    rate.classList.toggle("bad", isNumber(status.success_rate) && status.success_rate < 0.99);
    if (!app.totalChart) app.totalChart = makeChart(ui.totalChart, 240, 44, false);
    drawChart(app.totalChart, app.totalSeries, null, "req/s");
    const span = windowLabel(app.totalSeries.length);
    setText(ui.totalSpan, span);
    for (const el of document.querySelectorAll(".legend")) el.title = "req/s (area) and p99 (line), " + span;
  }

  function setTotal(name, text) {
    setText(document.querySelector('[data-total="' + name + '"]'), text);
  }

  function groupView(name) {
    let view = app.groups.get(name);
    if (view) return view;
    const section = element("section", "group");
    section.dataset.group = name;
    const head = element("div", "group-head");
    const title = element("h2", "group-name", name);
    const balance = element("span", "badge badge-balance");
    balance.dataset.field = "balance";
    const meta = element("span", "group-meta");
    head.append(title, balance, meta);

    const table = element("table", "servers");
    const thead = element("thead");
    const headRow = element("tr");
    for (const col of COLUMNS) {
      const th = element("th", col.num ? "num" : "");
      th.scope = "col";
      if (col.title) th.title = col.title;
      if (col.field === "trend") th.append(trendLegend());
      else th.textContent = col.label;
      headRow.append(th);
    }
    thead.append(headRow);
    const tbody = element("tbody");
    table.append(thead, tbody);
    const wrap = element("div", "table-wrap");
    wrap.append(table);
    section.append(head, wrap);
    view = { section, tbody, meta, balance, rows: new Map() };
    app.groups.set(name, view);
    return view;
  }

  function trendLegend() {
    const box = element("span", "legend");
    box.append(element("span", "legend-rps", "req/s"), element("span", "legend-p99", "p99"));
    return box;
  }

  function renderGroup(view, group, dt) {
    setText(view.balance, group.balance || "");
    const seen = new Set();
    const order = [];
    let eligible = 0;
    let rps = 0;
    let rpsKnown = false;
    for (const server of group.servers) {
      const row = rowView(view, group.name, server.id);
      seen.add(server.id);
      order.push(row.tr);
      const rate = renderRow(row, group.name, server, dt);
      if (server.eligible !== false) eligible += 1;
      if (rate !== null) {
        rps += rate;
        rpsKnown = true;
      }
    }
    for (const [id, row] of view.rows) {
      if (!seen.has(id)) {
        row.tr.remove();
        view.rows.delete(id);
        app.history.delete(historyKey(group.name, id));
      }
    }
    reorder(view.tbody, order);
    const n = group.servers.length;
    const parts = [n + (n === 1 ? " server" : " servers"), eligible + " eligible"];
    if (rpsKnown) parts.push(formatRate(rps) + " req/s");
    setText(view.meta, parts.join(" \u00b7 "));
  }

  function rowView(view, group, id) {
    let row = view.rows.get(id);
    if (row) return row;
    const tr = element("tr", "server");
    tr.dataset.server = id;
    tr.dataset.group = group;
    const cells = {};
    for (const col of COLUMNS) {
      const td = element("td", col.num ? "num" : "");
      td.dataset.field = col.field;
      cells[col.field] = td;
      tr.append(td);
    }
    row = { tr, cells, group, id, busy: false, state: null, weight: null, dirty: false };

    const name = element("span", "server-id", id);
    const url = element("span", "server-url");
    cells.id.append(name, url);
    row.url = url;

    row.stateBadge = element("span", "state");
    cells.state.append(row.stateBadge);

    row.healthText = element("span", "health");
    row.down = element("span", "down");
    row.down.dataset.field = "down";
    cells.health.append(row.healthText, row.down);

    const weight = element("div", "weight-edit");
    const input = element("input", "weight-input");
    input.type = "number";
    input.min = "1";
    input.max = "1000";
    input.step = "1";
    input.dataset.role = "weight-input";
    input.setAttribute("aria-label", "weight of " + id);
    const set = element("button", "btn btn-small", "Set");
    set.type = "button";
    set.dataset.action = "weight";
    set.title = "set the weight";
    input.addEventListener("input", () => {
      row.dirty = input.value !== String(row.weight);
      syncButtons(row);
    });
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter") setWeight(row);
      if (event.key === "Escape") {
        row.dirty = false;
        input.value = String(row.weight);
        syncButtons(row);
      }
    });
    set.addEventListener("click", () => setWeight(row));
    weight.append(input, set);
    cells.weight.append(weight);
    row.weightInput = input;
    row.setButton = set;

    row.chart = makeChart(cells.trend, 112, 28, true);

    const actions = element("div", "actions");
    row.buttons = {};
    for (const a of ACTIONS) {
      const button = element("button", "btn btn-small btn-" + a.action, a.label);
      button.type = "button";
      button.dataset.action = a.action;
      button.title = a.title;
      button.addEventListener("click", () => changeServer(row, { state: a.state }, "state set to " + a.state));
      row.buttons[a.state] = button;
      actions.append(button);
    }
    cells.actions.append(actions);
    view.rows.set(id, row);
    return row;
  }

  /** Update one row; returns the server's req/s (null when not known yet). */
  function renderRow(row, group, server, dt) {
    const key = historyKey(group, server.id);
    let hist = app.history.get(key);
    let rps = null;
    let errorRate = null;
    if (hist && dt) {
      const requests = server.requests - hist.requests;
      const errors = server.errors - hist.errors;
      if (requests >= 0 && errors >= 0) {
        rps = requests / dt;
        errorRate = requests > 0 ? errors / requests : null;
      }
    }
    if (!hist) {
      hist = { requests: 0, errors: 0, rps: [], p99: [] };
      app.history.set(key, hist);
    } else {
      push(hist.rps, rps);
      push(hist.p99, isNumber(server.p99_ms) ? server.p99_ms : null);
    }
    hist.requests = server.requests;
    hist.errors = server.errors;

    applyServer(row, server);
    setText(row.cells.active, formatCount(server.active));
    setText(row.cells.rps, formatRate(rps));
    row.cells.rps.title = isNumber(server.requests) ? formatCount(server.requests) + " requests since start" : "";
    setText(row.cells.error_rate, formatPercent(errorRate, 1));
    row.cells.error_rate.classList.toggle("bad", errorRate !== null && errorRate > 0.01);
    row.cells.error_rate.title = isNumber(server.errors) ? formatCount(server.errors) + " errors since start" : "";
    setText(row.cells.p50_ms, formatMs(server.p50_ms));
    setText(row.cells.p99_ms, formatMs(server.p99_ms));
    setText(row.cells.bytes_per_s, isNumber(server.bytes_per_s) ? formatBytes(server.bytes_per_s) + "/s" : NONE);
    setText(row.cells.new_connection_share, formatPercent(server.new_connection_share, 1));
    drawChart(row.chart, hist.rps, hist.p99, "req/s");
    return rps;
  }

  /** The parts of a row that a PATCH answer carries too: state, health, weight, url. */
  function applyServer(row, server) {
    row.state = server.state;
    setText(row.stateBadge, server.state || NONE);
    row.stateBadge.className = "state state-" + (server.state || "unknown");
    row.tr.dataset.state = server.state || "";
    row.tr.classList.toggle("ineligible", server.eligible === false);

    setText(row.url, server.url && server.url !== "http://" + server.id ? server.url : "");
    row.cells.id.title = server.url || "";

    const healthy = server.healthy !== false;
    setText(row.healthText, healthy ? "healthy" : "unhealthy");
    row.healthText.className = "health " + (healthy ? "health-ok" : "health-bad");
    const reasons = Array.isArray(server.down) ? server.down : [];
    const joined = reasons.join(",");
    if (row.down.dataset.reasons !== joined || row.down.dataset.state !== server.state) {
      row.down.dataset.reasons = joined;
      row.down.dataset.state = server.state;
      // The state badge already says draining or disabled; a chip names every other reason.
      const shown = reasons.filter((r) => r !== server.state);
      row.down.replaceChildren(...shown.map((r) => element("span", "chip" + (CHOSEN.has(r) ? "" : " chip-bad"), r)));
      row.cells.health.title = reasons.length ? "not eligible: " + reasons.join(", ") : "eligible";
    }

    row.weight = server.weight;
    if (!row.dirty && document.activeElement !== row.weightInput) row.weightInput.value = String(server.weight);
    syncButtons(row);
  }

  function syncButtons(row) {
    for (const [state, button] of Object.entries(row.buttons)) button.disabled = row.busy || row.state === state;
    row.setButton.disabled = row.busy || !row.dirty;
    row.weightInput.classList.toggle("dirty", row.dirty);
    row.tr.classList.toggle("busy", row.busy);
  }

  // -- changing servers ---------------------------------------------------------------------------------

  function setWeight(row) {
    const text = row.weightInput.value.trim();
    const weight = Number(text);
    if (!text || !Number.isInteger(weight)) {
      note("error", row.id + " in " + row.group + ": the weight must be a whole number (1 to 1000)");
      return;
    }
    changeServer(row, { weight }, "weight set to " + weight);
  }

  async function changeServer(row, change, what) {
    if (row.busy) return;
    row.busy = true;
    syncButtons(row);
    try {
      const server = await api("PATCH", serverPath(row.group, row.id), change);
      if ("weight" in change) row.dirty = false;
      row.busy = false;
      applyServer(row, server);
      note("ok", row.id + " in " + row.group + ": " + what);
    } catch (err) {
      if (err instanceof AuthError) {
        askToken(err.message);
      } else {
        note("error", row.id + " in " + row.group + ": not changed: " + err.message);
      }
    } finally {
      row.busy = false;
      syncButtons(row);
      if (app.token || ui.auth.hidden) pollNow();
    }
  }

  // -- charts -------------------------------------------------------------------------------------------

  function makeChart(container, width, height, withP99) {
    const svg = document.createElementNS(SVG_NS, "svg");
    svg.setAttribute("class", "chart");
    svg.setAttribute("viewBox", "0 0 " + width + " " + height);
    svg.setAttribute("width", String(width));
    svg.setAttribute("height", String(height));
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("role", "img");
    svg.dataset.samples = "0";
    const title = document.createElementNS(SVG_NS, "title");
    const base = svgElement("line", "chart-base", { x1: 0, x2: width, y1: height - 0.5, y2: height - 0.5 });
    const area = svgElement("path", "chart-area", {});
    const line = svgElement("path", "chart-line", {});
    svg.append(title, base, area, line);
    let p99 = null;
    if (withP99) {
      p99 = svgElement("path", "chart-p99", {});
      svg.append(p99);
    }
    container.append(svg);
    return { svg, title, area, line, p99, width, height };
  }

  function svgElement(name, cls, attrs) {
    const el = document.createElementNS(SVG_NS, name);
    el.setAttribute("class", cls);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
    return el;
  }

  function drawChart(chart, values, p99, unit) {
    const { width, height } = chart;
    const top = 3;
    const scale = (series) => Math.max(...series.filter(isNumber), 0);
    const max = scale(values);
    const paths = trace(values, width, height, top, max);
    chart.area.setAttribute("d", paths.area);
    chart.line.setAttribute("d", paths.line);
    if (chart.p99) chart.p99.setAttribute("d", trace(p99, width, height, top, scale(p99)).line);
    chart.svg.dataset.samples = String(values.length);
    const lastValue = values.length ? values[values.length - 1] : null;
    let title = unit + " now " + formatRate(lastValue) + ", max " + formatRate(values.length ? max : null);
    if (p99 && p99.length) title += "; p99 now " + formatMs(p99[p99.length - 1]) + ", max " + formatMs(scale(p99));
    chart.title.textContent = title + " (" + windowLabel(values.length) + ")";
  }

  /** SVG path data for a series across the chart's width (stretched until HISTORY samples); nulls leave gaps. */
  function trace(values, width, height, top, max) {
    if (!values || values.length < 2) return { line: "", area: "" };
    const step = width / (values.length - 1);
    const floor = height - 1;
    const ceiling = max * 1.15; // headroom, so a steady series does not run along the top edge
    const y = (v) => (ceiling > 0 ? floor - (v / ceiling) * (floor - top) : floor);
    let line = "";
    let area = "";
    let run = [];
    const point = ([x, yy]) => x.toFixed(1) + "," + yy.toFixed(1);
    const flush = () => {
      if (run.length === 0) return;
      if (run.length === 1) run.push([run[0][0] + step / 2, run[0][1]]); // a lone sample as a short dash
      line += "M" + run.map(point).join("L");
      area += "M" + run[0][0].toFixed(1) + "," + floor + "L" + run.map(point).join("L") +
        "L" + run[run.length - 1][0].toFixed(1) + "," + floor + "Z";
      run = [];
    };
    values.forEach((v, i) => {
      if (isNumber(v)) run.push([i * step, y(v)]);
      else flush();
    });
    flush();
    return { line, area };
  }

  // -- small helpers ------------------------------------------------------------------------------------

  function element(tag, cls, text) {
    const el = document.createElement(tag);
    if (cls) el.className = cls;
    if (text !== undefined) el.textContent = text;
    return el;
  }

  function setText(el, text) {
    if (el && el.textContent !== text) el.textContent = text;
  }

  /** Put ``children`` in this order under ``parent``, moving nodes only when the order changed. */
  function reorder(parent, children) {
    const current = Array.from(parent.children).filter((c) => children.includes(c));
    if (current.length === children.length && current.every((c, i) => c === children[i])) return;
    for (const child of children) parent.append(child);
  }

  function push(series, value) {
    series.push(value);
    if (series.length > HISTORY) series.splice(0, series.length - HISTORY);
  }

  function historyKey(group, id) {
    return group + "\n" + id;
  }

  function isNumber(v) {
    return typeof v === "number" && Number.isFinite(v);
  }

  function pollInterval() {
    const asked = Number(new URLSearchParams(window.location.search).get("interval"));
    return Number.isFinite(asked) && asked > 0 ? Math.min(10000, Math.max(200, asked)) : 1000;
  }

  /** The time that ``samples`` polls cover, as "last 45 s" or "last 3 min". */
  function windowLabel(samples) {
    const seconds = (Math.max(samples, 1) * INTERVAL_MS) / 1000;
    return "last " + (seconds >= 120 ? Math.round(seconds / 60) + " min" : Math.round(seconds) + " s");
  }

  function clock(date) {
    return date.toLocaleTimeString("en-GB", { hour12: false });
  }

  function formatCount(n) {
    return isNumber(n) ? Math.round(n).toLocaleString("en-US") : NONE;
  }

  function formatRate(r) {
    if (!isNumber(r)) return NONE;
    if (r >= 100) return Math.round(r).toLocaleString("en-US");
    return r.toFixed(1);
  }

  function formatPercent(share, digits) {
    if (!isNumber(share)) return NONE;
    const pct = share * 100;
    if (pct === 100 || pct === 0) return pct.toFixed(0) + " %";
    return pct.toFixed(digits) + " %";
  }

  function formatMs(ms) {
    if (!isNumber(ms)) return NONE;
    if (ms >= 1000) return (ms / 1000).toFixed(2) + " s";
    if (ms >= 100) return Math.round(ms) + " ms";
    if (ms >= 10) return ms.toFixed(1) + " ms";
    return ms.toFixed(2) + " ms";
  }

  function formatBytes(n) {
    if (!isNumber(n)) return NONE;
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let value = n;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return (unit === 0 ? Math.round(value) : value.toFixed(value >= 100 ? 0 : 1)) + " " + units[unit];
  }

  function formatDuration(seconds) {
    if (!isNumber(seconds)) return NONE;
    const s = Math.floor(seconds);
    const d = Math.floor(s / 86400);
    const h = Math.floor((s % 86400) / 3600);
    const m = Math.floor((s % 3600) / 60);
    const pad = (x) => String(x).padStart(2, "0");
    if (d > 0) return d + "d " + h + "h";
    if (h > 0) return h + "h " + pad(m) + "m";
    if (m > 0) return m + "m " + pad(s % 60) + "s";
    return s + "s";
  }

  pollNow();
})();
