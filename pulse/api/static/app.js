// The live page of Pulse: reads only the HTTP API beside it (relative URLs, so it also works
// behind a path prefix) and draws with the vendored uPlot. Closed windows of the selected
// device arrive from /api/live (Server-Sent Events; EventSource reconnects by itself with
// Last-Event-ID); the device list, the open windows, the top board and the dead letters are
// read again on timers and when a closed window arrives. The active alerts are read from
// /api/alerts and follow the alert events of a second stream (/api/live?events=alert): a
// firing transition sets its alert, a resolved one removes it. The search box asks
// /api/search/{kind} (the indexed dead letters, alerts and windows), a page at a time. A 401
// from any request shows the sign-in form; POST /api/session then sets the cookie that every
// later request carries.
// Every number shown keeps the exact value it came with in data-value (the browser test
// compares both with Redis); the text shows it rounded to three decimals.
"use strict";

(() => {
  const DEVICE_LIMIT = 100;
  const TOP_N = 10;
  const CHART_WINDOWS = 60; // windows of history each chart asks for
  const CHART_HEIGHT = 170;
  const FIELDS = ["count", "mean", "min", "max", "p50", "p95", "p99", "first", "last"];
  const NARROW_HIDDEN = new Set(["p50", "p95", "p99", "first"]); // columns a phone leaves out

  const $ = (id) => document.getElementById(id);
  const state = {
    signedIn: false,
    prefix: "",
    selected: null,
    wanted: null, // the device named in the address (#device=...), selected once signed in
    deviceMetrics: [], // the selected device's metrics, one chart each
    windows: [], // tumbling and hopping window labels, in the order the API gave them
    metrics: [],
    chartWindow: null,
    charts: new Map(), // metric -> {element, plot, data: [starts, mins, means, maxes], ends}
    recent: [], // the selected device's latest closed windows from /api/live, for loadCharts
    live: null,
    alerts: new Map(), // alert (rule:device:metric:window) -> its firing transition
    alertsLive: null,
    alertEvents: null, // alert events received while /api/alerts is read, applied after it
    alertLoads: 0, // reads of /api/alerts started: only the latest one's answer is shown
    searchKind: null, // the kind of the documents the search shows
    searchCursor: null, // the cursor of their next page (null: none)
    timers: [],
    pending: new Map(), // throttled loaders: name -> timeout id
  };

  class Unauthorized extends Error {}
  class ApiFailure extends Error {
    constructor(status, message, parameter) {
      super(message);
      this.status = status;
      this.parameter = parameter;
    }
  }

  // ---- formatting --------------------------------------------------------------------------

  const numberFormat = new Intl.NumberFormat("en-US", {
    maximumFractionDigits: 3,
    useGrouping: false,
  });
  const timeFormat = new Intl.DateTimeFormat(undefined, {
    hour: "2-digit",
    minute: "2-digit",
    second: "2-digit",
    hour12: false,
  });

  function formatNumber(value) {
    return typeof value === "number" ? numberFormat.format(value) : "–";
  }

  function formatTime(seconds) {
    return typeof seconds === "number" ? timeFormat.format(new Date(seconds * 1000)) : "–";
  }

  function element(tag, attributes = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes)) {
      if (value !== undefined && value !== null) node.setAttribute(name, String(value));
    }
    for (const child of children) {
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function numberCell(field, value) {
    const kind = NARROW_HIDDEN.has(field) ? "num wide-only" : "num";
    return element("td", { class: kind, "data-field": field, "data-value": value }, formatNumber(value));
  }

  // A window label's size in seconds ("10s", "5m/1m": 5 minutes), or null.
  function windowSeconds(label) {
    const match = /^(\d+)(ms|s|m|h|d)(?:\/|$)/.exec(label);
    if (!match) return null;
    const unit = { ms: 0.001, s: 1, m: 60, h: 3600, d: 86400 }[match[2]];
    return Number(match[1]) * unit;
  }

  // ---- the API -----------------------------------------------------------------------------

  async function api(path, options = {}) {
    const response = await fetch("api/" + path, { credentials: "same-origin", ...options });
    if (response.status === 401) {
      showSignIn();
      throw new Unauthorized("sign in");
    }
    if (!response.ok) {
      let body = {};
      try {
        body = await response.json();
      } catch (_) {
        // not JSON: the status says enough
      }
      throw new ApiFailure(response.status, body.error || response.statusText, body.parameter);
    }
    return response.json();
  }

  function setStatus(name, text) {
    const status = $("status");
    status.dataset.state = name;
    status.textContent = text;
  }

  // Runs loader at most once a second however often it is asked for.
  function soon(name, loader) {
    if (state.pending.has(name)) return;
    state.pending.set(
      name,
      setTimeout(() => {
        state.pending.delete(name);
        quietly(loader());
      }, 1000),
    );
  }

  // A background refresh that fails leaves the last good view and says so in the status.
  function quietly(promise) {
    promise.catch((error) => {
      if (!(error instanceof Unauthorized)) setStatus("error", String(error.message || error));
    });
  }

  function learn(list, names) {
    let changed = false;
    for (const name of names) {
      if (!list.includes(name)) {
        list.push(name);
        changed = true;
      }
    }
    return changed;
  }

  // ---- sign-in -----------------------------------------------------------------------------

  function showSignIn() {
    state.signedIn = false;
    stopLive();
    stopAlerts();
    for (const timer of state.timers) clearInterval(timer);
    state.timers = [];
    $("app").hidden = true;
    $("signin").hidden = false;
    setStatus("signin", "sign-in needed");
    $("token").focus();
  }

  async function signIn(event) {
    event.preventDefault();
    $("signin-error").textContent = "";
    const response = await fetch("api/session", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ token: $("token").value }),
    });
    if (!response.ok) {
      $("signin-error").textContent =
        response.status === 401 ? "That token is not the API's." : `Sign-in failed (${response.status}).`;
      return;
    }
    $("token").value = "";
    $("signin").hidden = true;
    start();
  }

  // ---- the device list ---------------------------------------------------------------------

  async function loadDevices() {
    const prefix = state.prefix;
    const query = new URLSearchParams({ limit: String(DEVICE_LIMIT) });
    if (prefix) query.set("prefix", prefix);
    let answer;
    try {
      answer = await api("devices?" + query);
    } catch (error) {
      if (error instanceof ApiFailure && error.status === 400 && prefix === state.prefix) {
        $("devices").replaceChildren();
        $("devices-note").textContent = error.message;
        return;
      }
      throw error;
    }
    if (prefix !== state.prefix) return; // the search changed while this was under way
    const list = $("devices");
    list.replaceChildren(
      ...answer.devices.map((device) => {
        const metrics = Object.keys(device.latest).sort();
        learn(state.metrics, metrics);
        return element(
          "li",
          {
            "data-device": device.device,
            "aria-selected": device.device === state.selected,
            role: "option",
            tabindex: 0,
          },
          element("span", { class: "id" }, device.device),
          element("span", { class: "seen", "data-value": device.last_seen }, formatTime(device.last_seen)),
          element(
            "div",
            { class: "latest" },
            ...metrics.map((metric) => {
              const value = device.latest[metric].value;
              return element(
                "span",
                { "data-metric": metric },
                metric + " ",
                element("b", { "data-value": value }, formatNumber(value)),
              );
            }),
          ),
        );
      }),
    );
    const count = answer.devices.length;
    $("devices-note").textContent =
      (count === 1 ? "1 device" : `${count} devices`) +
      (answer.next_cursor ? ` shown, more exist: narrow the search` : "");
    fillTopSelects();
    if (!state.selected && state.signedIn && count > 0) select(answer.devices[0].device);
    return answer;
  }

  function onSearch() {
    clearTimeout(state.searchTimer);
    state.searchTimer = setTimeout(() => {
      state.prefix = $("search").value.trim();
      quietly(loadDevices());
    }, 250);
  }

  function onDeviceClick(event) {
    const item = event.target.closest("li[data-device]");
    if (item) select(item.dataset.device);
  }

  // ---- one device --------------------------------------------------------------------------

  function select(device) {
    state.selected = device;
    history.replaceState(null, "", "#device=" + encodeURIComponent(device));
    for (const item of $("devices").children) {
      item.setAttribute("aria-selected", String(item.dataset.device === device));
    }
    $("device-name").textContent = device;
    $("last-closed").textContent = "no window closed yet";
    for (const name of ["data-metric", "data-window", "data-start", "data-end"]) {
      $("last-closed").removeAttribute(name);
    }
    $("charts").replaceChildren();
    $("windows").replaceChildren();
    for (const chart of state.charts.values()) chart.plot && chart.plot.destroy();
    state.charts.clear();
    state.recent = [];
    startLive();
    quietly(loadDevice(true));
  }

  async function loadDevice(withCharts) {
    const device = state.selected;
    if (!device) return;
    const detail = await api("devices/" + encodeURIComponent(device));
    if (device !== state.selected) return;
    const labels = [...new Set([...Object.keys(detail.closed), ...Object.keys(detail.open)])];
    state.deviceMetrics = Object.keys(detail.latest).sort();
    learn(state.metrics, state.deviceMetrics);
    if (learn(state.windows, labels)) fillTopSelects();
    fillChartWindows(labels);
    renderWindows(detail);
    if (withCharts) await loadCharts();
  }

  function fillChartWindows(labels) {
    const select = $("chart-window");
    const known = [...select.options].map((option) => option.value);
    learn(known, labels);
    if (known.length !== select.options.length) {
      select.replaceChildren(...known.map((label) => element("option", { value: label }, label)));
    }
    if (!state.chartWindow || !known.includes(state.chartWindow)) state.chartWindow = known[0] || null;
    if (state.chartWindow) select.value = state.chartWindow;
  }

  function renderWindows(detail) {
    const head = element(
      "tr",
      {},
      element("th", {}, "metric"),
      element("th", {}, "window"),
      ...FIELDS.map((field) => element("th", { class: NARROW_HIDDEN.has(field) ? "wide-only" : null }, field)),
    );
    const rows = [];
    const metrics = Object.keys(detail.latest).sort();
    for (const metric of metrics) {
      const latest = detail.latest[metric];
      rows.push(
        element(
          "tr",
          { "data-metric": metric, "data-kind": "latest" },
          element("td", {}, metric),
          element("td", {}, "latest", element("span", { class: "span" }, formatTime(latest.ts))),
          ...FIELDS.map((field) =>
            field === "last"
              ? numberCell("value", latest.value)
              : element("td", { class: NARROW_HIDDEN.has(field) ? "wide-only" : null }),
          ),
        ),
      );
      for (const kind of ["closed", "open", "sliding"]) {
        for (const [label, byMetric] of Object.entries(detail[kind] || {})) {
          if (byMetric[metric]) rows.push(windowRow(metric, kind, label, byMetric[metric]));
        }
      }
    }
    $("windows").replaceChildren(element("thead", {}, head), element("tbody", {}, ...rows));
  }

  function windowRow(metric, kind, label, fields) {
    const name = kind === "sliding" ? `sliding ${label}` : `${kind} ${label}`;
    const span =
      kind === "sliding" ? `to ${formatTime(fields.end)}` : `${formatTime(fields.start)}–${formatTime(fields.end)}`;
    return element(
      "tr",
      { "data-metric": metric, "data-kind": kind, "data-window": label, "data-start": fields.start },
      element("td", {}, metric),
      element("td", {}, name, element("span", { class: "span" }, span)),
      ...FIELDS.map((field) => numberCell(field, fields[field])),
    );
  }

  // ---- charts ------------------------------------------------------------------------------

  async function loadCharts() {
    const device = state.selected;
    const label = state.chartWindow;
    if (!device || !label) return;
    const size = windowSeconds(label);
    const metrics = [...state.deviceMetrics];
    const answers = await Promise.all(
      metrics.map(async (metric) => {
        const query = new URLSearchParams({ window: label });
        if (size) query.set("since", String(Math.floor(Date.now() / 1000 - CHART_WINDOWS * size)));
        try {
          const path = `history/${encodeURIComponent(device)}/${encodeURIComponent(metric)}?${query}`;
          return [metric, (await api(path)).windows];
        } catch (error) {
          if (error instanceof ApiFailure && error.status === 404) return [metric, null];
          throw error;
        }
      }),
    );
    if (device !== state.selected || label !== state.chartWindow) return;
    $("charts").replaceChildren();
    for (const chart of state.charts.values()) chart.plot && chart.plot.destroy();
    state.charts.clear();
    for (const [metric, windows] of answers) {
      if (windows === null) continue; // a metric this device does not have
      const chart = makeChart(metric, label);
      for (const window of windows) addPoint(chart, window);
      // A window that closed while the history was read came over the stream meanwhile.
      for (const event of state.recent) {
        if (event.metric === metric && event.window === label) addPoint(chart, event.fields);
      }
      drawChart(chart);
    }
  }

  function makeChart(metric, label) {
    const plotBox = element("div", { class: "plot" });
    const lastLine = element("p", { class: "note last" }, "no closed window yet");
    const chartElement = element(
      "div",
      { class: "chart", "data-metric": metric, "data-window": label, "data-points": 0 },
      element("h3", {}, `${metric} · mean, min–max per ${label}`),
      plotBox,
      lastLine,
    );
    $("charts").append(chartElement);
    const chart = { element: chartElement, plotBox, lastLine, plot: null, data: [[], [], [], []], ends: [] };
    state.charts.set(metric, chart);
    return chart;
  }

  // Inserts a closed window by its start (a window seen again replaces itself).
  function addPoint(chart, window) {
    const [starts, mins, means, maxes] = chart.data;
    let index = starts.length;
    while (index > 0 && starts[index - 1] > window.start) index--;
    const replace = index > 0 && starts[index - 1] === window.start;
    const at = replace ? index - 1 : index;
    const count = replace ? 1 : 0;
    starts.splice(at, count, window.start);
    mins.splice(at, count, window.min);
    means.splice(at, count, window.mean);
    maxes.splice(at, count, window.max);
    chart.ends.splice(at, count, window.end);
    while (starts.length > CHART_WINDOWS * 2) {
      for (const series of chart.data) series.shift();
      chart.ends.shift();
    }
    const last = starts.length - 1;
    chart.element.dataset.points = String(starts.length);
    const line = chart.lastLine;
    line.dataset.start = String(starts[last]);
    line.dataset.end = String(chart.ends[last]);
    line.dataset.mean = String(means[last]);
    line.textContent =
      `last closed ${formatTime(starts[last])}–${formatTime(chart.ends[last])}: ` +
      `mean ${formatNumber(means[last])}, min ${formatNumber(mins[last])}, max ${formatNumber(maxes[last])}`;
  }

  function drawChart(chart) {
    if (chart.data[0].length === 0) {
      chart.plotBox.replaceChildren(element("p", { class: "empty" }, "no closed window yet"));
      return;
    }
    if (chart.plot) {
      chart.plot.setData(chart.data);
      return;
    }
    chart.plotBox.replaceChildren();
    const styles = getComputedStyle(document.documentElement);
    const color = (name) => styles.getPropertyValue(name).trim();
    const axis = {
      stroke: color("--muted"),
      grid: { stroke: color("--line"), width: 1 },
      ticks: { stroke: color("--line"), width: 1 },
    };
    chart.plot = new uPlot(
      {
        width: Math.max(chart.plotBox.clientWidth, 100),
        height: CHART_HEIGHT,
        legend: { show: false },
        cursor: { drag: { x: false, y: false } },
        series: [
          {},
          { label: "min", stroke: "transparent", points: { show: false } },
          { label: "mean", stroke: color("--accent"), width: 2 },
          { label: "max", stroke: "transparent", points: { show: false } },
        ],
        bands: [{ series: [3, 1], fill: color("--band") }],
        axes: [axis, { ...axis, size: 56 }],
      },
      chart.data,
      chart.plotBox,
    );
  }

  function resizeCharts() {
    for (const chart of state.charts.values()) {
      if (chart.plot) chart.plot.setSize({ width: Math.max(chart.plotBox.clientWidth, 100), height: CHART_HEIGHT });
    }
  }

  // ---- live events -------------------------------------------------------------------------

  function startLive() {
    stopLive();
    if (!state.selected) return;
    const source = new EventSource("api/live?" + new URLSearchParams({ device: state.selected }));
    state.live = source;
    source.addEventListener("open", () => setStatus("live", "live"));
    source.addEventListener("window", onWindowEvent);
    // The server no longer holds every window after the last one this page got: reload them.
    source.addEventListener("reset", () => quietly(loadDevice(true)));
    source.addEventListener("error", () => {
      if (source !== state.live) return;
      setStatus("connecting", "reconnecting…");
      if (source.readyState === EventSource.CLOSED) {
        // The server answered with something other than a stream (401, 503): a plain request
        // says which (a 401 shows the sign-in form), then the stream is opened again.
        quietly(api("devices?limit=1"));
        setTimeout(() => state.live === source && state.signedIn && startLive(), 5000);
      }
    });
  }

  function stopLive() {
    if (state.live) state.live.close();
    state.live = null;
  }

  function onWindowEvent(message) {
    const event = JSON.parse(message.data);
    const fields = event.aggregates ? { ...event.aggregates, start: event.start, end: event.end } : event;
    if (event.device === state.selected) {
      state.recent.push({ metric: event.metric, window: event.window, fields });
      if (state.recent.length > 100) state.recent.shift();
      const line = $("last-closed");
      line.textContent =
        `last closed: ${event.metric} ${event.window} ` +
        `${formatTime(event.start)}–${formatTime(event.end)}, mean ${formatNumber(fields.mean)}`;
      line.dataset.metric = event.metric;
      line.dataset.window = event.window;
      line.dataset.start = String(event.start);
      line.dataset.end = String(event.end);
      if (event.window === state.chartWindow) {
        const chart = state.charts.get(event.metric) || makeChart(event.metric, event.window);
        addPoint(chart, fields);
        drawChart(chart);
      }
      const newMetric = learn(state.metrics, [event.metric]);
      if (learn(state.windows, [event.window]) || newMetric) fillTopSelects();
      soon("device", () => loadDevice(false));
    }
    if (event.window === $("top-window").value && event.metric === $("top-metric").value) {
      soon("top", loadTop);
    }
    soon("dead-letters", loadDeadLetters);
  }

  // ---- active alerts -----------------------------------------------------------------------

  function alertKey(alert) {
    return [alert.rule, alert.device, alert.metric, alert.window || ""].join(":");
  }

  // Most recent first, as /api/alerts orders them.
  function alertOrder(a, b) {
    if (a.end !== b.end) return b.end - a.end;
    for (const name of ["rule", "device", "metric", "window"]) {
      const x = a[name] || "";
      const y = b[name] || "";
      if (x !== y) return x < y ? -1 : 1;
    }
    return 0;
  }

  async function loadAlerts() {
    const load = ++state.alertLoads;
    const all = $("alerts-all").checked;
    const missed = [];
    state.alertEvents = missed;
    let answer;
    try {
      answer = await api("alerts" + (all ? "?all=true" : ""));
    } finally {
      if (load === state.alertLoads) state.alertEvents = null;
    }
    // A later read is under way (a timer, the checkbox, a reconnection): it will show.
    if (load !== state.alertLoads) return;
    state.alerts = new Map(answer.alerts.map((alert) => [alertKey(alert), alert]));
    // Events that came while the answer was on its way: applied again, in order (each one
    // sets or removes its alert, so one the answer already had changes nothing).
    for (const alert of missed) applyAlert(alert);
    renderAlerts();
  }

  function applyAlert(alert) {
    const key = alertKey(alert);
    if (alert.state === "firing" && (!alert.silenced || $("alerts-all").checked)) {
      state.alerts.set(key, alert);
    } else {
      state.alerts.delete(key);
    }
  }

  function onAlertEvent(message) {
    const alert = JSON.parse(message.data);
    if (state.alertEvents) state.alertEvents.push(alert);
    applyAlert(alert);
    renderAlerts();
  }

  function renderAlerts() {
    const alerts = [...state.alerts.values()].sort(alertOrder);
    $("alerts-count").textContent = `(${alerts.length})`;
    const head = element(
      "tr",
      {},
      element("th", {}, "since"),
      element("th", { class: "name" }, "severity"),
      element("th", { class: "name" }, "rule"),
      element("th", { class: "name" }, "device"),
      element("th", { class: "name wide-only" }, "metric"),
      element("th", {}, "value"),
      element("th", { class: "wide-only" }, "threshold"),
    );
    const rows = alerts.map((alert) =>
      element(
        "tr",
        {
          "data-alert": alertKey(alert),
          "data-device": alert.device,
          "data-severity": alert.severity,
          "data-silenced": String(alert.silenced),
          "data-end": alert.end,
          class: alert.silenced ? "silenced" : null,
          title: alert.silenced ? "silenced" : null,
        },
        element("td", {}, formatTime(alert.end)),
        element("td", { class: "name severity" }, alert.severity),
        element("td", { class: "name" }, alert.rule),
        element("td", { class: "name" }, alert.device),
        element(
          "td",
          { class: "name wide-only" },
          alert.metric,
          element("span", { class: "span" }, alert.window ? `${alert.aggregate} of ${alert.window}` : "absence"),
        ),
        numberCell("value", alert.value),
        element(
          "td",
          { class: "num wide-only", "data-field": "threshold", "data-value": alert.threshold },
          formatNumber(alert.threshold),
        ),
      ),
    );
    if (rows.length === 0) rows.push(element("tr", {}, element("td", { colspan: 7 }, "no active alert")));
    $("alerts").replaceChildren(element("thead", {}, head), element("tbody", {}, ...rows));
  }

  function startAlerts() {
    stopAlerts();
    const source = new EventSource("api/live?" + new URLSearchParams({ events: "alert" }));
    state.alertsLive = source;
    source.addEventListener("alert", onAlertEvent);
    // Events may have been lost (the stream trimmed them) or missed while away: read again.
    source.addEventListener("reset", () => quietly(loadAlerts()));
    source.addEventListener("open", () => quietly(loadAlerts()));
    source.addEventListener("error", () => {
      if (source !== state.alertsLive || source.readyState !== EventSource.CLOSED) return;
      setTimeout(() => state.alertsLive === source && state.signedIn && startAlerts(), 5000);
    });
  }

  function stopAlerts() {
    if (state.alertsLive) state.alertsLive.close();
    state.alertsLive = null;
  }

  function onAlertClick(event) {
    const row = event.target.closest("tr[data-device]");
    if (row) select(row.dataset.device);
  }

  // ---- the top board -----------------------------------------------------------------------

  function fillTopSelects() {
    for (const [id, names] of [
      ["top-window", state.windows],
      ["top-metric", state.metrics],
    ]) {
      const select = $(id);
      if (select.options.length === names.length) continue;
      const chosen = select.value;
      select.replaceChildren(...names.map((name) => element("option", { value: name }, name)));
      if (names.includes(chosen)) select.value = chosen;
      if (!chosen && names.length) quietly(loadTop());
    }
  }

  async function loadTop() {
    const label = $("top-window").value;
    const metric = $("top-metric").value;
    const order = $("top-order").value;
    if (!label || !metric) return;
    const query = new URLSearchParams({ n: String(TOP_N), order });
    let answer;
    try {
      answer = await api(`top/${encodeURIComponent(label)}/${encodeURIComponent(metric)}?${query}`);
    } catch (error) {
      if (!(error instanceof ApiFailure && error.status === 404)) throw error;
      answer = { devices: [] };
    }
    if (label !== $("top-window").value || metric !== $("top-metric").value) return;
    const table = $("top");
    table.dataset.window = label;
    table.dataset.metric = metric;
    table.replaceChildren(
      element(
        "thead",
        {},
        element("tr", {}, element("th", {}, "#"), element("th", { class: "name" }, "device"), element("th", {}, "mean")),
      ),
      element(
        "tbody",
        {},
        ...answer.devices.map((row, index) =>
          element(
            "tr",
            { "data-device": row.device },
            element("td", {}, index + 1),
            element("td", { class: "name" }, row.device),
            numberCell("mean", row.mean),
          ),
        ),
      ),
    );
  }

  function onTopClick(event) {
    const row = event.target.closest("tr[data-device]");
    if (row) select(row.dataset.device);
  }

  // ---- dead letters ------------------------------------------------------------------------

  async function loadDeadLetters() {
    const answer = await api("dead-letters");
    const reasons = Object.entries(answer.by_reason).sort((a, b) => b[1] - a[1]);
    const rows = reasons.map(([reason, count]) =>
      element("tr", { "data-reason": reason }, element("td", {}, reason), numberCell("count", count)),
    );
    if (rows.length === 0) rows.push(element("tr", {}, element("td", { colspan: 2 }, "none")));
    $("dead-letters").replaceChildren(
      element("thead", {}, element("tr", {}, element("th", {}, "reason"), element("th", {}, "count"))),
      element("tbody", {}, ...rows),
    );
  }

  // ---- search (GET /api/search/{kind}: the indexed documents, newest first) -----------------

  // What a row shows of each kind's documents after its time: [field, kind of cell].
  const SEARCH_COLUMNS = {
    "dead-letters": [["reason", "name"], ["device", "name"], ["detail", "text"]],
    alerts: [["state", "name"], ["rule", "name"], ["device", "name"], ["value", "num"]],
    windows: [["window", "name"], ["device", "name"], ["metric", "name"], ["mean", "num"]],
  };
  const SEARCH_LIMIT = 20;

  function searchPath(cursor) {
    const kind = $("search-kind").value;
    const query = new URLSearchParams({ limit: String(SEARCH_LIMIT) });
    const q = $("search-q").value.trim();
    if (q) query.set("q", q);
    if ($("search-since").value) query.set("since", $("search-since").value);
    if (cursor) query.set("cursor", cursor);
    return `search/${kind}?${query}`;
  }

  function searchRow(kind, doc) {
    const cells = SEARCH_COLUMNS[kind].map(([field, cell]) =>
      cell === "num"
        ? numberCell(field, doc[field])
        : element("td", { class: cell, "data-field": field }, doc[field] ?? "–"),
    );
    return element("tr", { "data-id": doc.id }, element("td", {}, formatTime(doc.time / 1000)), ...cells);
  }

  async function runSearch(event) {
    if (event) event.preventDefault();
    const kind = $("search-kind").value;
    state.searchKind = kind;
    await showSearch(await searchOrSay(searchPath(null)), kind, false);
  }

  async function moreSearch() {
    if (!state.searchCursor) return;
    await showSearch(await searchOrSay(searchPath(state.searchCursor)), state.searchKind, true);
  }

  // The answer, or null after saying why not (search unavailable, a bad parameter).
  async function searchOrSay(path) {
    try {
      return await api(path);
    } catch (error) {
      if (error instanceof Unauthorized) throw error;
      $("search-note").textContent = `search failed: ${error.message}`;
      $("search-note").classList.add("error");
      return null;
    }
  }

  async function showSearch(answer, kind, append) {
    if (answer === null) return;
    const rows = answer.documents.map((doc) => searchRow(kind, doc));
    const table = $("search-results");
    if (append && table.tBodies.length) {
      table.tBodies[0].append(...rows);
    } else {
      const heads = [["time", "name"], ...SEARCH_COLUMNS[kind]];
      const cells = heads.map(([name, cell]) => element("th", { class: cell === "num" ? "num" : "left" }, name));
      table.replaceChildren(
        element("thead", {}, element("tr", {}, ...cells)),
        element("tbody", {}, ...rows),
      );
    }
    const shown = table.tBodies[0].rows.length;
    const total = `${answer.total}${answer.total_exact ? "" : " or more"}`;
    $("search-note").classList.remove("error");
    $("search-note").textContent = `${total} found, ${shown} shown, newest first`;
    state.searchCursor = answer.cursor;
    $("search-more").hidden = !answer.cursor;
  }

  // ---- start -------------------------------------------------------------------------------

  async function start() {
    let answer = null;
    try {
      answer = await loadDevices(); // the first request: a 401 shows the sign-in form instead
    } catch (error) {
      if (error instanceof Unauthorized) return;
      setStatus("error", String(error.message || error));
    }
    state.signedIn = true;
    $("app").hidden = false;
    const first = answer && answer.devices.length ? answer.devices[0].device : null;
    const device = state.selected || state.wanted || first;
    if (device) select(device);
    quietly(loadTop());
    quietly(loadDeadLetters());
    startAlerts();
    state.timers = [
      setInterval(() => quietly(loadDevices()), 5000),
      setInterval(() => quietly(loadDevice(false)), 5000),
      setInterval(() => quietly(loadTop()), 10000),
      setInterval(() => quietly(loadDeadLetters()), 10000),
      setInterval(() => quietly(loadAlerts()), 30000),
    ];
  }

  function init() {
    $("signin").addEventListener("submit", (event) => quietly(signIn(event)));
    $("search").addEventListener("input", onSearch);
    $("devices").addEventListener("click", onDeviceClick);
    $("devices").addEventListener("keydown", (event) => event.key === "Enter" && onDeviceClick(event));
    $("top").addEventListener("click", onTopClick);
    $("alerts").addEventListener("click", onAlertClick);
    $("alerts-all").addEventListener("change", () => quietly(loadAlerts()));
    $("search-form").addEventListener("submit", (event) => quietly(runSearch(event)));
    $("search-more").addEventListener("click", () => quietly(moreSearch()));
    for (const id of ["top-window", "top-metric", "top-order"]) {
      $(id).addEventListener("change", () => quietly(loadTop()));
    }
    $("chart-window").addEventListener("change", (event) => {
      if (event.target.value === state.chartWindow) return;
      state.chartWindow = event.target.value;
      quietly(loadCharts());
    });
    new ResizeObserver(resizeCharts).observe($("charts"));
    const fromHash = /^#device=(.+)$/.exec(location.hash);
    if (fromHash) state.wanted = decodeURIComponent(fromHash[1]);
    start();
  }

  init();
})();
