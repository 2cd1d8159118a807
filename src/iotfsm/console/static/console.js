// What every console page shares: calls to /api/v1, the login, the live step stream, and a few
// DOM helpers. No framework and no build step: the browser loads these modules as they are.

const API = "/api/v1";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// One call to the API. The session cookie authenticates it; a write also sends the console
// header the API requires of cookie-authenticated writes (its CSRF guard).
export async function api(path, { method = "GET", json, body, contentType } = {}) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-Iotfsm-Console"] = "1";
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (body !== undefined) {
    headers["Content-Type"] = contentType || "application/octet-stream";
  }
  const response = await fetch(API + path, { method, headers, body, credentials: "same-origin" });
  if (response.status === 204) return null;
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = (data && data.error) || {};
    throw new ApiError(response.status, error.code || "error", error.message || `HTTP ${response.status}`);
  }
  return data;
}

export function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value === undefined || value === null || value === "") continue;
    if (Array.isArray(value)) value.forEach((v) => search.append(key, v));
    else search.append(key, String(value));
  }
  const text = search.toString();
  return text ? "?" + text : "";
}

export function enc(name) {
  return encodeURIComponent(name);
}

// el("a", {href: "x", class: "y"}, "text", child...): a small hyperscript for the pages.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function $(selector, root = document) {
  return root.querySelector(selector);
}

export function fill(node, ...children) {
  node.replaceChildren();
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function when(seconds) {
  if (seconds === null || seconds === undefined) return "never";
  const date = new Date(seconds * 1000);
  return date.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

// A status line at the top of the page: what an action did, or why the API refused it.
export function say(message, kind = "ok") {
  const line = $("#status");
  if (!line) return;
  line.textContent = message;
  line.className = "status " + kind;
  line.dataset.kind = kind;
}

// Runs an operator action: disables the button meanwhile, says what happened.
export async function act(button, what, action) {
  if (button) button.disabled = true;
  try {
    const result = await action();
    say(what + ": done", "ok");
    return result;
  } catch (error) {
    say(`${what}: ${error.message}`, "error");
    return undefined;
  } finally {
    if (button) button.disabled = false;
  }
}

// Calls `fn` at most once per `ms`, and once more after the last request in a burst: a page
// that refreshes on every step of a busy fleet asks the API a few times a second, not hundreds.
export function throttle(fn, ms) {
  let timer = null;
  let again = false;
  const run = async () => {
    again = false;
    try {
      await fn();
    } finally {
      timer = setTimeout(() => {
        timer = null;
        if (again) run();
      }, ms);
    }
  };
  return () => {
    if (timer === null) run();
    else again = true;
  };
}

// The login: a token in the URL's fragment (`iotfsm demo --web` prints such a link; a fragment
// never reaches a server log) or typed into the form becomes the API's session cookie.
async function login(token) {
  await api("/session", { method: "POST", json: { token } });
}

export async function ensureSession() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const token = fragment.get("token");
  if (token) {
    history.replaceState(null, "", location.pathname + location.search);
    try {
      await login(token);
    } catch (error) {
      say(`the token in the link was refused: ${error.message}`, "error");
    }
  }
  try {
    return await api("/session");
  } catch (error) {
    if (error.status !== 401) throw error;
  }
  return new Promise((resolve) => showLogin(resolve));
}

function showLogin(resolve) {
  const input = el("input", { id: "login-token", type: "password", autocomplete: "off", placeholder: "iotfsm_…" });
  const problem = el("p", { class: "status error", id: "login-error" });
  const form = el(
    "form",
    { id: "login", class: "login" },
    el("h2", {}, "Sign in"),
    el("p", {}, "Paste an API token (", el("code", {}, "iotfsm api-token create"), ")."),
    input,
    el("button", { type: "submit" }, "Sign in"),
    problem,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await login(input.value.trim());
      form.remove();
      resolve(await api("/session"));
    } catch (error) {
      problem.textContent = error.message;
    }
  });
  document.body.prepend(form);
  input.focus();
}

export async function logout() {
  await api("/session", { method: "DELETE" });
  location.reload();
}

// The API's live stream of step records. EventSource reconnects by itself and sends the last
// id it saw, so the API replays what was missed while it is still in its ring. A first connect
// has no id to send: a page that also shows recent steps reads them once the stream is open
// (`onOpen`), so no step falls between the two; it resolves when that first read is done, or
// after OPEN_WAIT ms without a stream (the page then works from what it read).
const OPEN_WAIT = 3000;

export function follow(params, onStep, { onDropped, onOpen } = {}) {
  const source = new EventSource(API + "/steps/stream" + query(params), { withCredentials: true });
  source.addEventListener("step", (event) => onStep(JSON.parse(event.data)));
  source.addEventListener("dropped", (event) => onDropped && onDropped(JSON.parse(event.data)));
  source.addEventListener("error", () => document.body.classList.remove("live"));
  window.addEventListener("beforeunload", () => source.close());
  return new Promise((resolve) => {
    let first = true;
    const primed = async () => {
      if (!first) return;
      first = false;
      try {
        if (onOpen) await onOpen();
      } finally {
        resolve(source);
      }
    };
    source.addEventListener("open", () => {
      document.body.classList.add("live");
      primed();
    });
    setTimeout(primed, OPEN_WAIT);
  });
}

export function header(session) {
  const bar = $("header.top");
  if (!bar) return;
  const who = el("span", { id: "who" });
  if (session) {
    fill(who, `signed in as ${session.name} (${(session.scopes || []).join(", ")}) `,
      el("button", { class: "link", type: "button", onclick: logout }, "sign out"));
  }
  fill(bar, el("span", { class: "live-dot", title: "live stream connected" }),
    el("a", { class: "brand", href: "./" }, "iotfsm console"), el("a", { href: "./" }, "fleet"), who);
}

// No favicon request: the console's pages ask the server for nothing they do not use.
if (!document.querySelector("link[rel=icon]")) {
  document.head.append(el("link", { rel: "icon", href: "data:," }));
}

// Reads a picked file as bytes for an octet-stream upload.
export async function fileBytes(input) {
  const file = input.files && input.files[0];
  return file ? new Uint8Array(await file.arrayBuffer()) : null;
}

// Deploys firmware: uploads the image first when one is picked (the API keeps images by product
// and version), then creates the deployment for the given devices ("*" for the whole product).
export async function deploy(product, version, devices, imageInput) {
  const bytes = await fileBytes(imageInput);
  if (bytes) {
    await api(`/firmware/${enc(product)}/${enc(version)}`, { method: "PUT", body: bytes });
  }
  return api("/deployments", { method: "POST", json: { product, version, devices } });
}
