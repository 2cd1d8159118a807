// One device: its facts, the operator's actions on it, each feature's machine with the live
// state and last transition lit, and the recent steps. Everything live comes from the API's
// step stream for this device; the facts are re-read (throttled) when a step arrives.

import { $, act, api, deploy, el, enc, ensureSession, fill, follow, header, query, say, throttle, when } from "./console.js";
import { MachineView } from "./diagram.js";

const params = new URL(location.href).searchParams;
const product = params.get("product") || "";
const name = params.get("device") || "";
const base = `/devices/${enc(product)}/${enc(name)}`;
const TRACE = 200;

const views = new Map(); // "ota.platform" -> MachineView
let detail = null;
let features = [];

// The platform's steps name the feature (`ota`); the steps of a device running in this process
// name its own machine (`ota.device`, see api/device_steps.py).
function roleOf(step) {
  return step.role || (step.machine.endsWith(".device") ? "device" : "platform");
}

function featureOf(step) {
  return step.machine.endsWith(".device") ? step.machine.slice(0, -".device".length) : step.machine;
}

function sectionFor(feature) {
  let section = $(`details[data-feature="${CSS.escape(feature)}"]`);
  if (!section) {
    const roles = el("div", { class: "roles" });
    // Two diagrams side by side are small on a laptop: one button stacks them full width.
    const widen = el("button", { type: "button", class: "link widen", onclick: (event) => {
      event.preventDefault();
      widen.textContent = roles.classList.toggle("wide") ? "side by side" : "full width";
    } }, "full width");
    section = el("details", { dataset: { feature }, open: feature === "ota" },
      el("summary", {}, feature, el("span", { class: "muted summary-state" }), " ", widen),
      roles);
    $("#machines").append(section);
  }
  return section;
}

function view(feature, role) {
  const key = `${feature}.${role}`;
  if (!views.has(key)) {
    const title = role === "platform" ? `${feature}: the platform's session` : `${feature}: the device's own machine`;
    const v = new MachineView(key, title);
    v.root.id = `machine-${feature}-${role}`;
    const roles = $(".roles", sectionFor(feature));
    if (role === "device") roles.prepend(v.root);
    else roles.append(v.root);
    views.set(key, v);
  }
  return views.get(key);
}

function facts(d) {
  const fw = d.firmware || {};
  fill($("#title"), `${d.device} `, el("span", { class: "muted" }, `(${d.product})`));
  fill($("#facts"),
    el("div", {}, el("b", { id: "version" }, d.version || "—"), "version reported"),
    el("div", {}, el("b", { id: "ota-state" }, d.states.ota || "—"), "ota (platform)"),
    el("div", {}, el("b", { id: "firmware" }, fw.target ? `${fw.target} ${fw.percent}%` : "—"), `target ${fw.state || ""}`),
    el("div", {}, el("b", {}, d.log_level ?? "—"), "log level"),
    el("div", {}, el("b", {}, d.enabled ? "yes" : "no"), "enabled"),
    el("div", {}, el("b", {}, when(d.last_seen)), "last seen"));
  $("#toggle-enabled").textContent = d.enabled ? "disable" : "enable";
  // The picker shows the device's level when the page opens; later reads leave it alone,
  // or a step arriving while the operator chooses would undo the choice.
  const picker = $("#log-level-select");
  if (!picker.dataset.shown) {
    picker.value = String(d.log_level ?? 0);
    picker.dataset.shown = "yes";
  }
  document.body.dataset.version = d.version || "";
}

async function load() {
  detail = await api(base);
  facts(detail);
  for (const [feature, state] of Object.entries(detail.states)) {
    const v = view(feature, "platform");
    if (v.root.dataset.state !== state && !v.live) v.show(state);
    const summary = $(".summary-state", sectionFor(feature));
    summary.textContent = ` — ${state}`;
  }
}

function traceRow(step) {
  return el("tr", { dataset: { seq: step.seq, role: roleOf(step), machine: featureOf(step), from: step.source, to: step.dest } },
    el("td", {}, step.seq), el("td", {}, when(step.time)), el("td", {}, roleOf(step)), el("td", {}, featureOf(step)),
    el("td", {}, step.handled ? `${step.source} → ${step.dest}` : `${step.source} (ignored)`),
    el("td", {}, step.trigger), el("td", {}, (step.effects || []).join(", ")));
}

const seen = new Set();

function onStep(step) {
  if (seen.has(step.seq)) return; // the recent page and the stream may overlap
  seen.add(step.seq);
  const body = $("#trace tbody");
  const later = [...body.rows].find((row) => Number(row.dataset.seq) < step.seq);
  body.insertBefore(traceRow(step), later || null);
  while (body.rows.length > TRACE) body.deleteRow(body.rows.length - 1);
  const v = view(featureOf(step), roleOf(step));
  // The recent steps and the live ones can arrive interleaved: only a newer step moves the
  // highlight.
  if (step.seq > (v.seq || 0)) {
    v.seq = step.seq;
    v.live = true;
    v.step(step);
  }
  refresh();
}

async function logs() {
  const page = await api(`${base}/logs${query({ limit: 50, offset: 0 })}`);
  fill($("#logs tbody"), page.items.map((l) =>
    el("tr", {}, el("td", {}, l.seq), el("td", {}, when(l.received_at)), el("td", {}, l.level), el("td", {}, l.text))));
}

const refresh = throttle(async () => {
  try {
    await load();
  } catch (error) {
    say(`cannot read the device: ${error.message}`, "error");
  }
}, 300);

function wire() {
  $("#deploy").addEventListener("submit", (event) => {
    event.preventDefault();
    const f = event.target.elements;
    act($("#deploy-button"), `deploy ${f.version.value} to ${name}`, () =>
      deploy(product, f.version.value.trim(), [name], f.image));
  });
  $("#cancel-ota").addEventListener("click", (event) =>
    act(event.target, "cancel OTA", () => api(`${base}/ota/cancel`, { method: "POST" })));
  $("#log-level").addEventListener("submit", (event) => {
    event.preventDefault();
    const level = Number($("#log-level-select").value);
    act($("#log-level-button"), `set log level ${level}`, () => api(`${base}/log-level`, { method: "PUT", json: { level } }));
  });
  $("#push-config").addEventListener("click", (event) =>
    act(event.target, "push config", () => api(`${base}/config/push`, { method: "POST" })));
  $("#toggle-enabled").addEventListener("click", (event) => {
    const verb = detail && detail.enabled ? "disable" : "enable";
    act(event.target, verb, async () => { await api(`${base}/${verb}`, { method: "POST" }); refresh(); });
  });
  $("#product-config").addEventListener("submit", (event) => {
    event.preventDefault();
    act($("#config-button"), `save config for ${product}`, async () => {
      let payload;
      try {
        payload = JSON.parse($("#config-payload").value);
      } catch (error) {
        throw new Error(`the config is not JSON: ${error.message}`);
      }
      return api(`/products/${enc(product)}/config`, { method: "PUT", json: { payload } });
    });
  });
  $("#logs-refresh").addEventListener("click", () => logs().catch((error) => say(error.message, "error")));
}

const session = await ensureSession();
header(session);
wire();
if (!product || !name) {
  say("this page needs ?product=…&device=…", "error");
} else {
  try {
    const [, config] = await Promise.all([
      load(),
      api(`/products/${enc(product)}/config`).catch(() => null),
      logs(),
    ]);
    if (config && config.payload) $("#config-payload").value = JSON.stringify(config.payload);
  } catch (error) {
    say(`cannot read the device: ${error.message}`, "error");
  }
  await follow({ product, device: name }, onStep, {
    // Steps were lost (a slow page): the stream is no longer the whole story, so the next
    // read of the device sets each platform diagram from the state the API reports.
    onDropped: () => {
      for (const v of views.values()) v.live = false;
      refresh();
    },
    onOpen: async () => {
      try {
        const recent = await api(`${base}/steps${query({ limit: 100 })}`);
        for (const step of recent.items) onStep(step);
      } catch (error) {
        say(`cannot read the recent steps: ${error.message}`, "error");
      }
    },
  });
  document.body.dataset.loaded = "yes";
}
