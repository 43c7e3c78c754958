// The Users page (/admin/users): everyone who may sign in, from /user/accounts (role, state, second factor,
// sessions) and /user/list (budget, limits, spend), and what an admin may change: add a user, disable or
// enable one, change a role, remove a second factor, set a password, set a budget and limits. Every change
// is a call to the management API (ark.auth.api, ark.gateway.admin), which checks it again.
// ES module, nothing inline; data goes into the page as text only.
"use strict";

import { api, busy, count, el, money, notice, table, USER, when } from "/static/console.js";

const app = document.getElementById("app");
const listing = el("section", { id: "users", "aria-label": "Users" });
const editor = el("section", { id: "user-editor", "aria-live": "polite" });

// A person's limits, as /user/update takes them: field, kind, label, hint; the input ids are budget-SHORT.
const LIMITS = [
  ["max_budget", "number", "Budget (credits)", "no limit", "max"],
  ["budget_duration", "text", "Budget period", "e.g. 30d", "duration"],
  ["max_tokens_budget", "number", "Token budget", "no limit", "tokens"],
  ["models", "list", "Models (comma-separated)", "every model", "models"],
  ["tpm_limit", "number", "Tokens per minute", "no limit", "tpm"],
  ["rpm_limit", "number", "Requests per minute", "no limit", "rpm"],
  ["max_parallel_requests", "number", "Requests at once", "no limit", "parallel"],
];

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

function budgetText(person) {
  const parts = [];
  if (person.max_budget !== null && person.max_budget !== undefined) {
    parts.push(money(person.max_budget) + (person.budget_duration ? " per " + person.budget_duration : " in all"));
  }
  if (person.max_tokens_budget !== null && person.max_tokens_budget !== undefined) {
    parts.push(
      count(person.max_tokens_budget) + " tokens" + (person.budget_duration ? " per " + person.budget_duration : ""),
    );
  }
  if (person.models && person.models.length) parts.push("models: " + person.models.join(", "));
  const rates = [
    person.tpm_limit !== null && person.tpm_limit !== undefined ? count(person.tpm_limit) + " tokens/min" : null,
    person.rpm_limit !== null && person.rpm_limit !== undefined ? count(person.rpm_limit) + " requests/min" : null,
    person.max_parallel_requests !== null && person.max_parallel_requests !== undefined
      ? person.max_parallel_requests + " at once"
      : null,
  ].filter(Boolean);
  if (rates.length) parts.push(rates.join(", "));
  return parts.length ? parts.join("; ") : "no limit";
}

async function load() {
  const [accounts, people] = await Promise.all([api("GET", "/user/accounts"), api("GET", "/user/list")]);
  const limits = new Map(people.map((p) => [p.user, p]));
  return accounts
    .map((account) => ({ ...(limits.get(account.user) || {}), ...account }))
    .sort((a, b) => a.user.localeCompare(b.user));
}

// One change through the API, then the list again and a notice saying what happened.
async function change(button, path, body, done) {
  await busy(button, app, async () => {
    await api("POST", path, body);
    await refresh();
    notice(app, done);
  });
}

function actions(person) {
  const name = person.user;
  const me = name === USER.name;
  const buttons = [];
  if (person.disabled) {
    buttons.push(
      el(
        "button",
        {
          type: "button",
          onclick: (e) =>
            change(e.currentTarget, "/user/enable", { user: name }, `${name} is enabled: they may sign in again.`),
        },
        "Enable",
      ),
    );
  } else {
    buttons.push(
      el(
        "button",
        {
          type: "button",
          class: "danger",
          onclick: (e) => {
            const warning = me ? "You are disabling yourself: you will be signed out. " : "";
            if (!window.confirm(`${warning}Disable ${name}? Their sessions end now and their keys stop working.`))
              return;
            change(
              e.currentTarget,
              "/user/disable",
              { user: name },
              `${name} is disabled: their sessions ended and their keys stopped.`,
            );
          },
        },
        "Disable",
      ),
    );
  }
  const role = person.role === "admin" ? "user" : "admin";
  buttons.push(
    el(
      "button",
      {
        type: "button",
        onclick: (e) => {
          if (me && role !== "admin" && !window.confirm("Make yourself a plain user? You lose the admin pages."))
            return;
          change(
            e.currentTarget,
            "/user/role",
            { user: name, role },
            `${name} is now ${role === "admin" ? "an admin" : "a user"}.`,
          );
        },
      },
      role === "admin" ? "Make admin" : "Make user",
    ),
  );
  if (person.totp) {
    buttons.push(
      el(
        "button",
        {
          type: "button",
          onclick: (e) => {
            if (
              !window.confirm(
                `Remove ${name}'s second factor? They sign in with their password alone until they set one up again.`,
              )
            )
              return;
            change(e.currentTarget, "/user/totp/reset", { user: name }, `${name}'s second factor is removed.`);
          },
        },
        "Reset TOTP",
      ),
    );
  }
  buttons.push(
    el("button", { type: "button", onclick: () => editBudget(person) }, "Budget"),
    el("button", { type: "button", onclick: () => editPassword(person) }, "Password"),
  );
  return el("div", { class: "row actions" }, buttons);
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
  const shownTable = table(COLUMNS, people, "No users yet: add one below.");
  if (shownTable.tagName === "TABLE") {
    shownTable.id = "users-table";
    [...shownTable.tBodies[0].rows].forEach((row, i) => (row.dataset.user = people[i].user));
  }
  listing.replaceChildren(shownTable);
}

function closeButton() {
  return el("button", { type: "button", onclick: () => editor.replaceChildren() }, "Close");
}

function editBudget(person) {
  const inputs = {};
  const fields = LIMITS.map(([name, kind, label, hint, short]) => {
    const id = "budget-" + short;
    inputs[name] = el("input", {
      id,
      name,
      value: shown(kind, person[name]),
      placeholder: hint,
      size: kind === "list" ? 28 : 12,
    });
    return el("div", {}, el("label", { for: id }, label), inputs[name]);
  });
  const save = el("button", { type: "submit", class: "primary" }, "Save budget");
  const form = el(
    "form",
    {
      class: "card",
      id: "budget-form",
      onsubmit: async (event) => {
        event.preventDefault();
        // only what changed: sending the period again would start a new one now
        const body = { user: person.user };
        for (const [name, kind] of LIMITS) {
          const value = parse(kind, inputs[name].value);
          if (JSON.stringify(value) !== JSON.stringify(parse(kind, shown(kind, person[name])))) body[name] = value;
        }
        if (Object.keys(body).length === 1) {
          notice(form, "Nothing changed.");
          return;
        }
        await busy(save, form, async () => {
          const updated = await api("POST", "/user/update", body);
          await refresh();
          editor.replaceChildren();
          notice(app, `${person.user}'s budget and limits are saved: ${budgetText(updated)}.`);
        });
      },
    },
    el("h2", {}, `Budget and limits of ${person.user}`),
    el(
      "p",
      { class: "muted" },
      "What they may spend and use, through the console and with every key of theirs. An empty field is no limit; " +
        "an empty period never resets. A new period starts when the period is changed.",
    ),
    el("div", { class: "row" }, fields),
    el("div", { class: "row" }, save, closeButton()),
  );
  editor.replaceChildren(form);
  inputs.max_budget.focus();
  form.scrollIntoView({ block: "nearest" });
}

function editPassword(person) {
  const input = el("input", {
    id: "password-new",
    type: "password",
    autocomplete: "new-password",
    required: true,
    size: 32,
  });
  const save = el("button", { type: "submit", class: "primary" }, "Set password");
  const form = el(
    "form",
    {
      class: "card",
      id: "password-form",
      onsubmit: async (event) => {
        event.preventDefault();
        await busy(save, form, async () => {
          await api("POST", "/user/password", { user: person.user, password: input.value });
          input.value = "";
          await refresh();
          editor.replaceChildren();
          notice(app, `${person.user}'s password is changed; their sessions ended.`);
        });
      },
    },
    el("h2", {}, `New password for ${person.user}`),
    el(
      "p",
      { class: "muted" },
      "Their sessions end: they sign in again with the new password. Tell it to them another way than e-mail.",
    ),
    el("label", { for: "password-new" }, "Password"),
    input,
    el("div", { class: "row" }, save, closeButton()),
  );
  editor.replaceChildren(form);
  input.focus();
  form.scrollIntoView({ block: "nearest" });
}

function addForm() {
  const field = (id, label, attrs = {}) =>
    el("div", {}, el("label", { for: id }, label), el("input", { id, ...attrs }));
  const role = el(
    "select",
    { id: "new-role" },
    el("option", { value: "user" }, "user"),
    el("option", { value: "admin" }, "admin"),
  );
  const submit = el("button", { type: "submit", class: "primary" }, "Add user");
  const form = el(
    "form",
    {
      class: "card",
      id: "add-user",
      onsubmit: async (event) => {
        event.preventDefault();
        const value = (id) => form.querySelector("#" + id).value.trim();
        const body = { name: value("new-name"), password: form.querySelector("#new-password").value, role: role.value };
        if (value("new-email")) body.email = value("new-email");
        if (value("new-display")) body.display_name = value("new-display");
        await busy(submit, form, async () => {
          const made = await api("POST", "/user/new", body);
          form.reset();
          await refresh();
          notice(app, `${made.user} is added (${made.role}); they sign in with the password you gave.`);
        });
      },
    },
    el("h2", {}, "Add a user"),
    el(
      "div",
      { class: "row" },
      field("new-name", "Name", { required: true, autocomplete: "off", placeholder: "lowercase, e.g. ada", size: 16 }),
      field("new-email", "E-mail", {
        type: "email",
        autocomplete: "off",
        placeholder: "default: name@domain",
        size: 24,
      }),
      field("new-display", "Display name", { autocomplete: "off", size: 20 }),
      el("div", {}, el("label", { for: "new-role" }, "Role"), role),
      field("new-password", "Initial password", {
        type: "password",
        required: true,
        autocomplete: "new-password",
        size: 20,
      }),
    ),
    el("div", { class: "row" }, submit),
  );
  return form;
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
