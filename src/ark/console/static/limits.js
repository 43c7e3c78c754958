// What the admin pages that change keys, teams and people share: the limits form (ark.gateway.admin._LIMITS),
// their text, input fields, the forms that create and edit, buttons that make one change, and listed tables.
// ES module, nothing inline; data goes into the page as text only.
"use strict";

import { api, busy, count, el, notice, table } from "/static/console.js";

// field: kind, label, hint, the input id's end
const LIMITS = {
  models: ["list", "Models (comma-separated)", "every model", "models"],
  max_budget: ["number", "Budget (credits)", "no limit", "budget"],
  budget_duration: ["text", "Budget period", "e.g. 30d", "period"],
  max_tokens_budget: ["number", "Token budget", "no limit", "tokens"],
  tpm_limit: ["number", "Tokens per minute", "no limit", "tpm"],
  rpm_limit: ["number", "Requests per minute", "no limit", "rpm"],
  max_parallel_requests: ["number", "Requests at once", "no limit", "parallel"],
};

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

export const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

export function isSet(value) {
  return value !== null && value !== undefined;
}

// Inputs for the limits, with ``current`` values, in ``order``, their ids PREFIX-END (``ends``: other ends than
// the table's); values(): the ones set; changes(): the ones changed.
export function limitFields(prefix, current = {}, { order = Object.keys(LIMITS), ends = {}, sizes = [26, 10] } = {}) {
  const inputs = {};
  const nodes = order.map((name) => {
    const [kind, label, hint, end] = LIMITS[name];
    const id = `${prefix}-${ends[name] || end}`;
    const size = kind === "list" ? sizes[0] : sizes[1];
    inputs[name] = el("input", { id, name, value: shown(kind, current[name]), placeholder: hint, size });
    return el("div", {}, el("label", { for: id }, label), inputs[name]);
  });
  const read = (name) => parse(LIMITS[name][0], inputs[name].value);
  const values = () => {
    const out = {};
    for (const name of order) {
      const value = read(name);
      if (value !== null && !(Array.isArray(value) && !value.length)) out[name] = value;
    }
    return out;
  };
  const changes = () => {
    const out = {};
    for (const name of order) {
      const kind = LIMITS[name][0];
      const value = read(name);
      // only what changed: sending the period again would start a new one now
      if (!same(value, parse(kind, shown(kind, current[name])))) out[name] = value;
    }
    return out;
  };
  return { nodes, values, changes };
}

// The rate limits as text ("" where none is set).
export function ratesText(item) {
  return [
    isSet(item.tpm_limit) ? count(item.tpm_limit) + " tokens/min" : null,
    isSet(item.rpm_limit) ? count(item.rpm_limit) + " requests/min" : null,
    isSet(item.max_parallel_requests) ? item.max_parallel_requests + " at once" : null,
  ]
    .filter(Boolean)
    .join(", ");
}

export function field(id, label, attrs = {}) {
  return el("div", {}, el("label", { for: id }, label), el("input", { id, autocomplete: "off", ...attrs }));
}

// A card form with ``label`` on its submit button, then ``more`` buttons; ``work(text, form)`` runs on submit
// (text(id): that input's value, trimmed).
function cardForm(id, title, label, parts, work, ...more) {
  const submit = el("button", { type: "submit", class: "primary" }, label);
  const form = el(
    "form",
    {
      class: "card",
      id,
      onsubmit: async (event) => {
        event.preventDefault();
        const text = (name) => form.querySelector("#" + name).value.trim();
        await busy(submit, form, () => work(text, form));
      },
    },
    el("h2", {}, title),
    parts,
    el("div", { class: "row" }, submit, more),
  );
  return form;
}

// A form that creates something: ``make(text, form)`` sends it.
export function createForm(id, title, label, make, ...parts) {
  return cardForm(id, title, label, parts, make);
}

// The fields whose inputs are filled in, with their text; ``ids``: {field: its input's id}.
export function filled(text, ids) {
  return Object.fromEntries(
    Object.entries(ids)
      .filter(([, id]) => text(id))
      .map(([name, id]) => [name, text(id)]),
  );
}

// a table whose rows carry data-NAME = each item's FIELD (for scripts and tests to find a row)
export function listed(columns, items, empty, id, name, field) {
  const node = table(columns, items, empty);
  if (node.tagName === "TABLE") {
    node.id = id;
    [...node.tBodies[0].rows].forEach((row, i) => (row.dataset[name] = items[i][field]));
  }
  return node;
}

// What works on a page's ``app`` (notices), its ``editor`` section and ``refresh()`` (its lists again).
export function adminPage(app, editor, refresh) {
  // A button for one change through the API (``ask``: a question to confirm first), then the lists again and a
  // notice saying what happened.
  function changeButton(label, path, body, done, { ask = null, danger = false } = {}) {
    return el(
      "button",
      {
        type: "button",
        class: danger ? "danger" : null,
        onclick: (e) => {
          if (ask && !window.confirm(ask)) return;
          busy(e.currentTarget, app, async () => {
            await api("POST", path, body);
            await refresh();
            notice(app, done);
          });
        },
      },
      label,
    );
  }

  // An editor's form; ``submit(text, form)`` saves and says what it did, or null when nothing changed.
  function editorForm(id, title, fields, label, submit) {
    const close = el("button", { type: "button", onclick: () => editor.replaceChildren() }, "Close");
    const form = cardForm(
      id,
      title,
      label,
      fields,
      async (text) => {
        const done = await submit(text, form);
        if (done === null) {
          notice(form, "Nothing changed.");
          return;
        }
        await refresh();
        editor.replaceChildren();
        notice(app, done);
      },
      close,
    );
    editor.replaceChildren(form);
    form.scrollIntoView({ block: "nearest" });
    form.querySelector("input")?.focus();
  }

  return { changeButton, editorForm };
}
