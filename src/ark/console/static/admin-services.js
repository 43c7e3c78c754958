// Services: the parts of ARK's components and the programs `ark up` runs (state, restarts, uptime, pid, why),
// refreshed every 5 s, and the end of a supervised service's log.
"use strict";

import { api, busy, count, el, notice, table } from "/static/console.js";

const POLL_MS = 5000;
const LOG_LINES = 200;
const COLOUR = { running: "ok", absent: "dim", stopped: "dim", failed: "bad", backoff: "bad" }; // starting: plain

const app = document.getElementById("app");
const listBox = el("div", { id: "services", "aria-live": "off" });
const listSection = el("section", {}, listBox, el("p", { class: "muted" }, "Updated every few seconds."));
const logTitle = el("h2", {}, "Log");
const logPath = el("p", { class: "muted" });
const logText = el("pre", { id: "log", tabindex: 0 });
const reload = el("button", { type: "button" }, "Reload");
const close = el("button", { type: "button" }, "Close");
const logSection = el("section", { id: "log-view", class: "card", hidden: true },
  logTitle, logPath, el("div", { class: "row" }, reload, close), logText);
let drawn = ""; // what the table shows (JSON): redrawn only when that changes, so a click is rarely lost
let logName = null; // the service whose log is open

function duration(seconds) {
  if (seconds == null) return "-";
  const s = Math.floor(seconds);
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min";
  if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
}

// What a row shows, as text: the table is redrawn only when this changes.
function shownOf(service) {
  return {
    name: service.name,
    state: service.state,
    restarts: count(service.restarts),
    up: duration(service.uptime_s),
    pid: service.pid == null ? "-" : String(service.pid),
    exit: service.last_exit == null ? "-" : String(service.last_exit),
    why: service.why || "",
    log: Boolean(service.log), // only the services the supervisor runs have one
  };
}

function logButton(row) {
  if (!row.log) return "";
  const button = el("button", { type: "button" }, "Log");
  button.addEventListener("click", () => openLog(row.name, button));
  return button;
}

const COLUMNS = [
  { title: "Service", value: (r) => r.name },
  { title: "State", value: (r) => el("b", { class: COLOUR[r.state] || null, dataset: { state: r.state } }, r.state) },
  { title: "Restarts", value: (r) => r.restarts, num: true },
  { title: "Up", value: (r) => r.up, num: true },
  { title: "PID", value: (r) => r.pid, num: true },
  { title: "Last exit", value: (r) => r.exit, num: true },
  { title: "Why", value: (r) => r.why },
  { title: "", value: logButton },
];

function drawServices(services) {
  const rows = services.map(shownOf);
  const text = JSON.stringify(rows);
  if (text === drawn) return;
  drawn = text;
  listBox.replaceChildren(table(COLUMNS, rows, "ARK runs no services here."));
  const tbody = listBox.querySelector("tbody");
  if (tbody) [...tbody.rows].forEach((tr, i) => (tr.dataset.service = rows[i].name));
}

// A notice that is said once: the table is read every 5 s, and a screen reader would repeat the same error.
function say(where, text, error = false) {
  const old = where.querySelector(":scope > .notice");
  if (!old || old.textContent !== text || old.classList.contains("error") !== error) notice(where, text, error);
}

async function refresh() {
  try {
    const answer = await api("GET", "/admin/services");
    drawServices([...(answer.core || []), ...answer.services]); // the gateway and engines first
    listSection.querySelector(":scope > .notice")?.remove();
  } catch (error) {
    if (error.status === 401) return; // api() is taking the browser to the sign-in
    say(listSection, "Cannot list the services: " + error.message + " Trying again.", true);
  }
  setTimeout(refresh, POLL_MS);
}

async function showLog(name) {
  const answer = await api("GET", `/admin/services/log?name=${encodeURIComponent(name)}&lines=${LOG_LINES}`);
  logName = name;
  logTitle.textContent = "Log: " + answer.name;
  logPath.textContent = `The end of ${answer.log} (at most ${LOG_LINES} lines).`;
  logText.textContent = answer.lines.length ? answer.lines.join("\n") : "(the log is empty)";
  logSection.hidden = false;
  logText.scrollTop = logText.scrollHeight; // the newest lines
}

function openLog(name, button) {
  return busy(button, logSection.hidden ? app : logSection, () => showLog(name));
}

reload.addEventListener("click", () => busy(reload, logSection, () => showLog(logName)));
close.addEventListener("click", () => {
  logSection.hidden = true;
  logName = null;
});

app.replaceChildren(listSection, logSection);
refresh();
