// The playground: chat with a model (streamed) or make an image, as the signed-in person (their budget and
// models apply), with an inspector of the exact request and answer, its numbers, and the same request as
// code for curl, the openai client and the ollama client.
"use strict";

import { api, copy, el, money, notice, send } from "/static/console.js";

const app = document.getElementById("app");
const API_BASE = document.querySelector("meta[name=ark-api]")?.content || window.location.origin;
const state = { models: [], messages: [], controller: null, last: null };

// -- the form -------------------------------------------------------------------------------------
const model = el("select", { id: "pg-model", "aria-label": "Model" });
const system = el("textarea", { id: "pg-system", rows: 2, placeholder: "You are a helpful assistant." });
const temperature = el("input", { id: "pg-temperature", type: "number", min: 0, max: 2, step: 0.1, value: "0.7" });
const maxTokens = el("input", { id: "pg-max-tokens", type: "number", min: 1, max: 32768, step: 1, value: "256" });
const topP = el("input", { id: "pg-top-p", type: "number", min: 0, max: 1, step: 0.05, value: "1" });
const stop = el("input", { id: "pg-stop", placeholder: "comma-separated", size: 14 });
const size = el("select", { id: "pg-size" }, ["1024x1024", "768x768", "512x512", "1024x768", "768x1024"].map((s) => el("option", {}, s)));
const prompt = el("textarea", { id: "pg-prompt", rows: 3, placeholder: "Ask something; Ctrl+Enter sends." });
const sendButton = el("button", { id: "pg-send", class: "primary", type: "submit" }, "Send");
const stopButton = el("button", { id: "pg-stop-button", type: "button", disabled: true }, "Stop");
const clearButton = el("button", { id: "pg-clear", type: "button" }, "New chat");
const log = el("div", { id: "pg-chat", class: "chat", "aria-live": "polite" });
const textOnly = el("div", { class: "row" },
  el("div", {}, el("label", { for: "pg-temperature" }, "Temperature"), temperature),
  el("div", {}, el("label", { for: "pg-max-tokens" }, "Max tokens"), maxTokens),
  el("div", {}, el("label", { for: "pg-top-p" }, "top_p"), topP),
  el("div", {}, el("label", { for: "pg-stop" }, "Stop"), stop),
);
const imageOnly = el("div", { class: "row", hidden: true }, el("div", {}, el("label", { for: "pg-size" }, "Size"), size));
const systemBlock = el("div", {}, el("label", { for: "pg-system" }, "System prompt"), system);

// -- the inspector --------------------------------------------------------------------------------
const numbers = el("dl", { id: "pg-numbers", class: "numbers" });
const requestView = el("pre", { id: "pg-request" }, "Nothing sent yet.");
const responseView = el("pre", { id: "pg-response" }, "-");
const codeView = el("pre", { id: "pg-code" }, "-");
const codeTabs = el("div", { class: "tabs", role: "tablist" });
const copyCode = el("button", { id: "pg-copy", type: "button" }, "Copy");
let codeKind = "curl";

function numberRow(name, id, value) {
  return [el("dt", {}, name), el("dd", { id, dataset: { value: value === null ? "" : String(value) } }, value === null ? "-" : String(value))];
}

function showNumbers(n) {
  numbers.replaceChildren(
    ...numberRow("Status", "pg-status", n.status),
    ...numberRow("Tokens in", "pg-tokens-in", n.prompt_tokens),
    ...numberRow("Tokens out", "pg-tokens-out", n.completion_tokens),
    ...numberRow("Time to first token", "pg-ttft", n.ttft_ms === null ? null : n.ttft_ms.toFixed(0) + " ms"),
    ...numberRow("Tokens per second", "pg-tps", n.tokens_per_s === null ? null : n.tokens_per_s.toFixed(1)),
    ...numberRow("Total time", "pg-total", n.total_ms === null ? null : n.total_ms.toFixed(0) + " ms"),
    ...numberRow("Cost", "pg-cost", n.cost === null ? null : money(n.cost)),
    ...numberRow("Request id", "pg-request-id", n.request_id),
  );
  numbers.dataset.ready = n.done ? "yes" : "no";
}

// -- copy as code ---------------------------------------------------------------------------------
function shellQuote(text) {
  return "'" + text.replace(/'/g, "'\\''") + "'";
}

// A JSON value as a Python literal (JSON is one, but for true, false and null).
function py(value, indent = 0) {
  const pad = " ".repeat(indent + 4), end = " ".repeat(indent);
  if (value === null) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (Array.isArray(value)) {
    return value.length ? "[\n" + value.map((v) => pad + py(v, indent + 4)).join(",\n") + ",\n" + end + "]" : "[]";
  }
  if (typeof value === "object") {
    const entries = Object.entries(value);
    if (!entries.length) return "{}";
    return "{\n" + entries.map(([k, v]) => pad + JSON.stringify(k) + ": " + py(v, indent + 4)).join(",\n") + ",\n" + end + "}";
  }
  return JSON.stringify(value);
}

function code(kind, request) {
  const { path, body } = request;
  if (kind === "curl") {
    return [
      `curl ${API_BASE}${path} \\`,
      `  -H "Authorization: Bearer $ARK_API_KEY" \\`,
      `  -H "Content-Type: application/json" \\`,
      `  -d ${shellQuote(JSON.stringify(body, null, 2))}`,
    ].join("\n");
  }
  const image = path.endsWith("/images/generations");
  if (kind === "openai") {
    const { model: name, stream, ...rest } = body;
    const args = Object.entries({ model: name, ...rest }).map(([k, v]) => `    ${k}=${py(v, 4)},`);
    if (image) {
      return [
        "import base64, os", "", "from openai import OpenAI", "",
        `client = OpenAI(base_url=${py(API_BASE + "/v1")}, api_key=os.environ["ARK_API_KEY"])`,
        "result = client.images.generate(", ...args, ")",
        'open("image.png", "wb").write(base64.b64decode(result.data[0].b64_json))',
      ].join("\n");
    }
    delete rest.stream_options;
    const call = Object.entries({ model: name, ...rest }).map(([k, v]) => `    ${k}=${py(v, 4)},`);
    return [
      "import os", "", "from openai import OpenAI", "",
      `client = OpenAI(base_url=${py(API_BASE + "/v1")}, api_key=os.environ["ARK_API_KEY"])`,
      "stream = client.chat.completions.create(", ...call, "    stream=True,", ")",
      "for chunk in stream:",
      "    if chunk.choices:",
      '        print(chunk.choices[0].delta.content or "", end="", flush=True)',
      "print()",
    ].join("\n");
  }
  if (image) return "# The ollama client makes no images: use curl or the openai client.";
  const options = {};
  if (body.temperature !== undefined) options.temperature = body.temperature;
  if (body.top_p !== undefined) options.top_p = body.top_p;
  if (body.max_tokens !== undefined) options.num_predict = body.max_tokens;
  if (body.stop !== undefined) options.stop = body.stop;
  return [
    "import os", "", "from ollama import Client", "",
    `client = Client(host=${py(API_BASE)}, headers={"Authorization": "Bearer " + os.environ["ARK_API_KEY"]})`,
    "for part in client.chat(",
    `    model=${py(body.model, 4)},`,
    `    messages=${py(body.messages, 4)},`,
    `    options=${py(options, 4)},`,
    "    stream=True,",
    "):",
    '    print(part.message.content, end="", flush=True)',
    "print()",
  ].join("\n");
}

function showCode() {
  for (const tab of codeTabs.children) tab.setAttribute("aria-selected", String(tab.dataset.kind === codeKind));
  codeView.textContent = state.last ? code(codeKind, state.last) : "-";
  codeView.dataset.kind = codeKind;
}

for (const [kind, label] of [["curl", "curl"], ["openai", "openai (Python)"], ["ollama", "ollama (Python)"]]) {
  codeTabs.append(el("button", { type: "button", role: "tab", dataset: { kind }, onclick: () => ((codeKind = kind), showCode()) }, label));
}
copyCode.addEventListener("click", () => copy(codeView.textContent, copyCode));

// -- the chat -------------------------------------------------------------------------------------
function bubble(role, text) {
  const node = el("div", { class: "msg " + role, dataset: { role } }, text);
  log.append(node);
  log.scrollTop = log.scrollHeight;
  return node;
}

function currentModel() {
  return state.models.find((m) => m.id === model.value) || { id: model.value, kind: "text" };
}

function chatBody(text) {
  const messages = [];
  if (system.value.trim()) messages.push({ role: "system", content: system.value });
  messages.push(...state.messages, { role: "user", content: text });
  const body = { model: model.value, messages, stream: true, stream_options: { include_usage: true } };
  const number = (input) => (input.value.trim() === "" ? undefined : Number(input.value));
  if (number(temperature) !== undefined) body.temperature = number(temperature);
  if (number(maxTokens) !== undefined) body.max_tokens = Math.round(number(maxTokens));
  if (number(topP) !== undefined) body.top_p = number(topP);
  const stops = stop.value.split(",").map((s) => s.trim()).filter(Boolean);
  if (stops.length) body.stop = stops;
  return body;
}

// Server-sent events, as they arrive: each "data:" payload, parsed; "[DONE]" ends it.
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      yield JSON.parse(data);
    }
    if (done) return;
  }
}

function blank() {
  return { status: null, prompt_tokens: null, completion_tokens: null, ttft_ms: null, tokens_per_s: null, total_ms: null, cost: null, request_id: null, done: false };
}

// A request begins: it is what the inspector and "as code" show, the person's turn goes into the chat, and
// the numbers start over. The assistant's bubble and the numbers are the caller's to fill.
function begin(path, body, text, placeholder) {
  state.last = { path, body };
  requestView.textContent = "POST " + path + "\n" + JSON.stringify(body, null, 2);
  showCode();
  bubble("user", text);
  const answer = bubble("assistant", placeholder);
  const n = blank();
  showNumbers(n);
  return { answer, n };
}

async function chat(text) {
  const body = chatBody(text);
  const path = "/v1/chat/completions";
  const { answer, n } = begin(path, body, text, "");
  const started = performance.now();
  let first = null, reply = "", chunks = 0, last = null;
  state.controller = new AbortController();
  try {
    const response = await send("POST", path, body, state.controller.signal);
    n.status = response.status;
    n.request_id = response.headers.get("x-request-id");
    if (!response.ok) {
      const error = await response.json().catch(() => ({}));
      throw new Error((error.error && error.error.message) || "ARK answered " + response.status);
    }
    for await (const chunk of events(response)) {
      if (chunk.error) throw new Error(chunk.error.message || "the stream failed");
      chunks += 1;
      last = chunk;
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      if (delta && delta.content) {
        if (first === null) first = performance.now();
        reply += delta.content;
        answer.textContent = reply;
        log.scrollTop = log.scrollHeight;
      }
      if (chunk.usage) {
        n.prompt_tokens = chunk.usage.prompt_tokens;
        n.completion_tokens = chunk.usage.completion_tokens;
        n.cost = chunk.usage.cost ?? null;
      }
    }
    const ended = performance.now();
    n.total_ms = ended - started;
    n.ttft_ms = first === null ? null : first - started;
    // (a model that sends every token at once takes under a millisecond: counted as one)
    const generating = first === null ? 0 : Math.max(ended - first, 1) / 1000;
    n.tokens_per_s = n.completion_tokens && generating > 0 ? n.completion_tokens / generating : null;
    state.messages.push({ role: "user", content: text }, { role: "assistant", content: reply });
    responseView.textContent = JSON.stringify({ chunks, content: reply, last_chunk: last }, null, 2);
  } catch (error) {
    answer.classList.add("error");
    answer.textContent = error.name === "AbortError" ? reply + " [stopped]" : error.message;
    responseView.textContent = String(error.message);
  } finally {
    n.done = true;
    showNumbers(n);
  }
}

async function image(text) {
  const body = { model: model.value, prompt: text, n: 1, size: size.value, response_format: "b64_json" };
  const path = "/v1/images/generations";
  const { answer, n } = begin(path, body, text, "Drawing…");
  const started = performance.now();
  try {
    const result = await api("POST", path, body);
    n.status = 200;
    n.total_ms = performance.now() - started;
    const picture = result.data[0];
    answer.replaceChildren(el("img", { src: "data:image/png;base64," + picture.b64_json, alt: text }));
    const shown = { ...result, data: result.data.map((d) => ({ ...d, b64_json: d.b64_json.slice(0, 60) + "… (" + d.b64_json.length + " characters)" })) };
    responseView.textContent = JSON.stringify(shown, null, 2);
  } catch (error) {
    n.status = error.status ?? null;
    answer.classList.add("error");
    answer.textContent = error.message;
    responseView.textContent = error.message;
  } finally {
    n.done = true;
    showNumbers(n);
  }
}

async function submit(event) {
  event.preventDefault();
  const text = prompt.value.trim();
  if (!text || !model.value) return;
  prompt.value = "";
  sendButton.disabled = true;
  stopButton.disabled = false;
  try {
    await (currentModel().kind === "image" ? image(text) : chat(text));
  } finally {
    sendButton.disabled = false;
    stopButton.disabled = true;
    state.controller = null;
  }
}

function modelChanged() {
  const isImage = currentModel().kind === "image";
  textOnly.hidden = isImage;
  systemBlock.hidden = isImage;
  imageOnly.hidden = !isImage;
  prompt.placeholder = isImage ? "Describe the image." : "Ask something; Ctrl+Enter sends.";
}

async function loadModels() {
  try {
    const listed = await api("GET", "/v1/models");
    state.models = listed.data;
    const group = (kind, label) => {
      const items = state.models.filter((m) => (m.kind || "text") === kind);
      return items.length ? el("optgroup", { label }, items.map((m) => el("option", { value: m.id }, m.id))) : null;
    };
    model.replaceChildren(...[group("text", "Chat"), group("image", "Images")].filter(Boolean));
    if (!state.models.length) notice(app, "No model is available to you: ask an administrator.", true);
    modelChanged();
  } catch (error) {
    notice(app, error.message, true);
  }
}

const form = el("form", { id: "pg-form", onsubmit: submit },
  el("div", { class: "row" }, el("div", {}, el("label", { for: "pg-model" }, "Model"), model)),
  systemBlock, textOnly, imageOnly, log,
  el("label", { for: "pg-prompt" }, "Message"), prompt,
  el("div", { class: "row" }, sendButton, stopButton, clearButton),
);
prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) form.requestSubmit();
});
model.addEventListener("change", modelChanged);
stopButton.addEventListener("click", () => state.controller && state.controller.abort());
clearButton.addEventListener("click", () => {
  state.messages = [];
  log.replaceChildren();
});

app.append(
  el("div", { class: "grid2" },
    el("section", { "aria-label": "Chat" }, form),
    el("section", { id: "pg-inspector", "aria-label": "Inspector" },
      el("h2", {}, "Numbers"), numbers,
      el("h2", {}, "Request"), requestView,
      el("h2", {}, "Response"), responseView,
      el("h2", {}, "As code"), el("p", { class: "muted" }, "With your key in ARK_API_KEY (make one under My keys)."),
      codeTabs, codeView, copyCode,
    ),
  ),
);
showNumbers(blank());
showCode();
loadModels();
