// The Keys and teams page (/admin/keys): every virtual key and team, and what `ark keys` and `ark teams` do:
// create a key (its secret shown once), change its name, owner, team, models, budget, limits and expiry,
// block or unblock it, delete it; create a team, change its limits, block or unblock it. Every change is a
// call to the management API (ark.gateway.admin), which checks it again.
// ES module, nothing inline; data goes into the page as text only.
"use strict";

import { api, busy, copy, count, el, money, notice, when } from "/static/console.js";
import { adminPage, createForm, field, filled, isSet, limitFields, listed, ratesText, same } from "/static/limits.js";

const app = document.getElementById("app");
const secretBox = el("div", { id: "secret-box", "aria-live": "polite" });
const keysList = el("div", { id: "keys" });
const teamsList = el("div", { id: "teams" });
const editor = el("section", { id: "key-editor", "aria-live": "polite" });
const owners = el("datalist", { id: "owners" });
let teams = [];
let people = [];
const { changeButton, editorForm } = adminPage(app, editor, refresh);

const LIMITS_HINT =
  "An empty field is no limit (models: every model); an empty period never resets. A new period starts when " +
  "the period is changed.";

// The limits' inputs in a row, and what an empty one means.
function limitsPart(limits) {
  return [el("div", { class: "row" }, limits.nodes), el("p", { class: "muted" }, LIMITS_HINT)];
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

function budgetText(item) {
  const period = item.budget_duration ? " per " + item.budget_duration : "";
  const parts = [money(item.spend) + (isSet(item.max_budget) ? " of " + money(item.max_budget) + period : "")];
  if (isSet(item.max_tokens_budget))
    parts.push(`${count(item.tokens_used)} of ${count(item.max_tokens_budget)} tokens${period}`);
  return parts.join("; ");
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

function keyName(key) {
  return key.key_alias ? `"${key.key_alias}"` : key.key_name;
}

// Edit, Block or Unblock (``blocked(block)``: what the notice says), then ``more``.
function actions(edit, path, item, body, blocked, ...more) {
  const block = !item.blocked;
  return el(
    "div",
    { class: "row actions" },
    el("button", { type: "button", onclick: edit }, "Edit"),
    changeButton(block ? "Block" : "Unblock", path, { ...body, blocked: block }, blocked(block)),
    more,
  );
}

function keyActions(key) {
  return actions(
    () => editKey(key),
    "/key/update",
    key,
    { key: key.token },
    (block) => `Key ${keyName(key)} is ${block ? "blocked: it is refused from now on" : "unblocked: it works again"}.`,
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

function teamActions(team) {
  return actions(
    () => editTeam(team),
    "/team/update",
    team,
    { team_id: team.team_id },
    (block) => `Team ${team.team_alias || team.team_id} is ${block ? "blocked: its keys are refused" : "unblocked"}.`,
  );
}

// What the keys' and the teams' tables both show, after their own columns.
const SHARED_COLUMNS = [
  { title: "Models", value: (item) => (item.models.length ? item.models.join(", ") : "all") },
  { title: "Spend and budget", value: (item) => budgetText(item) },
  { title: "Limits", value: (item) => ratesText(item) || "-" },
];

const KEY_COLUMNS = [
  { title: "Alias", value: (k) => k.key_alias || el("span", { class: "muted" }, "none") },
  { title: "Key", value: (k) => el("code", { title: "token " + k.token }, k.key_name) },
  { title: "Owner", value: (k) => owner(k.user_id) },
  { title: "Team", value: (k) => teamName(k.team_id) },
  ...SHARED_COLUMNS,
  { title: "Expires", value: (k) => (k.expires ? when(k.expires) : "never") },
  { title: "State", value: (k) => state(k) },
  { title: "", value: (k) => keyActions(k) },
];

const TEAM_COLUMNS = [
  { title: "Team", value: (t) => el("code", {}, t.team_id) },
  { title: "Alias", value: (t) => t.team_alias || el("span", { class: "muted" }, "none") },
  ...SHARED_COLUMNS,
  { title: "State", value: (t) => state(t) },
  { title: "", value: (t) => teamActions(t) },
];

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

// The team choice of a key's form; refresh() keeps its teams current.
function teamPart(id, chosen) {
  const team = teamSelect(id, chosen);
  team.classList.add("teams");
  return [team, el("div", {}, el("label", { for: id }, "Team"), team)];
}

function createKeyForm() {
  const limits = limitFields("key");
  const [team, teamNode] = teamPart("key-team", "");
  return createForm(
    "create-key",
    "Create a key",
    "Create key",
    async (text, form) => {
      const body = {
        ...limits.values(),
        ...filled(text, { key_alias: "key-alias", user_id: "key-user", duration: "key-duration" }),
      };
      if (team.value) body.team_id = team.value;
      if (form.querySelector("#key-blocked").checked) body.blocked = true;
      if (form.querySelector("#key-trust").checked) body.trust_user_headers = true;
      const meta = metadata(form.querySelector("#key-metadata").value);
      if (Object.keys(meta).length) body.metadata = meta;
      const made = await api("POST", "/key/generate", body);
      form.reset();
      showSecret(made);
      await refresh();
    },
    el(
      "div",
      { class: "row" },
      field("key-alias", "Alias", { placeholder: "a name for it", size: 18 }),
      field("key-user", "Owner", { placeholder: "a person's e-mail", list: "owners", size: 22 }),
      teamNode,
      field("key-duration", "Expires after", { placeholder: "never; e.g. 30d", size: 14 }),
    ),
    ...limitsPart(limits),
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
  );
}

function editKey(key) {
  const limits = limitFields("edit", key);
  const [team, teamNode] = teamPart("edit-team", key.team_id || "");
  const meta = JSON.stringify(key.metadata || {}, null, 1);
  editorForm(
    "edit-form",
    `Key ${keyName(key)} (${key.key_name})`,
    [
      el(
        "div",
        { class: "row" },
        field("edit-alias", "Alias", { value: key.key_alias || "", size: 18 }),
        field("edit-user", "Owner", { value: key.user_id || "", list: "owners", size: 22 }),
        teamNode,
        field("edit-duration", "Expires after (from now)", {
          placeholder: key.expires ? "unchanged; never: no expiry" : "unchanged (never); e.g. 30d",
          size: 22,
        }),
      ),
      ...limitsPart(limits),
      check(
        "edit-trust",
        "An application's key (Open WebUI's): charge the person its X-OpenWebUI-User-Email names",
        key.trust_user_headers,
      ),
      el("label", { for: "edit-metadata" }, "Metadata (a JSON object)"),
      el("textarea", { id: "edit-metadata", rows: 2 }, meta),
    ],
    "Save key",
    async (text, form) => {
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
    "edit-form",
    `Team ${t.team_alias || t.team_id}`,
    [
      el("div", { class: "row" }, field("edit-alias", "Alias", { value: t.team_alias || "", size: 18 })),
      ...limitsPart(limits),
    ],
    "Save team",
    async (text) => {
      const alias = text("edit-alias");
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
  return createForm(
    "create-team",
    "Create a team",
    "Create team",
    async (text, form) => {
      const body = { ...limits.values(), ...filled(text, { team_alias: "team-alias", team_id: "team-id" }) };
      if (form.querySelector("#team-blocked").checked) body.blocked = true;
      const made = await api("POST", "/team/new", body);
      form.reset();
      await refresh();
      notice(app, `Team ${made.team_alias || made.team_id} is created (${made.team_id}): give its id to keys.`);
    },
    el(
      "div",
      { class: "row" },
      field("team-alias", "Alias", { placeholder: "a name for it", size: 18 }),
      field("team-id", "Id", { placeholder: "default: team-<random>", size: 20 }),
    ),
    ...limitsPart(limits),
    check("team-blocked", "Blocked: refuse its keys' requests until it is unblocked"),
  );
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
