// A declared machine drawn by the project's SVG renderer, with its current state and the last
// transition lit from step records. The SVG is the plain declaration; the layout maps states and
// transitions to the SVG's element ids, so moving the highlight never asks the server to render.

import { el, fill } from "./console.js";

const drawings = new Map();

async function drawing(machine) {
  if (!drawings.has(machine)) {
    const load = Promise.all([
      fetch(`diagrams/${encodeURIComponent(machine)}.svg`).then(ok).then((r) => r.text()),
      fetch(`diagrams/${encodeURIComponent(machine)}.json`).then(ok).then((r) => r.json()),
    ]);
    drawings.set(machine, load);
  }
  return drawings.get(machine);
}

function ok(response) {
  if (!response.ok) throw new Error(`diagram: HTTP ${response.status}`);
  return response;
}

// The drawn edges a step took, the way the Python live view (diagrams/live.py) finds them: the
// transition the record names when it carries its index, else every transition with the same
// trigger, source and destination.
export function stepEdges(layout, step) {
  if (!step.handled) return [];
  const pick = (t) => {
    if (t.edges[step.source] !== undefined) return t.edges[step.source];
    if (t.edges["*"] !== undefined && !layout.final.includes(step.source)) return t.edges["*"];
    return undefined;
  };
  if (Number.isInteger(step.transition)) {
    const t = layout.transitions[step.transition];
    const edge = t && pick(t);
    return edge ? [edge] : [];
  }
  const found = new Set();
  for (const t of layout.transitions) {
    const dest = t.dest === null ? step.source : t.dest;
    if (t.trigger !== step.trigger || dest !== step.dest) continue;
    const edge = pick(t);
    if (edge) found.add(edge);
  }
  return [...found];
}

export class MachineView {
  // `machine` is a declared machine's name (`ota.device`, `ota.platform`, `campaign`).
  constructor(machine, title) {
    this.machine = machine;
    this.note = el("p", { class: "note" }, "loading…");
    this.picture = el("div", { class: "picture" });
    this.root = el(
      "figure",
      { class: "machine", dataset: { machine, state: "", edge: "", visited: "" } },
      el("figcaption", {}, title || machine),
      this.note,
      this.picture,
    );
    this.layout = null;
    this.ready = this.load();
  }

  async load() {
    const [svg, layout] = await drawing(this.machine);
    this.layout = layout;
    this.picture.innerHTML = svg;
    this.root.dataset.loaded = "yes";
    if (this.pending) this.apply(...this.pending);
  }

  node(id) {
    return id ? this.picture.querySelector(`[id="${CSS.escape(id)}"]`) : null;
  }

  // Show `state` as current, with the edges of `step` (a StepEvent, or null) lit.
  show(state, step = null) {
    if (!this.layout) {
      this.pending = [state, step];
      return;
    }
    this.apply(state, step);
  }

  apply(state, step) {
    this.pending = null;
    for (const old of this.picture.querySelectorAll(".live-state, .live-edge")) {
      old.classList.remove("live-state", "live-edge");
    }
    const edges = step ? stepEdges(this.layout, step) : [];
    for (const id of edges) this.node(id)?.classList.add("live-edge");
    const known = state && this.layout.states[state] !== undefined;
    if (known) this.node(this.layout.states[state])?.classList.add("live-state");
    const data = this.root.dataset;
    if (state && data.state !== state) {
      data.visited = data.visited ? `${data.visited} ${state}` : state;
    }
    data.state = state || "";
    data.edge = edges.join(" ");
    if (step && step.handled) {
      fill(this.note, `last step: ${step.trigger}: ${step.source} → ${step.dest}; now in `, el("b", {}, state));
    } else if (step) {
      fill(this.note, `last step: ${step.trigger} ignored in ${step.source}; now in `, el("b", {}, state));
    } else {
      fill(this.note, state ? ["now in ", el("b", {}, state)] : "no session yet");
    }
  }

  // A live step of this machine's session: its destination is the new current state.
  step(step) {
    this.show(step.dest, step);
  }
}
