// The Users page (/admin/users): everyone who may sign in, from /user/accounts (role, state, second factor,
// sessions) and /user/list (budget, limits, spend), and what an admin may change: add a user, disable or
// enable one, change a role, remove a second factor, set a password, set a budget and limits. Every change
// is a call to the management API (ark.auth.api, ark.gateway.admin), which checks it again.
// ES module, nothing inline; data goes into the page as text only.
"use strict";

import { api, count, el, money, notice, USER, when } from "/static/console.js";
import { adminPage, createForm, field, filled, isSet, limitFields, listed, ratesText } from "/static/limits.js";

const app = document.getElementById("app");
const listing = el("section", { id: "users", "aria-label": "Users" });
const editor = el("section", { id: "user-editor", "aria-live": "polite" });

const { changeButton, editorForm } = adminPage(app, editor, refresh);

// A person's limits, as /user/update takes them; their form is older than the keys page's: its own order, input
// ids (budget-max, budget-duration, ...) and sizes.
const LIMITS_LAYOUT = {
  order: [
    "max_budget",
    "budget_duration",
    "max_tokens_budget",
    "models",
    "tpm_limit",
    "rpm_limit",
    "max_parallel_requests",
  ],
  ends: { max_budget: "max", budget_duration: "duration" },
  sizes: [28, 12],
};

function budgetText(person) {
  const parts = [];
  const period = person.budget_duration ? " per " + person.budget_duration : "";
  if (isSet(person.max_budget)) parts.push(money(person.max_budget) + (period || " in all"));
  if (isSet(person.max_tokens_budget)) parts.push(count(person.max_tokens_budget) + " tokens" + period);
  if (person.models && person.models.length) parts.push("models: " + person.models.join(", "));
  const rates = ratesText(person);
  if (rates) parts.push(rates);
  return parts.length ? parts.join("; ") : "no limit";
}

async function load() {
  const [accounts, people] = await Promise.all([api("GET", "/user/accounts"), api("GET", "/user/list")]);
  const limits = new Map(people.map((p) => [p.user, p]));
  return accounts
    .map((account) => ({ ...(limits.get(account.user) || {}), ...account }))
    .sort((a, b) => a.user.localeCompare(b.user));
}

function actions(person) {
  const name = person.user;
  const me = name === USER.name;
  const role = person.role === "admin" ? "user" : "admin";
  const warning = me ? "You are disabling yourself: you will be signed out. " : "";
  return el(
    "div",
    { class: "row actions" },
    person.disabled
      ? changeButton("Enable", "/user/enable", { user: name }, `${name} is enabled: they may sign in again.`)
      : changeButton(
          "Disable",
          "/user/disable",
          { user: name },
          `${name} is disabled: their sessions ended and their keys stopped.`,
          { ask: `${warning}Disable ${name}? Their sessions end now and their keys stop working.`, danger: true },
        ),
    changeButton(
      role === "admin" ? "Make admin" : "Make user",
      "/user/role",
      { user: name, role },
      `${name} is now ${role === "admin" ? "an admin" : "a user"}.`,
      { ask: me && role !== "admin" ? "Make yourself a plain user? You lose the admin pages." : null },
    ),
    person.totp
      ? changeButton("Reset TOTP", "/user/totp/reset", { user: name }, `${name}'s second factor is removed.`, {
          ask: `Remove ${name}'s second factor? They sign in with their password alone until they set one up again.`,
        })
      : null,
    el("button", { type: "button", onclick: () => editBudget(person) }, "Budget"),
    el("button", { type: "button", onclick: () => editPassword(person) }, "Password"),
  );
}

const COLUMNS = [
  {
    title: "User",
    value: (p) =>
      el(
        "div",
        {},
        el("b", {}, p.user),
        p.user === USER.name ? el("span", { class: "muted" }, " (you)") : null,
        el("div", { class: "muted" }, p.display_name !== p.user ? `${p.display_name} · ${p.email}` : p.email),
      ),
  },
  { title: "Role", value: (p) => p.role },
  {
    title: "State",
    value: (p) => el("span", { class: p.disabled ? "bad" : "ok" }, p.disabled ? "disabled" : "enabled"),
  },
  { title: "Second factor", value: (p) => (p.totp ? "on" : "off") },
  { title: "Sessions", value: (p) => count(p.sessions), num: true },
  { title: "Spend", value: (p) => money(p.spend), num: true },
  { title: "Budget and limits", value: (p) => budgetText(p) },
  {
    title: "Added",
    value: (p) => el("span", { class: "date", title: when(p.created_at) }, String(p.created_at).slice(0, 10)),
  },
  { title: "", value: (p) => actions(p) },
];

async function refresh() {
  const people = await load();
  listing.replaceChildren(listed(COLUMNS, people, "No users yet: add one below.", "users-table", "user", "user"));
}

function editBudget(person) {
  const limits = limitFields("budget", person, LIMITS_LAYOUT);
  editorForm(
    "budget-form",
    `Budget and limits of ${person.user}`,
    [
      el(
        "p",
        { class: "muted" },
        "What they may spend and use, through the console and with every key of theirs. An empty field is no limit; " +
          "an empty period never resets. A new period starts when the period is changed.",
      ),
      el("div", { class: "row" }, limits.nodes),
    ],
    "Save budget",
    async () => {
      const body = limits.changes();
      if (!Object.keys(body).length) return null;
      const updated = await api("POST", "/user/update", { user: person.user, ...body });
      return `${person.user}'s budget and limits are saved: ${budgetText(updated)}.`;
    },
  );
}

function editPassword(person) {
  const input = el("input", {
    id: "password-new",
    type: "password",
    autocomplete: "new-password",
    required: true,
    size: 32,
  });
  editorForm(
    "password-form",
    `New password for ${person.user}`,
    [
      el(
        "p",
        { class: "muted" },
        "Their sessions end: they sign in again with the new password. Tell it to them another way than e-mail.",
      ),
      el("label", { for: "password-new" }, "Password"),
      input,
    ],
    "Set password",
    async () => {
      await api("POST", "/user/password", { user: person.user, password: input.value });
      input.value = "";
      return `${person.user}'s password is changed; their sessions ended.`;
    },
  );
}

function addForm() {
  const role = el(
    "select",
    { id: "new-role" },
    el("option", { value: "user" }, "user"),
    el("option", { value: "admin" }, "admin"),
  );
  return createForm(
    "add-user",
    "Add a user",
    "Add user",
    async (text, form) => {
      const body = {
        name: text("new-name"),
        password: form.querySelector("#new-password").value,
        role: role.value,
        ...filled(text, { email: "new-email", display_name: "new-display" }),
      };
      const made = await api("POST", "/user/new", body);
      form.reset();
      await refresh();
      notice(app, `${made.user} is added (${made.role}); they sign in with the password you gave.`);
    },
    el(
      "div",
      { class: "row" },
      field("new-name", "Name", { required: true, placeholder: "lowercase, e.g. ada", size: 16 }),
      field("new-email", "E-mail", { type: "email", placeholder: "default: name@domain", size: 24 }),
      field("new-display", "Display name", { size: 20 }),
      el("div", {}, el("label", { for: "new-role" }, "Role"), role),
      field("new-password", "Initial password", {
        type: "password",
        required: true,
        autocomplete: "new-password",
        size: 20,
      }),
    ),
  );
}

async function start() {
  app.replaceChildren(listing, editor, addForm());
  try {
    await refresh();
  } catch (error) {
    notice(app, error.message, true);
  }
}

start();
