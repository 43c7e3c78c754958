// The console's live overview: polls /api/overview and draws it (SVG, no library, nothing inline).
"use strict";

const COLOURS = ["#2b8a3e", "#1971c2", "#e8590c", "#862e9c", "#0b7285", "#c92a2a", "#5c940d", "#364fc7"];
const SVG = "http://www.w3.org/2000/svg";

function text(id, value) {
  document.getElementById(id).textContent = value;
}

function gb(bytes) {
  return (bytes / 2 ** 30).toFixed(1) + " GB";
}

function health(list) {
  const row = document.getElementById("health");
  row.replaceChildren(
    ...list.map((item) => {
      const tile = document.createElement("div");
      tile.className = "tile";
      const state = document.createElement("b");
      state.className = item.state === "running" ? "ok" : item.state === "absent" ? "dim" : "bad";
      state.textContent = item.state;
      const name = document.createElement("span");
      name.className = "muted";
      name.textContent = item.name;
      tile.title = item.why || "";
      tile.append(name, state);
      return tile;
    }),
  );
}

function gpu(state) {
  const bar = document.getElementById("gpu-bar");
  const legend = document.getElementById("gpu-legend");
  if (!state) {
    text("gpu-device", "(the GPU arbiter is off)");
    bar.replaceChildren();
    legend.replaceChildren();
    return;
  }
  text("gpu-device", state.device);
  const parts = Object.entries(state.models).map(([name, bytes]) => [name, bytes]);
  parts.push(["ComfyUI", state.comfyui_bytes], ["holds", state.holds_bytes], ["others", state.external_bytes]);
  const used = parts.reduce((sum, [, bytes]) => sum + bytes, 0);
  const shown = parts.filter(([, bytes]) => bytes > 0);
  bar.replaceChildren(
    ...shown.map(([name, bytes], i) => {
      const span = document.createElement("span");
      span.style.width = (100 * bytes) / state.capacity_bytes + "%";
      span.style.background = COLOURS[i % COLOURS.length];
      span.title = name + ": " + gb(bytes);
      return span;
    }),
  );
  legend.replaceChildren(
    ...shown.map(([name, bytes], i) => {
      const span = document.createElement("span");
      span.style.color = COLOURS[i % COLOURS.length];
      span.textContent = "■ " + name + " " + gb(bytes);
      return span;
    }),
    Object.assign(document.createElement("span"), {
      className: "muted",
      textContent: "free " + gb(Math.max(0, state.capacity_bytes - used)) + " of " + gb(state.capacity_bytes),
    }),
  );
  text("gpu-temperature", state.temperature_c == null ? "-" : state.temperature_c.toFixed(0) + " °C");
  text("gpu-power", state.power_w == null ? "-" : state.power_w.toFixed(0) + " W");
  text("gpu-busy", state.utilization == null ? "-" : (100 * state.utilization).toFixed(0) + " %");
}

function chart(id, points, unit) {
  const svg = document.getElementById(id);
  const width = 600, height = 120, pad = 6;
  const values = points.map((p) => p.v).filter((v) => v != null);
  const top = Math.max(1e-9, ...values) * 1.15;
  const t0 = points.length ? points[0].t : 0, t1 = points.length ? points[points.length - 1].t : 1;
  const x = (t) => pad + ((width - 2 * pad) * (t - t0)) / Math.max(1, t1 - t0);
  const y = (v) => height - pad - ((height - 2 * pad) * v) / top;
  const drawn = points.filter((p) => p.v != null);
  let path = drawn.map((p, i) => (i ? "L" : "M") + x(p.t).toFixed(1) + " " + y(p.v).toFixed(1)).join(" ");
  if (drawn.length === 1) {
    path += " h -12"; // one point: a short stroke, so that it shows
  }
  const line = document.createElementNS(SVG, "path");
  line.setAttribute("d", path || "M0 0");
  line.setAttribute("fill", "none");
  line.setAttribute("stroke", COLOURS[1]);
  line.setAttribute("stroke-width", "2");
  line.setAttribute("vector-effect", "non-scaling-stroke");
  svg.replaceChildren(line);
  const last = values.length ? values[values.length - 1] : null;
  text(id + "-label", last == null ? "no data yet" : "now " + last.toFixed(2) + " " + unit + ", top of the hour " + (top / 1.15).toFixed(2));
  svg.dataset.points = String(values.length);
  svg.dataset.last = last == null ? "" : String(last);
}

async function refresh() {
  try {
    const response = await fetch("/api/overview", { credentials: "same-origin", cache: "no-store" });
    if (response.status === 401) {
      window.location.href = "/auth/login?rd=/";
      return;
    }
    const data = await response.json();
    health(data.health || []);
    gpu(data.gpu);
    text("inflight", String(data.totals.inflight));
    text("spend", data.totals.spend_today.toFixed(4));
    text("requests-total", String(data.totals.requests));
    const series = data.series;
    chart("chart-requests", series.map((p) => ({ t: p.t, v: p.requests_per_s })), "req/s");
    chart("chart-tokens", series.map((p) => ({ t: p.t, v: p.tokens_per_s })), "tokens/s");
    chart("chart-p95", series.map((p) => ({ t: p.t, v: p.p95_s == null ? null : 1000 * p.p95_s })), "ms");
    text("updated", "Last update " + new Date(data.now * 1000).toLocaleTimeString() + ".");
    document.getElementById("overview").dataset.updates = String(Number(document.getElementById("overview").dataset.updates || 0) + 1);
    setTimeout(refresh, Math.max(1000, 1000 * data.interval_s));
  } catch (error) {
    text("updated", "Cannot reach ARK (" + error + "); trying again.");
    setTimeout(refresh, 5000);
  }
}

refresh();
