// One campaign: live progress per wave, its machine with the current state lit, its history,
// and the operator's commands. The API's stream of campaign steps tells the page when to read
// the status again; a slow timer reads it too, for progress that moves without a step.

import { $, act, api, el, enc, ensureSession, fill, follow, header, say, throttle, when } from "./console.js";
import { MachineView } from "./diagram.js";

const id = new URL(location.href).searchParams.get("id") || "";
const COUNTS = ["succeeded", "failed", "timed_out", "cancelled", "running", "pending"];
// The trigger each command sends into the campaign's machine: a button is enabled when the
// declaration has a transition on it from the current state (guards may still refuse, and
// the API then answers 422 with the reason).
const TRIGGERS = { pause: "Pause", resume: "Resume", "next-wave": "NextWave", "retry-failed": "RetryFailed", cancel: "Cancel" };

function takes(layout, command, state) {
  if (!layout) return true;
  return layout.transitions.some((t) => t.trigger === TRIGGERS[command] &&
    (t.edges[state] !== undefined || (t.edges["*"] !== undefined && !layout.final.includes(state))));
}

const machine = new MachineView("campaign", "campaign");
let lastStep = null;

function wave(w) {
  const bar = el("div", { class: "bar" });
  for (const key of COUNTS) {
    if (w[key] > 0) bar.append(el("span", { class: key, style: `width: ${(100 * w[key]) / w.size}%`, title: `${key}: ${w[key]}` }));
  }
  const text = COUNTS.filter((k) => w[k] > 0).map((k) => `${w[k]} ${k.replace("_", " ")}`).join(", ");
  return el("div", { class: "wave", id: `wave-${w.number}`, dataset: Object.fromEntries([["number", w.number], ...COUNTS.map((k) => [k.replace("_", ""), w[k]])]) },
    el("div", {}, el("b", {}, `wave ${w.number}`), ` (${w.size} devices): `, el("span", { class: "counts" }, text || "empty")),
    bar);
}

function show(c) {
  fill($("#title"), `Campaign ${c.id}`);
  document.body.dataset.state = c.state;
  fill($("#facts"),
    el("div", {}, el("b", { id: "campaign-state" }, c.state), "state"),
    el("div", {}, el("b", {}, c.product), "product"),
    el("div", {}, el("b", {}, c.version), "version"),
    el("div", {}, el("b", {}, `${c.wave} of ${c.waves.length}`), "wave"),
    c.reason ? el("div", {}, el("b", {}, c.reason), "reason") : null);
  fill($("#waves"), c.waves.map(wave));
  fill($("#history tbody"), [...c.history].reverse().map((h) => el("tr", {}, el("td", {}, when(h.time)), el("td", {}, h.note))));
  for (const button of document.querySelectorAll("button[data-command]")) {
    button.disabled = !takes(machine.layout, button.dataset.command, c.state);
  }
  if (machine.root.dataset.state !== c.state) machine.show(c.state, lastStep && lastStep.dest === c.state ? lastStep : null);
}

const refresh = throttle(async () => {
  try {
    show(await api(`/campaigns/${enc(id)}`));
  } catch (error) {
    say(`cannot read campaign ${id}: ${error.message}`, "error");
  }
}, 250);

function wire() {
  for (const button of document.querySelectorAll("button[data-command]")) {
    button.addEventListener("click", () =>
      act(button, `${button.dataset.command} ${id}`, async () => {
        show(await api(`/campaigns/${enc(id)}/${button.dataset.command}`, { method: "POST" }));
      }));
  }
}

const session = await ensureSession();
header(session);
$("#machine").append(machine.root);
await machine.ready;
wire();
if (!id) {
  say("this page needs ?id=…", "error");
} else {
  refresh();
  await follow({ machine: "campaign" }, (step) => {
    if (step.campaign !== id) return;
    lastStep = step;
    machine.step(step);
    refresh();
  }, { onOpen: refresh }); // what changed before the stream opened
  // Progress inside a wave (a device finishing) is a campaign step too; this timer only
  // covers a stream that reconnects.
  setInterval(() => { if (!machine.layout?.final.includes(document.body.dataset.state)) refresh(); }, 5000);
  document.body.dataset.loaded = "yes";
}
