// What every console page shares: the API (the gateway's own, through /console/api, with the session's
// CSRF value on every change), small DOM builders, number formats, tables and an SVG bar chart.
// ES module, no library; nothing inline (the pages' CSP forbids it).
"use strict";

export const CSRF = document.querySelector("meta[name=ark-csrf]")?.content || "";
const me = document.querySelector("meta[name=ark-user]");
export const USER = { name: me?.content || "", role: me?.dataset.role || "" };
export const COLOURS = ["#1971c2", "#2b8a3e", "#e8590c", "#862e9c", "#0b7285", "#c92a2a", "#5c940d", "#364fc7"];
const SVG = "http://www.w3.org/2000/svg";

export class ApiError extends Error {
  constructor(status, body) {
    const error = body && typeof body === "object" ? body.error : null;
    const message = error && typeof error === "object" ? error.message : typeof error === "string" ? error : null;
    super(message || "ARK answered " + status);
    this.status = status;
    this.code = error && typeof error === "object" ? error.code : null;
  }
}

// One request to the gateway's API as the signed-in person; the answer's JSON, or ApiError.
export async function api(method, path, body) {
  const response = await send(method, path, body);
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { error: text.slice(0, 300) };
  }
  if (!response.ok) {
    if (response.status === 401) signIn();
    throw new ApiError(response.status, data);
  }
  return data;
}

// The raw Response (streams, downloads); the caller reads it.
export function send(method, path, body, signal) {
  const headers = { accept: "application/json" };
  if (method !== "GET") headers["x-csrf-token"] = CSRF;
  if (body !== undefined) headers["content-type"] = "application/json";
  return fetch("/console/api" + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
    cache: "no-store",
    signal,
  });
}

export function signIn() {
  window.location.href = "/auth/login?rd=" + encodeURIComponent(window.location.pathname);
}

// el("button", {class: "primary", onclick: f}, "Save"): attributes (on* are listeners), then children.
export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "class") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name in node && typeof value !== "string") node[name] = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

export function money(value) {
  if (value === null || value === undefined) return "-";
  const n = Number(value);
  return n === 0 ? "0" : n < 0.01 ? n.toPrecision(2) : n.toFixed(n < 100 ? 4 : 2);
}

export function count(value) {
  return value === null || value === undefined ? "-" : Number(value).toLocaleString("en-US");
}

export function gb(bytes) {
  const value = bytes / 2 ** 30;
  return value.toFixed(value < 1 ? 2 : 1) + " GB";
}

export function when(iso) {
  if (!iso) return "-";
  const date = new Date(iso);
  return isNaN(date) ? String(iso) : date.toISOString().slice(0, 16).replace("T", " ") + " UTC";
}

// A notice at the top of ``where`` (an error in red); replaced by the next one.
export function notice(where, text, error = false) {
  const old = where.querySelector(":scope > .notice");
  const node = el("p", { class: "notice" + (error ? " error" : ""), role: error ? "alert" : "status" }, text);
  if (old) old.replaceWith(node);
  else where.prepend(node);
  return node;
}

// Run ``work`` (a promise-returning function) with ``button`` disabled; errors become a notice.
export async function busy(button, where, work) {
  button.disabled = true;
  try {
    return await work();
  } catch (error) {
    notice(where, error.message, true);
    return undefined;
  } finally {
    button.disabled = false;
  }
}

// columns: [{title, value: row => text|Node, num?}]; an empty table says ``empty``.
export function table(columns, rows, empty = "Nothing yet.") {
  if (!rows.length) return el("p", { class: "muted" }, empty);
  return el(
    "table",
    {},
    el("thead", {}, el("tr", {}, columns.map((c) => el("th", { class: c.num ? "num" : null, scope: "col" }, c.title)))),
    el(
      "tbody",
      {},
      rows.map((row) =>
        el(
          "tr",
          {},
          columns.map((c) => {
            const value = c.value(row);
            return el("td", { class: c.num ? "num" : null }, value instanceof Node ? value : String(value ?? "-"));
          }),
        ),
      ),
    ),
  );
}

// Stacked bars: labels along x, one colour per series; values: {series: {label: number}}.
export function bars(labels, values, { unit = "", height = 160 } = {}) {
  const width = 640, pad = 28, names = Object.keys(values);
  const totals = labels.map((label) => names.reduce((sum, s) => sum + (values[s][label] || 0), 0));
  const top = Math.max(1e-12, ...totals);
  const slot = (width - pad - 4) / Math.max(1, labels.length);
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("class", "chart bars");
  svg.setAttribute("role", "img");
  svg.dataset.bars = String(labels.length);
  const scale = (v) => ((height - 24) * v) / top;
  labels.forEach((label, i) => {
    let y = height - 18;
    names.forEach((name, s) => {
      const v = values[name][label] || 0;
      if (!v) return;
      const rect = document.createElementNS(SVG, "rect");
      const h = Math.max(1, scale(v));
      y -= h;
      rect.setAttribute("x", String(pad + i * slot + 1));
      rect.setAttribute("y", String(y));
      rect.setAttribute("width", String(Math.max(1, slot - 2)));
      rect.setAttribute("height", String(h));
      rect.setAttribute("fill", COLOURS[s % COLOURS.length]);
      const tip = document.createElementNS(SVG, "title");
      tip.textContent = `${label} ${name}: ${v} ${unit}`;
      rect.append(tip);
      svg.append(rect);
    });
  });
  const axis = (text, x, y, anchor = "start") => {
    const node = document.createElementNS(SVG, "text");
    node.setAttribute("x", String(x));
    node.setAttribute("y", String(y));
    node.setAttribute("font-size", "10");
    node.setAttribute("fill", "#656d76");
    node.setAttribute("text-anchor", anchor);
    node.textContent = text;
    svg.append(node);
  };
  axis((Number.isInteger(top) ? count(top) : money(top)) + (unit ? " " + unit : ""), 2, 12);
  if (labels.length) {
    axis(labels[0], pad, height - 4);
    if (labels.length > 1) axis(labels[labels.length - 1], width - 2, height - 4, "end");
  }
  const legend = el(
    "div",
    { class: "legend" },
    names.map((name, s) => el("span", { style: `color:${COLOURS[s % COLOURS.length]}` }, "■ " + name)),
  );
  return el("figure", { class: "figure" }, svg, legend);
}

// The days from ``start`` to ``end`` (YYYY-MM-DD, both included).
export function days(start, end) {
  const out = [];
  for (let d = new Date(start + "T00:00:00Z"); d <= new Date(end + "T00:00:00Z"); d.setUTCDate(d.getUTCDate() + 1)) {
    out.push(d.toISOString().slice(0, 10));
  }
  return out;
}

// Copy text to the clipboard, or select it for the person to copy when the page may not (plain http).
export async function copy(text, button) {
  try {
    await navigator.clipboard.writeText(text);
    if (button) {
      const label = button.textContent;
      button.textContent = "Copied";
      setTimeout(() => (button.textContent = label), 1500);
    }
  } catch {
    window.prompt("Copy this:", text);
  }
}
