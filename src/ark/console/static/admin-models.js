// Models: the catalog across engines, and the GPU arbiter's view of it (what is resident, the memory each
// model takes, what waits), with Load and Unload. The arbiter's state is polled every 2 s; rows and buttons
// are updated in place, so that a click is never lost to a redraw.
"use strict";

import { api, busy, COLOURS, count, el, gb, notice, table } from "/static/console.js";

const POLL_MS = 2000;
const OTHERS = [["ComfyUI", "#ae3ec9"], ["holds", "#f08c00"], ["others", "#868e96"]]; // outside the models' colours

const app = document.getElementById("app");
const device = el("span", { id: "gpu-device", class: "muted" });
const memory = el("div", { id: "gpu-memory", class: "memory", role: "img" });
const legend = el("div", { id: "gpu-legend", class: "legend" });
const queueLine = el("p", { id: "gpu-queue" });
const holdsBox = el("div", { id: "gpu-holds" });
const statsLine = el("p", { id: "gpu-stats", class: "muted" });
const arbiterBox = el("div", { id: "arbiter" }, memory, legend, queueLine, holdsBox, statsLine);
const gpuSection = el("section", { id: "gpu", class: "card", "aria-live": "off" },
  el("h2", {}, "GPU ", device), arbiterBox);
const body = el("tbody");
const modelsTable = el(
  "table",
  { id: "models" },
  el("thead", {}, el("tr", {}, ["Model", "Kind", "Owned by", "State", "Memory", "Leases", "Queued", "Priority", ""].map(
    (title) => el("th", { scope: "col", class: ["Leases", "Queued"].includes(title) ? "num" : null }, title)))),
  body,
);
const noModels = el("p", { class: "muted", hidden: true }, "ARK serves no models yet.");
const modelsSection = el("section", { id: "catalog", "aria-live": "off" },
  el("h2", {}, "Catalog"), modelsTable, noModels);

let catalog = new Map(); // id -> the /v1/models entry
let gpu = null; // the last /admin/gpu answer; {enabled: false} when there is no arbiter
const pending = new Map(); // model -> "load" | "unload", while the arbiter works on it
const rows = new Map(); // model -> its row (see modelRow)
let asked = 0, drawn = 0; // answers can cross: only the latest request's is drawn

function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

// A notice that is said once: polling says the same thing every 2 s, and a screen reader would repeat it.
function say(where, text, error = false) {
  const old = where.querySelector(":scope > .notice");
  if (!old || old.textContent !== text || old.classList.contains("error") !== error) notice(where, text, error);
}

function share(bytes) {
  return gpu && gpu.capacity_bytes ? Math.min(100, (100 * bytes) / gpu.capacity_bytes) : 0;
}

function percent(bytes) {
  const p = share(bytes);
  return p > 0 && p < 1 ? "<1%" : Math.round(p) + "%";
}

function modelColour(name) {
  const index = (gpu?.models || []).findIndex((m) => m.model === name);
  return COLOURS[Math.max(0, index) % COLOURS.length];
}

// What a model is now: its text on the page (also its data-state) and the class that colours it.
function stateOf(name, entry) {
  if (pending.get(name) === "load") return ["loading", ""];
  if (pending.get(name) === "unload") return ["unloading", ""];
  if (!gpu || !gpu.enabled) return ["no arbiter", "dim"];
  if (!entry) return ["not managed", "dim"]; // an engine the arbiter does not manage, or an image model
  if (entry.draining) return ["draining", ""];
  return entry.resident ? ["resident", "ok"] : ["not loaded", "dim"];
}

function flags(entry) {
  if (!entry) return "-";
  const notes = [entry.priority];
  if (entry.pinned) notes.push("pinned");
  if (entry.large) notes.push("large");
  if (entry.offloaded) notes.push("partly on the CPU");
  return notes.join(", ");
}

function modelRow(name) {
  const cells = {
    kind: el("td"),
    owner: el("td"),
    state: el("span", { dataset: { state: "" } }),
    fill: el("span"),
    size: el("span", { class: "muted" }),
    leases: el("td", { class: "num" }),
    queued: el("td", { class: "num" }),
    priority: el("td"),
  };
  const load = el("button", { type: "button", class: "primary" }, "Load");
  const unload = el("button", { type: "button", class: "danger" }, "Unload");
  load.addEventListener("click", () => act("load", name, load));
  unload.addEventListener("click", () => act("unload", name, unload));
  const buttons = el("span", { class: "model-actions" }, load, " ", unload); // not .row: its display beats [hidden]
  const tr = el(
    "tr",
    { dataset: { model: name } },
    el("th", { scope: "row" }, name),
    cells.kind,
    cells.owner,
    el("td", {}, cells.state),
    el("td", {}, el("div", { class: "memory model-share" }, cells.fill), cells.size),
    cells.leases,
    cells.queued,
    cells.priority,
    el("td", {}, buttons),
  );
  return { tr, cells, load, unload, buttons };
}

function updateRow(row, name) {
  const info = catalog.get(name);
  const entry = (gpu?.models || []).find((m) => m.model === name);
  const [state, colour] = stateOf(name, entry);
  const { cells } = row;
  setText(cells.kind, info?.kind || "-");
  setText(cells.owner, info?.owned_by || "-");
  setText(cells.state, state);
  cells.state.dataset.state = state;
  cells.state.className = colour;
  cells.fill.style.width = entry?.resident ? share(entry.memory_bytes) + "%" : "0";
  cells.fill.style.background = modelColour(name);
  const size = entry && (entry.resident ? ", " + percent(entry.memory_bytes) : " when loaded");
  setText(cells.size, entry ? gb(entry.memory_bytes) + size : "");
  setText(cells.leases, entry ? count(entry.leases) : "-");
  setText(cells.queued, entry ? count(entry.queued) : "-");
  setText(cells.priority, flags(entry));
  row.buttons.hidden = !entry; // the arbiter loads only what it manages
  row.load.disabled = pending.has(name) || !entry || entry.resident;
  row.unload.disabled = pending.has(name) || !entry || !entry.resident || entry.pinned;
  row.unload.title = entry?.pinned ? "Pinned: it stays loaded" : "";
}

function drawModels() {
  const names = [...new Set([...catalog.keys(), ...(gpu?.models || []).map((m) => m.model)])].sort();
  for (const name of rows.keys()) {
    if (!names.includes(name)) {
      rows.get(name).tr.remove();
      rows.delete(name);
    }
  }
  names.forEach((name, i) => {
    if (!rows.has(name)) rows.set(name, modelRow(name));
    const row = rows.get(name);
    updateRow(row, name);
    // moved only when out of place: a row taken out and put back loses the keyboard focus of its buttons
    if (body.children[i] !== row.tr) body.insertBefore(row.tr, body.children[i] || null);
  });
  modelsTable.hidden = !names.length;
  noModels.hidden = Boolean(names.length);
}

function drawMemory() {
  const parts = gpu.models.filter((m) => m.resident).map((m) => [m.model, m.memory_bytes, modelColour(m.model)]);
  const outside = [gpu.comfyui?.used_bytes || 0, gpu.held_bytes || 0, gpu.external_bytes || 0];
  OTHERS.forEach(([label, colour], i) => parts.push([label, outside[i], colour]));
  const shown = parts.filter(([, bytes]) => bytes > 0);
  const used = shown.reduce((sum, [, bytes]) => sum + bytes, 0);
  const free = "free " + gb(Math.max(0, gpu.capacity_bytes - used)) + " of " + gb(gpu.capacity_bytes);
  const said = shown.map(([label, bytes]) => label + " " + gb(bytes)).concat(free);
  memory.setAttribute("aria-label", "GPU memory: " + said.join(", "));
  memory.replaceChildren(
    ...shown.map(([label, bytes, colour]) =>
      el("span", { style: `width:${share(bytes)}%;background:${colour}`, title: label + ": " + gb(bytes) })),
  );
  legend.replaceChildren(
    ...shown.map(([label, bytes, colour]) => el("span", { style: `color:${colour}` }, "■ " + label + " " + gb(bytes))),
    el("span", { class: "muted" }, free),
  );
}

function sensors(reading) {
  const said = [];
  if (reading?.temperature_c != null) said.push(reading.temperature_c.toFixed(0) + " °C");
  if (reading?.power_w != null) said.push(reading.power_w.toFixed(0) + " W");
  if (reading?.utilization != null) said.push((100 * reading.utilization).toFixed(0) + "% busy");
  return said.length ? " (" + said.join(", ") + ")" : "";
}

const HOLDS = [ // memory set aside for jobs outside the engines (a render, a ComfyUI job), and those waiting
  { title: "Hold", value: (h) => el("code", {}, h.id) },
  { title: "Holder", value: (h) => h.holder },
  { title: "Memory", value: (h) => gb(h.memory_bytes), num: true },
  { title: "Priority", value: (h) => h.priority },
  { title: "State", value: (h) => (h.granted ? `${Math.round(h.expires_in_s)} s left` : "waiting") },
];

const QUEUE = [
  { title: "For", value: (w) => (w.hold ? `${w.model} (a memory hold)` : w.model) },
  { title: "Priority", value: (w) => w.priority },
  { title: "Waiting", value: (w) => `${w.waited_s.toFixed(1)} s`, num: true },
];

function drawQueue() {
  const waiting = gpu.queue || 0;
  setText(queueLine, waiting ? `${count(waiting)} waiting for the GPU.` : "Nothing waits for the GPU.");
  queueLine.dataset.queue = String(waiting);
  const line = gpu.waiting || [];
  const holds = gpu.holds || [];
  holdsBox.replaceChildren(
    ...(line.length ? [el("h3", {}, "The queue, first in line first"), table(QUEUE, line)] : []),
    ...(holds.length ? [el("h3", {}, "Memory holds"), table(HOLDS, holds)] : []),
  );
  const stats = gpu.stats || {};
  const restarts = Object.values(gpu.restarts || {}).reduce((sum, n) => sum + n, 0);
  const restarted = restarts ? `, ${count(restarts)} engine restarts` : "";
  setText(statsLine, `Since ARK started: ${count(stats.loads)} loads, ${count(stats.unloads)} unloads, ` +
    `${count(stats.swaps)} swaps, ${count(stats.rejected)} refused${restarted}.`);
}

function drawGpu() {
  arbiterBox.hidden = !gpu.enabled;
  if (!gpu.enabled) {
    setText(device, "");
    say(gpuSection, "The GPU arbiter is off (no engine is GPU-managed, or ARK found no GPU: `ark up`'s log says " +
      "which), so nothing can be loaded or unloaded here. The catalog below is what ARK serves.");
    return;
  }
  setText(device, gpu.device + sensors(gpu.reading));
  gpuSection.querySelector(":scope > .notice")?.remove();
  drawMemory();
  drawQueue();
}

async function fetchGpu() {
  const seq = ++asked;
  let answer;
  try {
    answer = await api("GET", "/admin/gpu");
  } catch (error) {
    if (error.status !== 404) throw error;
    answer = { enabled: false, models: [] }; // a gateway without the arbiter's API
  }
  if (seq < drawn) return; // a later answer is already on the page
  drawn = seq;
  gpu = answer;
  drawGpu();
  drawModels();
  gpuSection.dataset.updates = String(Number(gpuSection.dataset.updates || 0) + 1);
}

async function fetchCatalog() {
  try {
    const listed = await api("GET", "/v1/models");
    catalog = new Map(listed.data.map((m) => [m.id, m]));
  } catch (error) {
    notice(modelsSection, "Cannot list the models: " + error.message, true);
  }
  drawModels();
}

function said(action, name, result) {
  if (action === "load") return result.loaded ? `${name} is loaded.` : `${name} was already loaded.`;
  return result.unloaded ? `${name} is unloaded.` : `${name} was not loaded.`;
}

async function act(action, name, button) {
  pending.set(name, action);
  drawModels();
  const result = await busy(button, modelsSection, () => api("POST", "/admin/gpu/" + action, { model: name }));
  pending.delete(name);
  if (result) notice(modelsSection, said(action, name, result));
  try {
    await fetchGpu();
  } catch {
    drawModels(); // the poll says why
  }
}

async function poll() {
  try {
    await fetchGpu();
  } catch (error) {
    if (error.status === 401) return; // api() is taking the browser to the sign-in
    say(gpuSection, "Cannot read the GPU arbiter: " + error.message + " Trying again.", true);
  }
  setTimeout(poll, POLL_MS);
}

app.replaceChildren(gpuSection, modelsSection);
fetchCatalog(); // the arbiter is polled meanwhile: each draws what it has
poll();
