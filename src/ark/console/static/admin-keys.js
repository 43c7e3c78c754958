// The Keys and teams page (/admin/keys): every virtual key and team, and what `ark keys` and `ark teams` do:
// create a key (its secret shown once), change its name, owner, team, models, budget, limits and expiry,
// block or unblock it, delete it; create a team, change its limits, block or unblock it. Every change is a
// call to the management API (ark.gateway.admin), which checks it again.
// ES module, nothing inline; data goes into the page as text only.
"use strict";

import { api, busy, copy, count, el, money, notice, table, when } from "/static/console.js";

const app = document.getElementById("app");
const secretBox = el("div", { id: "secret-box", "aria-live": "polite" });
const keysList = el("div", { id: "keys" });
const teamsList = el("div", { id: "teams" });
const editor = el("section", { id: "key-editor", "aria-live": "polite" });
const owners = el("datalist", { id: "owners" });
let teams = [];
let people = [];

// What keys and teams share (ark.gateway.admin._LIMITS): field, kind, label, hint, the input id's end.
const LIMITS = [
  ["models", "list", "Models (comma-separated)", "every model", "models"],
  ["max_budget", "number", "Budget (credits)", "no limit", "budget"],
  ["budget_duration", "text", "Budget period", "e.g. 30d", "period"],
  ["max_tokens_budget", "number", "Token budget", "no limit", "tokens"],
  ["tpm_limit", "number", "Tokens per minute", "no limit", "tpm"],
  ["rpm_limit", "number", "Requests per minute", "no limit", "rpm"],
  ["max_parallel_requests", "number", "Requests at once", "no limit", "parallel"],
];
const LIMITS_HINT =
  "An empty field is no limit (models: every model); an empty period never resets. A new period starts when " +
  "the period is changed.";

function parse(kind, text) {
  const value = text.trim();
  if (kind === "list")
    return value
      ? value
          .split(",")
          .map((m) => m.trim())
          .filter(Boolean)
      : [];
  if (!value) return null;
  if (kind === "text") return value;
  const n = Number(value);
  return Number.isFinite(n) ? n : value; // the server says what is wrong with it, naming the field
}

function shown(kind, value) {
  if (kind === "list") return (value || []).join(", ");
  return value === null || value === undefined ? "" : String(value);
}

const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

// Inputs for the limits, with ``current`` values; values(): the ones set; changes(): the ones changed.
function limitFields(prefix, current = {}) {
  const inputs = {};
  const nodes = LIMITS.map(([name, kind, label, hint, short]) => {
    const id = `${prefix}-${short}`;
    const size = kind === "list" ? 26 : 10;
    inputs[name] = el("input", { id, name, value: shown(kind, current[name]), placeholder: hint, size });
    return el("div", {}, el("label", { for: id }, label), inputs[name]);
  });
  const values = () => {
    const out = {};
    for (const [name, kind] of LIMITS) {
      const value = parse(kind, inputs[name].value);
      if (value !== null && !(Array.isArray(value) && !value.length)) out[name] = value;
    }
    return out;
  };
  const changes = () => {
    const out = {};
    for (const [name, kind] of LIMITS) {
      const value = parse(kind, inputs[name].value);
      // only what changed: sending the period again would start a new one now
      if (!same(value, parse(kind, shown(kind, current[name])))) out[name] = value;
    }
    return out;
  };
  return { nodes, values, changes };
}

function field(id, label, attrs = {}) {
  return el("div", {}, el("label", { for: id }, label), el("input", { id, autocomplete: "off", ...attrs }));
}

function check(id, label, checked = false) {
  return el("label", { class: "check" }, el("input", { id, type: "checkbox", checked }), " " + label);
}

function teamSelect(id, chosen) {
  return el(
    "select",
    { id },
    el("option", { value: "" }, "no team"),
    teams.map((t) =>
      el(
        "option",
        { value: t.team_id, selected: t.team_id === chosen },
        t.team_alias ? `${t.team_alias} (${t.team_id})` : t.team_id,
      ),
    ),
  );
}

// metadata: a JSON object, or an error naming the field
function metadata(text) {
  if (!text.trim()) return {};
  let value;
  try {
    value = JSON.parse(text);
  } catch {
    throw new Error('Metadata must be a JSON object, such as {"project": "x"}.');
  }
  if (!value || typeof value !== "object" || Array.isArray(value)) throw new Error("Metadata must be a JSON object.");
  return value;
}

function isSet(value) {
  return value !== null && value !== undefined;
}

function budgetText(item) {
  const period = item.budget_duration ? " per " + item.budget_duration : "";
  const parts = [money(item.spend) + (isSet(item.max_budget) ? " of " + money(item.max_budget) + period : "")];
  if (isSet(item.max_tokens_budget))
    parts.push(`${count(item.tokens_used)} of ${count(item.max_tokens_budget)} tokens${period}`);
  return parts.join("; ");
}

function limitsText(item) {
  const parts = [
    isSet(item.tpm_limit) ? count(item.tpm_limit) + " tokens/min" : null,
    isSet(item.rpm_limit) ? count(item.rpm_limit) + " requests/min" : null,
    isSet(item.max_parallel_requests) ? item.max_parallel_requests + " at once" : null,
  ].filter(Boolean);
  return parts.length ? parts.join(", ") : "-";
}

// a key's or a team's state; a key of a blocked team is refused as well
function state(item) {
  if (item.blocked) return el("span", { class: "bad" }, "blocked");
  if (item.expires && new Date(item.expires) <= new Date()) return el("span", { class: "bad" }, "expired");
  if (item.token && item.team_id && teams.some((t) => t.team_id === item.team_id && t.blocked)) {
    return el("span", { class: "bad" }, "team blocked");
  }
  return el("span", { class: "ok" }, "active");
}

// A key's owner: a person's name where ARK knows them (their id or e-mail), else what the key says.
function owner(userId) {
  if (!userId) return "-";
  const person = people.find(
    (p) => p.user_id === userId || p.email.toLowerCase() === userId.toLowerCase() || p.user === userId,
  );
  return person ? el("span", { title: person.email }, person.user) : userId;
}

function teamName(teamId) {
  if (!teamId) return "-";
  const team = teams.find((t) => t.team_id === teamId);
  return team && team.team_alias ? el("span", { title: teamId }, team.team_alias) : teamId;
}

// One change through the API, then the lists again and a notice saying what happened.
async function change(button, path, body, done) {
  await busy(button, app, async () => {
    await api("POST", path, body);
    await refresh();
    notice(app, done);
  });
}

function keyName(key) {
  return key.key_alias ? `"${key.key_alias}"` : key.key_name;
}

function keyActions(key) {
  const block = !key.blocked;
  return el(
    "div",
    { class: "row actions" },
    el("button", { type: "button", onclick: () => editKey(key) }, "Edit"),
    el(
      "button",
      {
        type: "button",
        onclick: (e) =>
          change(
            e.currentTarget,
            "/key/update",
            { key: key.token, blocked: block },
            `Key ${keyName(key)} is ${block ? "blocked: it is refused from now on" : "unblocked: it works again"}.`,
          ),
      },
      block ? "Block" : "Unblock",
    ),
    el(
      "button",
      {
        type: "button",
        class: "danger",
        onclick: (e) => {
          if (!window.confirm(`Delete the key ${keyName(key)}? It stops working at once; this cannot be undone.`))
            return;
          busy(e.currentTarget, app, async () => {
            const answer = await api("POST", "/key/delete", { keys: [key.token] });
            editor.replaceChildren(); // an editor open on it would save to nothing
            await refresh();
            notice(app, answer.deleted_keys.length ? `Key ${keyName(key)} is deleted.` : "That key was already gone.");
          });
        },
      },
      "Delete",
    ),
  );
}

const KEY_COLUMNS = [
  { title: "Alias", value: (k) => k.key_alias || el("span", { class: "muted" }, "none") },
  { title: "Key", value: (k) => el("code", { title: "token " + k.token }, k.key_name) },
  { title: "Owner", value: (k) => owner(k.user_id) },
  { title: "Team", value: (k) => teamName(k.team_id) },
  { title: "Models", value: (k) => (k.models.length ? k.models.join(", ") : "all") },
  { title: "Spend and budget", value: (k) => budgetText(k) },
  { title: "Limits", value: (k) => limitsText(k) },
  { title: "Expires", value: (k) => (k.expires ? when(k.expires) : "never") },
  { title: "State", value: (k) => state(k) },
  { title: "", value: (k) => keyActions(k) },
];

function teamActions(team) {
  const block = !team.blocked;
  return el(
    "div",
    { class: "row actions" },
    el("button", { type: "button", onclick: () => editTeam(team) }, "Edit"),
    el(
      "button",
      {
        type: "button",
        onclick: (e) =>
          change(
            e.currentTarget,
            "/team/update",
            { team_id: team.team_id, blocked: block },
            `Team ${team.team_alias || team.team_id} is ${block ? "blocked: its keys are refused" : "unblocked"}.`,
          ),
      },
      block ? "Block" : "Unblock",
    ),
  );
}

const TEAM_COLUMNS = [
  { title: "Team", value: (t) => el("code", {}, t.team_id) },
  { title: "Alias", value: (t) => t.team_alias || el("span", { class: "muted" }, "none") },
  { title: "Models", value: (t) => (t.models.length ? t.models.join(", ") : "all") },
  { title: "Spend and budget", value: (t) => budgetText(t) },
  { title: "Limits", value: (t) => limitsText(t) },
  { title: "State", value: (t) => state(t) },
  { title: "", value: (t) => teamActions(t) },
];

// a table whose rows carry data-NAME = each item's FIELD (for scripts and tests to find a row)
function listed(columns, items, empty, id, name, field) {
  const node = table(columns, items, empty);
  if (node.tagName === "TABLE") {
    node.id = id;
    [...node.tBodies[0].rows].forEach((row, i) => (row.dataset[name] = items[i][field]));
  }
  return node;
}

async function refresh() {
  const [keyAnswer, teamAnswer, peopleAnswer] = await Promise.all([
    api("GET", "/key/list?return_full_object=true"),
    api("GET", "/team/list"),
    api("GET", "/user/list"),
  ]);
  teams = teamAnswer;
  people = peopleAnswer;
  owners.replaceChildren(...people.map((p) => el("option", { value: p.email }, p.user)));
  for (const select of app.querySelectorAll("select.teams")) {
    const chosen = select.value;
    select.replaceChildren(...teamSelect("", chosen).children);
    select.value = chosen;
  }
  keysList.replaceChildren(listed(KEY_COLUMNS, keyAnswer.keys, "No keys yet.", "keys-table", "token", "token"));
  teamsList.replaceChildren(listed(TEAM_COLUMNS, teams, "No teams yet.", "teams-table", "team", "team_id"));
}

function showSecret(made) {
  const done = el("button", { type: "button", onclick: () => secretBox.replaceChildren() }, "I stored it");
  secretBox.replaceChildren(
    el(
      "div",
      { class: "secret", id: "new-secret", role: "status" },
      el("p", {}, el("b", {}, `The new key${made.key_alias ? ` "${made.key_alias}"` : ""}, shown once: store it now.`)),
      el("p", {}, el("code", { class: "key" }, made.key)),
      el(
        "div",
        { class: "row" },
        el("button", { type: "button", class: "primary", onclick: (e) => copy(made.key, e.currentTarget) }, "Copy"),
        done,
      ),
      el("p", { class: "muted" }, "Its token, for the API (info, update, delete): ", el("code", {}, made.token)),
    ),
  );
  secretBox.scrollIntoView({ block: "nearest" });
}

function createKeyForm() {
  const limits = limitFields("key");
  const team = teamSelect("key-team", "");
  team.classList.add("teams");
  const submit = el("button", { type: "submit", class: "primary" }, "Create key");
  const form = el(
    "form",
    {
      class: "card",
      id: "create-key",
      onsubmit: async (event) => {
        event.preventDefault();
        const text = (id) => form.querySelector("#" + id).value.trim();
        await busy(submit, form, async () => {
          const body = { ...limits.values() };
          if (text("key-alias")) body.key_alias = text("key-alias");
          if (text("key-user")) body.user_id = text("key-user");
          if (team.value) body.team_id = team.value;
          if (text("key-duration")) body.duration = text("key-duration");
          if (form.querySelector("#key-blocked").checked) body.blocked = true;
          if (form.querySelector("#key-trust").checked) body.trust_user_headers = true;
          const meta = metadata(form.querySelector("#key-metadata").value);
          if (Object.keys(meta).length) body.metadata = meta;
          const made = await api("POST", "/key/generate", body);
          form.reset();
          showSecret(made);
          await refresh();
        });
      },
    },
    el("h2", {}, "Create a key"),
    el(
      "div",
      { class: "row" },
      field("key-alias", "Alias", { placeholder: "a name for it", size: 18 }),
      field("key-user", "Owner", { placeholder: "a person's e-mail", list: "owners", size: 22 }),
      el("div", {}, el("label", { for: "key-team" }, "Team"), team),
      field("key-duration", "Expires after", { placeholder: "never; e.g. 30d", size: 14 }),
    ),
    el("div", { class: "row" }, limits.nodes),
    el("p", { class: "muted" }, LIMITS_HINT),
    el(
      "details",
      {},
      el("summary", {}, "More"),
      check("key-blocked", "Blocked: refuse its requests until it is unblocked"),
      check(
        "key-trust",
        "An application's key (Open WebUI's): charge each request to the person its X-OpenWebUI-User-Email header names",
      ),
      el("label", { for: "key-metadata" }, "Metadata (a JSON object kept with it)"),
      el("textarea", { id: "key-metadata", rows: 2, placeholder: '{"project": "x"}' }),
    ),
    el("div", { class: "row" }, submit),
  );
  return form;
}

function editorForm(title, fields, save, submit) {
  const form = el(
    "form",
    {
      class: "card",
      id: "edit-form",
      onsubmit: async (event) => {
        event.preventDefault();
        await busy(save, form, async () => {
          const done = await submit(form);
          if (done === null) {
            notice(form, "Nothing changed.");
            return;
          }
          await refresh();
          editor.replaceChildren();
          notice(app, done);
        });
      },
    },
    el("h2", {}, title),
    fields,
    el(
      "div",
      { class: "row" },
      save,
      el("button", { type: "button", onclick: () => editor.replaceChildren() }, "Close"),
    ),
  );
  editor.replaceChildren(form);
  form.scrollIntoView({ block: "nearest" });
  form.querySelector("input")?.focus();
}

function editKey(key) {
  const limits = limitFields("edit", key);
  const team = teamSelect("edit-team", key.team_id || "");
  team.classList.add("teams");
  const meta = JSON.stringify(key.metadata || {}, null, 1);
  editorForm(
    `Key ${keyName(key)} (${key.key_name})`,
    [
      el(
        "div",
        { class: "row" },
        field("edit-alias", "Alias", { value: key.key_alias || "", size: 18 }),
        field("edit-user", "Owner", { value: key.user_id || "", list: "owners", size: 22 }),
        el("div", {}, el("label", { for: "edit-team" }, "Team"), team),
        field("edit-duration", "Expires after (from now)", {
          placeholder: key.expires ? "unchanged; never: no expiry" : "unchanged (never); e.g. 30d",
          size: 22,
        }),
      ),
      el("div", { class: "row" }, limits.nodes),
      el("p", { class: "muted" }, LIMITS_HINT),
      check(
        "edit-trust",
        "An application's key (Open WebUI's): charge the person its X-OpenWebUI-User-Email names",
        key.trust_user_headers,
      ),
      el("label", { for: "edit-metadata" }, "Metadata (a JSON object)"),
      el("textarea", { id: "edit-metadata", rows: 2 }, meta),
    ],
    el("button", { type: "submit", class: "primary" }, "Save key"),
    async (form) => {
      const text = (id) => form.querySelector("#" + id).value.trim();
      const body = limits.changes();
      if (text("edit-alias") !== (key.key_alias || "")) body.key_alias = text("edit-alias") || null;
      if (text("edit-user") !== (key.user_id || "")) body.user_id = text("edit-user") || null;
      if (team.value !== (key.team_id || "")) body.team_id = team.value || null;
      const duration = text("edit-duration");
      if (duration) body.duration = ["never", "permanent"].includes(duration.toLowerCase()) ? "permanent" : duration;
      const trust = form.querySelector("#edit-trust").checked;
      if (trust !== Boolean(key.trust_user_headers)) body.trust_user_headers = trust;
      const newMeta = metadata(form.querySelector("#edit-metadata").value);
      if (!same(newMeta, key.metadata || {})) body.metadata = newMeta;
      if (!Object.keys(body).length) return null;
      await api("POST", "/key/update", { key: key.token, ...body });
      return `Key ${keyName(key)} is saved.`;
    },
  );
}

function editTeam(t) {
  const limits = limitFields("edit", t);
  editorForm(
    `Team ${t.team_alias || t.team_id}`,
    [
      el("div", { class: "row" }, field("edit-alias", "Alias", { value: t.team_alias || "", size: 18 })),
      el("div", { class: "row" }, limits.nodes),
      el("p", { class: "muted" }, LIMITS_HINT),
    ],
    el("button", { type: "submit", class: "primary" }, "Save team"),
    async (form) => {
      const alias = form.querySelector("#edit-alias").value.trim();
      const body = limits.changes();
      if (alias !== (t.team_alias || "")) body.team_alias = alias || null;
      if (!Object.keys(body).length) return null;
      await api("POST", "/team/update", { team_id: t.team_id, ...body });
      return `Team ${alias || t.team_id} is saved.`;
    },
  );
}

function createTeamForm() {
  const limits = limitFields("team");
  const submit = el("button", { type: "submit", class: "primary" }, "Create team");
  const form = el(
    "form",
    {
      class: "card",
      id: "create-team",
      onsubmit: async (event) => {
        event.preventDefault();
        const text = (id) => form.querySelector("#" + id).value.trim();
        await busy(submit, form, async () => {
          const body = { ...limits.values() };
          if (text("team-alias")) body.team_alias = text("team-alias");
          if (text("team-id")) body.team_id = text("team-id");
          if (form.querySelector("#team-blocked").checked) body.blocked = true;
          const made = await api("POST", "/team/new", body);
          form.reset();
          await refresh();
          notice(app, `Team ${made.team_alias || made.team_id} is created (${made.team_id}): give its id to keys.`);
        });
      },
    },
    el("h2", {}, "Create a team"),
    el(
      "div",
      { class: "row" },
      field("team-alias", "Alias", { placeholder: "a name for it", size: 18 }),
      field("team-id", "Id", { placeholder: "default: team-<random>", size: 20 }),
    ),
    el("div", { class: "row" }, limits.nodes),
    el("p", { class: "muted" }, LIMITS_HINT),
    check("team-blocked", "Blocked: refuse its keys' requests until it is unblocked"),
    el("div", { class: "row" }, submit),
  );
  return form;
}

async function start() {
  app.replaceChildren(
    owners,
    secretBox,
    createKeyForm(),
    el("h2", {}, "Keys"),
    keysList,
    editor,
    el("h2", {}, "Teams"),
    teamsList,
    createTeamForm(),
  );
  try {
    await refresh();
  } catch (error) {
    notice(app, error.message, true);
  }
}

start();
