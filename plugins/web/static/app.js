// canbridge's page: polls /api/state every 2 s and /api/history every minute, draws with
// plain DOM and SVG (no library, no build step).
"use strict";

const LIMITS = [
  ["charge_voltage_limit", "CVL", "V"], ["charge_current_limit", "CCL", "A"],
  ["discharge_current_limit", "DCL", "A"], ["discharge_voltage_limit", "DVL", "V"],
];
const $ = (id) => document.getElementById(id);

function fmt(value, unit, digits = 1) {
  if (value === null || value === undefined || value === "") return "–";
  if (typeof value === "number") return `${value.toFixed(digits)}${unit ? " " + unit : ""}`;
  return String(value);
}

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (cls) node.className = cls;
  return node;
}

function table(node, header, rows) {
  node.replaceChildren();
  const head = el("tr");
  header.forEach((h) => head.append(el("th", h)));
  node.append(head);
  rows.forEach((cells) => {
    const tr = el("tr");
    cells.forEach((c) => tr.append(typeof c === "object" ? c : el("td", c)));
    node.append(tr);
  });
}

function inverters(status) {
  return Object.entries(status.components || {})
    .filter(([, c]) => c.kind === "sink" && "safety" in c);
}

function render(state) {
  const v = state.values || {};
  const status = state.status || {};
  $("pipeline").textContent = status.pipeline ? `· ${status.pipeline}` : "";
  $("soc").textContent = fmt(v.soc_reported ?? v.soc, "%", 0);
  $("voltage").textContent = fmt(v.voltage, "V", 1);
  $("current").textContent = fmt(v.current, "A", 1);
  $("power").textContent = fmt(v.power, "W", 0);
  $("temperature").textContent = fmt(v.temperature, "°C", 1);

  const sinks = inverters(status);
  const unsafe = sinks.filter(([, c]) => c.safety !== "normal");
  const overall = $("overall");
  if (!sinks.length) { overall.textContent = "no inverter sink"; overall.className = "pill warn"; }
  else if (!unsafe.length) { overall.textContent = "normal"; overall.className = "pill ok"; }
  else { overall.textContent = unsafe.map(([n, c]) => `${n}: ${c.safety}`).join("; "); overall.className = "pill bad"; }

  const rows = LIMITS.map(([key, label, unit]) => {
    const asked = v[key];
    const cells = [`${label}`, fmt(asked, unit)];
    sinks.forEach(([, c]) => {
      const sent = c.sent ? c.sent[key] : null;
      const td = el("td", fmt(sent, unit));
      if (typeof sent === "number" && typeof asked === "number" && Math.abs(sent - asked) > 0.05) td.className = "lower";
      cells.push(td);
    });
    return cells;
  });
  table($("limits"), ["limit", "battery asks", ...sinks.map(([n]) => `${n} gets`)], rows);
  const reasons = $("reasons");
  reasons.replaceChildren();
  sinks.forEach(([n, c]) => { if (c.safety && c.safety !== "normal") reasons.append(el("li", `${n}: ${c.safety}`)); });
  Object.entries(status.components || {}).forEach(([n, c]) => {
    if (c.state === "active" && c.last_change) reasons.append(el("li", `${n}: ${c.last_change}`));
  });

  table($("inverters"), ["sink", "profile", "state", "safety", "inverter alive"],
    sinks.map(([n, c]) => [n, c.profile || "–", c.state, el("td", c.safety, c.safety === "normal" ? "ok" : "bad"),
      c.inverter_alive === undefined ? "–" : (c.inverter_alive ? "yes" : "no")]));

  const facts = $("balancing");
  facts.replaceChildren();
  [["holding now", v.balancing_active === undefined ? "–" : (v.balancing_active ? "yes" : "no")],
   ["time left", v.balancing_remaining ? `${Math.round(v.balancing_remaining / 60)} min` : "–"],
   ["last", v.balancing_last || "never"], ["next due", v.balancing_next_due || "–"]]
    .forEach(([k, val]) => { facts.append(el("dt", k)); facts.append(el("dd", val)); });

  table($("buses"), ["bus", "state", "in", "out", "send errors", "reopens"],
    Object.entries(status.buses || {}).map(([n, b]) => [n, b.state, `${b.frames_in}`, `${b.frames_out}`,
      `${b.send_errors}`, `${b.reopens}`]));
  const mqtt = Object.entries(status.components || {}).filter(([, c]) => c.type === "mqtt");
  $("mqtt").textContent = mqtt.length ? mqtt.map(([n, c]) => `MQTT ${n}: ${c.state} (${c.broker || ""})`).join("; ") : "MQTT: not configured";
}

function renderEvents(events) {
  const list = $("events");
  list.replaceChildren();
  events.slice().reverse().forEach((e) => {
    const li = el("li", null, e.level === "error" ? "bad" : e.level === "warning" ? "warn" : "");
    li.append(el("span", new Date(e.time * 1000).toLocaleTimeString() + " ", "when"));
    li.append(document.createTextNode(`${e.source}: ${e.message}`));
    list.append(li);
  });
}

function chart(svg, times, series) {
  svg.replaceChildren();
  const values = series.flatMap((s) => s.filter((x) => x !== null));
  if (!times.length || !values.length) { const t = el("text"); t.setAttribute("x", 8); t.setAttribute("y", 20); t.textContent = "no data yet"; svg.append(t); return; }
  const t0 = times[0], t1 = Math.max(times[times.length - 1], t0 + 60);
  let lo = Math.min(...values), hi = Math.max(...values);
  if (hi - lo < 1e-6) { lo -= 1; hi += 1; }
  const pad = (hi - lo) * 0.08; lo -= pad; hi += pad;
  const ns = "http://www.w3.org/2000/svg";
  series.forEach((s, i) => {
    const points = [];
    s.forEach((y, k) => { if (y !== null) points.push(`${((times[k] - t0) / (t1 - t0) * 600).toFixed(1)},${(160 - (y - lo) / (hi - lo) * 160).toFixed(1)}`); });
    if (!points.length) return;
    if (points.length === 1) points.push(`600,${points[0].split(",")[1]}`);  // one reading: a level line
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", points.join(" "));
    line.setAttribute("class", `s${i}`);
    svg.append(line);
  });
  [[hi - pad, 12], [lo + pad, 156]].forEach(([val, y]) => {
    const t = document.createElementNS(ns, "text"); t.setAttribute("x", 4); t.setAttribute("y", y);
    t.textContent = val.toFixed(1); svg.append(t);
  });
}

function renderHistory(h) {
  chart($("chart-soc"), h.time, [h.soc]);
  chart($("chart-voltage"), h.time, [h.voltage]);
  chart($("chart-current"), h.time, [h.current]);
  chart($("chart-limits"), h.time, [h.charge_current_limit, h.discharge_current_limit, h.charge_voltage_limit, h.discharge_voltage_limit]);
}

async function get(path) {
  const response = await fetch(path, { cache: "no-store" });
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return response.json();
}

async function pollState() {
  try { render(await get("/api/state")); renderEvents(await get("/api/events")); }
  catch (err) { $("overall").textContent = "bridge not answering"; $("overall").className = "pill bad"; }
}

async function pollHistory() {
  try { renderHistory(await get("/api/history")); } catch (err) { /* the next poll tries again */ }
}

pollState(); pollHistory();
setInterval(pollState, 2000);
setInterval(pollHistory, 60000);
