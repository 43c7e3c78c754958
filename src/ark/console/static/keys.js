// My keys: a person's own API keys (made, rotated and revoked here, within the limits the admin set), what
// each spent per day, and their own budget. The secret of a key is shown once, when it is made.
"use strict";

import { api, bars, busy, copy, count, days, el, money, notice, table, when } from "/static/console.js";

const app = document.getElementById("app");
const summary = el("p", { id: "my-budget" });
const policyLine = el("p", { id: "my-policy", class: "muted" });
const secretBox = el("div", { id: "my-secret-box" });
const keysBox = el("div", { id: "my-keys" });
const chartBox = el("div", { id: "my-usage" });
const metric = el("select", { id: "my-metric", "aria-label": "Chart" },
  el("option", { value: "cost" }, "Spend"), el("option", { value: "requests" }, "Requests"), el("option", { value: "tokens" }, "Tokens"));

const alias = el("input", { id: "my-alias", maxlength: 256, placeholder: "laptop, a script…", required: true });
const models = el("select", { id: "my-models", multiple: true, size: 4, "aria-label": "Models" });
const budget = el("input", { id: "my-budget-input", type: "number", min: 0, step: "any", placeholder: "no limit" });
const period = el("select", { id: "my-period" },
  el("option", { value: "" }, "in all"), el("option", { value: "1d" }, "per day"),
  el("option", { value: "7d" }, "per week"), el("option", { value: "30d" }, "per 30 days"));
const expires = el("select", { id: "my-expires" },
  el("option", { value: "" }, "never"), el("option", { value: "7d" }, "in 7 days"),
  el("option", { value: "30d" }, "in 30 days"), el("option", { value: "90d" }, "in 90 days"));
const create = el("button", { id: "my-create", class: "primary", type: "submit" }, "Create key");

let usage = null;
let full = false; // the person holds as many keys as allowed

function showSecret(secret, what) {
  const copyButton = el("button", { type: "button", onclick: () => copy(secret, copyButton) }, "Copy");
  secretBox.replaceChildren(
    el("div", { class: "secret", role: "status" },
      el("p", {}, what + " Copy it now: ARK keeps only its hash and will not show it again."),
      el("code", { id: "my-secret" }, secret), " ", copyButton),
  );
}

function limits(key) {
  const parts = [];
  if (key.max_budget !== null) parts.push(money(key.spend) + " of " + money(key.max_budget) + (key.budget_duration ? " per " + key.budget_duration : ""));
  else parts.push(money(key.spend) + " spent");
  return parts.join("; ");
}

function keyRow(key) {
  const rotate = el("button", { type: "button" }, "Rotate");
  const revoke = el("button", { type: "button", class: "danger" }, "Revoke");
  rotate.addEventListener("click", () => busy(rotate, app, async () => {
    if (!window.confirm(`Rotate ${key.key_alias || key.key_name}? The old secret stops working now.`)) return;
    const made = await api("POST", "/me/key/rotate", { key: key.token });
    showSecret(made.key, `The new secret of ${made.key_alias || made.key_name}.`);
    await refresh();
  }));
  revoke.addEventListener("click", () => busy(revoke, app, async () => {
    if (!window.confirm(`Revoke ${key.key_alias || key.key_name}? Anything using it stops working.`)) return;
    await api("POST", "/me/key/delete", { key: key.token });
    secretBox.replaceChildren();
    await refresh();
  }));
  return el("span", { class: "row" }, rotate, revoke);
}

function showKeys(listed) {
  keysBox.replaceChildren(
    table(
      [
        { title: "Name", value: (k) => el("span", { dataset: { token: k.token } }, k.key_alias || "-") },
        { title: "Key", value: (k) => el("code", {}, k.key_name) },
        { title: "Models", value: (k) => (k.models.length ? k.models.join(", ") : "all yours") },
        { title: "Spend", value: limits },
        { title: "Expires", value: (k) => (k.expires ? when(k.expires) : "never") },
        { title: "Made", value: (k) => when(k.created_at) },
        { title: "", value: keyRow },
      ],
      listed.keys,
      "You have no keys yet.",
    ),
  );
  for (const row of keysBox.querySelectorAll("tbody tr")) {
    row.dataset.token = row.querySelector("[data-token]").dataset.token;
  }
}

function showUsage() {
  if (!usage) return;
  const labels = days(usage.start, usage.end);
  const names = Object.fromEntries(usage.keys.map((k) => [k.token, k.key_alias || k.key_name]));
  const values = {};
  const totals = {};
  for (const row of usage.rows) {
    const name = names[row.key_id] || row.key;
    const v = metric.value === "cost" ? row.cost : metric.value === "requests" ? row.requests : row.prompt_tokens + row.completion_tokens;
    values[name] = values[name] || {};
    values[name][row.day] = (values[name][row.day] || 0) + v;
    const t = (totals[name] = totals[name] || { key: name, requests: 0, tokens: 0, cost: 0 });
    t.requests += row.requests;
    t.tokens += row.prompt_tokens + row.completion_tokens;
    t.cost += row.cost;
  }
  chartBox.replaceChildren(
    bars(labels, values, { unit: metric.value === "cost" ? "" : metric.value }),
    table(
      [
        { title: "Key", value: (t) => t.key },
        { title: "Requests", value: (t) => count(t.requests), num: true },
        { title: "Tokens", value: (t) => count(t.tokens), num: true },
        { title: "Spend", value: (t) => money(t.cost), num: true },
      ],
      Object.values(totals),
      "No requests with your keys in the last 30 days.",
    ),
  );
  chartBox.dataset.rows = String(usage.rows.length);
}

async function refresh() {
  const [me, listed, used, catalog] = await Promise.all([
    api("GET", "/me"),
    api("GET", "/me/keys"),
    api("GET", "/me/usage?days=30"),
    api("GET", "/v1/models"),
  ]);
  const p = me.policy;
  const recent = me.last_30_days;
  summary.textContent = `In the last 30 days you made ${count(recent.requests)} request${recent.requests === 1 ? "" : "s"} for ${money(recent.cost)}. ` + (
    me.max_budget === null
      ? "You have no budget of your own."
      : `Your budget: ${money(me.spend)} spent of ${money(me.max_budget)}${me.budget_duration ? " per " + me.budget_duration : ""}.`);
  policyLine.textContent = [
    `You may hold ${p.keys_per_person} key${p.keys_per_person === 1 ? "" : "s"} (you hold ${listed.keys.length}).`,
    p.key_max_budget === null ? "" : `Each key's budget is at most ${money(p.key_max_budget)}.`,
    p.key_models.length ? `Keys may use: ${p.key_models.join(", ")}.` : "",
    "What your keys spend counts against your own budget too.",
  ].filter(Boolean).join(" ");
  const choices = p.key_models.length ? p.key_models : catalog.data.map((m) => m.id);
  const chosen = new Set([...models.selectedOptions].map((o) => o.value));
  models.replaceChildren(...choices.map((id) => el("option", { value: id, selected: chosen.has(id) }, id)));
  if (p.key_max_budget !== null) {
    budget.max = String(p.key_max_budget);
    budget.placeholder = "at most " + p.key_max_budget;
  }
  full = listed.keys.length >= p.keys_per_person;
  create.disabled = full;
  showKeys(listed);
  usage = used;
  showUsage();
}

async function submit(event) {
  event.preventDefault();
  await busy(create, app, async () => {
    const body = { key_alias: alias.value.trim() };
    const picked = [...models.selectedOptions].map((o) => o.value);
    if (picked.length) body.models = picked;
    if (budget.value !== "") body.max_budget = Number(budget.value);
    if (period.value) body.budget_duration = period.value;
    if (expires.value) body.duration = expires.value;
    const made = await api("POST", "/me/key/generate", body);
    showSecret(made.key, `Your new key ${made.key_alias || made.key_name}.`);
    alias.value = "";
    await refresh();
  });
  create.disabled = full; // busy() turned it back on
}

metric.addEventListener("change", showUsage);
app.append(
  summary,
  policyLine,
  secretBox,
  el("h2", {}, "Your keys"),
  keysBox,
  el("h2", {}, "New key"),
  el("form", { id: "my-form", class: "card", onsubmit: submit },
    el("div", { class: "row" },
      el("div", {}, el("label", { for: "my-alias" }, "Name"), alias),
      el("div", {}, el("label", { for: "my-models" }, "Models (none chosen: all)"), models),
      el("div", {}, el("label", { for: "my-budget-input" }, "Budget"), budget),
      el("div", {}, el("label", { for: "my-period" }, "Budget period"), period),
      el("div", {}, el("label", { for: "my-expires" }, "Expires"), expires),
      create,
    ),
  ),
  el("h2", {}, "Use per day, last 30 days ", metric),
  chartBox,
);
refresh().catch((error) => notice(app, error.message, true));
