// The Usage page (/admin/usage): requests, tokens and spend from the ledger's daily rollups
// (/usage/summary), for a range of days (UTC, the last 30 by default), grouped by day, key, team, model or
// person: a bar chart, a table and the same rows as CSV.
// ES module, nothing inline; data goes into the page as text only.
"use strict";

import { api, bars, count, days, el, money, notice, table } from "/static/console.js";

const app = document.getElementById("app");
const GROUPS = [
  ["day", "Day"],
  ["model", "Model"],
  ["key", "Key"],
  ["team", "Team"],
  ["person", "Person"],
];
const MEASURES = [
  ["requests", "Requests"],
  ["cost", "Spend"],
  ["tokens", "Tokens"],
];
const MOST_BARS = 30; // groups charted (the table has every row)

const isoDay = (date) => date.toISOString().slice(0, 10);
const today = new Date();
const monthAgo = new Date(today.getTime() - 29 * 86_400_000);

const start = el("input", { id: "usage-start", type: "date", value: isoDay(monthAgo), required: true });
const end = el("input", { id: "usage-end", type: "date", value: isoDay(today), required: true });
const by = el(
  "select",
  { id: "usage-by" },
  GROUPS.map(([value, label]) => el("option", { value }, label)),
);
const measure = el(
  "select",
  { id: "usage-measure" },
  MEASURES.map(([value, label]) => el("option", { value }, label)),
);
const csv = el("a", { id: "usage-csv", class: "button", download: "ark-usage.csv" }, "Download CSV");
const result = el("section", { id: "usage-result", "aria-live": "polite" });
let asked = 0; // the latest request: an older answer arriving late is dropped

function query(format) {
  const params = new URLSearchParams({ by: by.value, start_date: start.value, end_date: end.value });
  if (format) params.set("format", format);
  return "/usage/summary?" + params.toString();
}

// What a row's group reads as: "-" is none (a request without a model, such as a list of models; a key without
// a team; a request no person made), "master" the master key.
function named(row, group) {
  const value = String(row[group]);
  if (value === "-") return `(no ${group})`;
  return group === "key" && value === "master" && !row.key_id ? "(master key)" : value;
}

// distinct chart labels (two keys may share an alias)
function labelsOf(rows, group) {
  const seen = new Map();
  return rows.map((row) => {
    const label = named(row, group);
    const n = (seen.get(label) || 0) + 1;
    seen.set(label, n);
    return n === 1 ? label : `${label} (${n})`;
  });
}

function chart(rows, group) {
  const labels = group === "day" ? days(start.value, end.value) : labelsOf(rows, group).slice(0, MOST_BARS);
  const keys = group === "day" ? rows.map((row) => row.day) : labels;
  const series =
    measure.value === "tokens"
      ? { prompt: {}, completion: {} }
      : { [measure.value === "cost" ? "spend" : "requests"]: {} };
  rows.forEach((row, i) => {
    const label = keys[i];
    if (label === undefined) return;
    if (measure.value === "tokens") {
      series.prompt[label] = row.prompt_tokens;
      series.completion[label] = row.completion_tokens;
    } else if (measure.value === "cost") {
      series.spend[label] = row.cost;
    } else {
      series.requests[label] = row.requests;
    }
  });
  const unit = { requests: "requests", cost: "credits", tokens: "tokens" }[measure.value];
  const figure = bars(labels, series, { unit });
  if (group !== "day" && rows.length > MOST_BARS) {
    figure.append(
      el("figcaption", { class: "muted" }, `The ${MOST_BARS} biggest of ${rows.length}; the table has them all.`),
    );
  }
  return figure;
}

function columns(group) {
  const title = GROUPS.find(([value]) => value === group)[1];
  return [
    { title, value: (row) => (named(row, group) === String(row[group]) ? row[group] : el("i", {}, named(row, group))) },
    ...(group === "key"
      ? [
          {
            title: "Token",
            value: (row) =>
              row.key_id ? el("code", { title: row.key_id }, row.key_id.slice(0, 12) + "…") : "master key",
          },
        ]
      : []),
    { title: "Requests", value: (row) => count(row.requests), num: true },
    { title: "Prompt tokens", value: (row) => count(row.prompt_tokens), num: true },
    { title: "Completion tokens", value: (row) => count(row.completion_tokens), num: true },
    { title: "Spend", value: (row) => money(row.cost), num: true },
  ];
}

async function draw() {
  const mine = ++asked;
  csv.href = "/console/api" + query("csv");
  csv.download = `ark-usage-by-${by.value}-${start.value}-to-${end.value}.csv`;
  if (!start.value || !end.value || start.value > end.value) {
    notice(app, "Choose a first day on or before the last day.", true);
    return;
  }
  const group = by.value;
  let rows;
  try {
    rows = await api("GET", query());
  } catch (error) {
    if (mine === asked) notice(app, error.message, true);
    return;
  }
  if (mine !== asked) return;
  app.querySelector(":scope > .notice")?.remove();
  if (!rows.length) {
    result.replaceChildren(
      el("p", { class: "muted", id: "usage-empty" }, `No requests from ${start.value} to ${end.value}.`),
    );
    return;
  }
  const total = (name) => rows.reduce((sum, row) => sum + row[name], 0);
  const shownTable = table(columns(group), rows);
  shownTable.id = "usage-table";
  shownTable.dataset.by = group;
  result.replaceChildren(
    chart(rows, group),
    el(
      "p",
      { id: "usage-total" },
      `${count(total("requests"))} requests, ${count(total("prompt_tokens"))} prompt and `,
      `${count(total("completion_tokens"))} completion tokens, ${money(total("cost"))} credits spent `,
      `from ${start.value} to ${end.value} (days in UTC).`,
    ),
    shownTable,
  );
}

function controls() {
  for (const input of [start, end, by, measure]) input.addEventListener("change", draw);
  const field = (node, label) => el("div", {}, el("label", { for: node.id }, label), node);
  return el(
    "div",
    { class: "row", id: "usage-controls" },
    field(start, "From"),
    field(end, "To (included)"),
    field(by, "Group by"),
    field(measure, "Chart"),
    el("button", { type: "button", onclick: draw }, "Refresh"),
    csv,
  );
}

app.replaceChildren(controls(), result);
draw();
