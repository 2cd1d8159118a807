// The fleet overview: counts by state and version, one page of devices at a time (the API
// pages on the server, so 10,000 devices cost the same as 50), campaigns, and the forms that
// start a deployment or a campaign. Refreshes itself when steps arrive, at most every
// REFRESH ms: the overview walks every device, so an open page must not keep the API busy.

import { $, act, api, deploy, el, enc, ensureSession, fileBytes, fill, follow, header, query, say, throttle, when } from "./console.js";

const PAGE = 50;
const REFRESH = 2500;
const url = new URL(location.href);
const view = {
  offset: Number(url.searchParams.get("offset") || 0),
  filters: Object.fromEntries(
    ["product", "q", "version", "feature", "state"].map((k) => [k, url.searchParams.get(k) || ""]),
  ),
};

function remember() {
  const params = { ...view.filters, offset: view.offset || "" };
  history.replaceState(null, "", location.pathname + query(params));
}

function devicePage(d) {
  return `device.html${query({ product: d.product, device: d.device })}`;
}

async function overview() {
  const o = await api("/overview");
  fill(
    $("#numbers"),
    el("div", {}, el("b", { id: "n-devices" }, o.devices), "devices"),
    el("div", {}, el("b", {}, o.enabled), "enabled"),
    el("div", {}, el("b", {}, o.online_recently), "seen in the last 5 min"),
    el("div", {}, el("b", {}, Object.values(o.campaigns).reduce((a, b) => a + b, 0)), "campaigns"),
    el("div", {}, el("b", {}, o.products.length), "products"),
  );
  const rows = Object.entries(o.by_state).map(([feature, states]) =>
    el("tr", { dataset: { feature } }, el("td", {}, feature), el("td", {}, el("div", { class: "chips" },
      Object.entries(states).map(([state, n]) => chip(`${state} ${n}`, { feature, state },
        view.filters.feature === feature && view.filters.state === state))))),
  );
  fill($("#by-state tbody"), rows);
  fill($("#by-version"), Object.entries(o.by_version).map(([version, n]) =>
    chip(`${version || "(none)"} ${n}`, { version }, view.filters.version === version && version !== "")));
  const features = Object.keys(o.by_state);
  const select = $("#filters select[name=feature]");
  if (select.options.length === 0) {
    fill(select, el("option", { value: "" }, "ota"), features.filter((f) => f !== "ota").map((f) => el("option", {}, f)));
    select.value = view.filters.feature;
  }
}

function chip(text, filters, on) {
  return el("button", {
    type: "button", class: on ? "chip on" : "chip",
    onclick: () => {
      view.filters = { product: view.filters.product, q: "", version: "", feature: "", state: "", ...filters };
      view.offset = 0;
      showFilters();
      refresh();
    },
  }, text);
}

function showFilters() {
  const form = $("#filters");
  for (const [key, value] of Object.entries(view.filters)) form.elements[key].value = value;
}

async function devices() {
  const page = await api("/devices" + query({ ...view.filters, offset: view.offset, limit: PAGE }));
  const rows = page.items.map((d) =>
    el("tr", { dataset: { device: d.device, product: d.product } },
      el("td", {}, d.product),
      el("td", {}, el("a", { href: devicePage(d) }, d.device)),
      el("td", { class: "version" }, d.version || "—"),
      el("td", { class: "ota" }, d.states.ota || "—"),
      el("td", { class: "muted" }, Object.entries(d.states).filter(([f]) => f !== "ota").map(([f, s]) => `${f}: ${s}`).join(" · ")),
      el("td", {}, when(d.last_seen)),
      el("td", {}, d.enabled ? "yes" : "no"),
    ));
  fill($("#devices tbody"), rows.length ? rows : el("tr", {}, el("td", { colspan: 7, class: "muted" }, "no devices")));
  const last = Math.min(page.offset + page.items.length, page.total);
  $("#page-info").textContent = page.total ? `${page.offset + 1}–${last} of ${page.total}` : "0 of 0";
  $("#page-info").dataset.total = page.total;
  $("#prev").disabled = page.offset === 0;
  $("#next").disabled = last >= page.total;
}

async function campaigns() {
  const page = await api("/campaigns" + query({ limit: 20 }));
  const rows = page.items.map((c) => {
    const total = c.waves.reduce((a, w) => a + w.size, 0);
    const done = c.waves.reduce((a, w) => a + w.succeeded, 0);
    return el("tr", { dataset: { campaign: c.id } },
      el("td", {}, el("a", { href: `campaign.html${query({ id: c.id })}` }, c.id)),
      el("td", {}, c.product), el("td", {}, c.version), el("td", { class: "state" }, c.state),
      el("td", {}, `${c.wave} of ${c.waves.length}`), el("td", {}, `${done}/${total} succeeded`));
  });
  fill($("#campaigns tbody"), rows.length ? rows : el("tr", {}, el("td", { colspan: 6, class: "muted" }, "no campaigns")));
}

async function refresh() {
  remember();
  try {
    await Promise.all([overview(), devices(), campaigns()]);
    document.body.dataset.loaded = "yes";
  } catch (error) {
    say(`cannot load the fleet: ${error.message}`, "error");
  }
}

function names(text) {
  const trimmed = text.trim();
  return trimmed === "*" ? "*" : trimmed.split(/[\s,]+/).filter(Boolean);
}

function wire() {
  $("#filters").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = event.target;
    for (const key of Object.keys(view.filters)) view.filters[key] = form.elements[key].value.trim();
    view.offset = 0;
    refresh();
  });
  $("#filters").addEventListener("reset", () => {
    for (const key of Object.keys(view.filters)) view.filters[key] = "";
    view.offset = 0;
    setTimeout(refresh);
  });
  $("#prev").addEventListener("click", () => { view.offset = Math.max(0, view.offset - PAGE); refresh(); });
  $("#next").addEventListener("click", () => { view.offset += PAGE; refresh(); });
  $("#deploy").addEventListener("submit", (event) => {
    event.preventDefault();
    const f = event.target.elements;
    act($("#deploy-button"), `deploy ${f.version.value} to ${f.product.value}`, async () => {
      await deploy(f.product.value.trim(), f.version.value.trim(), names(f.devices.value), f.image);
      refresh();
    });
  });
  $("#campaign").addEventListener("submit", (event) => {
    event.preventDefault();
    const f = event.target.elements;
    act($("#campaign-button"), "start the campaign", async () => {
      const product = f.product.value.trim();
      const version = f.version.value.trim();
      const bytes = await fileBytes(f.image);
      if (bytes) await api(`/firmware/${enc(product)}/${enc(version)}`, { method: "PUT", body: bytes });
      const waves = f.waves.value.split("\n").map((line) => names(line)).filter((w) => Array.isArray(w) && w.length);
      const status = await api("/campaigns", { method: "POST", json: { product, version, waves, settings: { advance: f.advance.value } } });
      location.href = `campaign.html${query({ id: status.id })}`;
    });
  });
}

const session = await ensureSession();
header(session);
showFilters();
wire();
await refresh();
// No read when the stream opens (the campaign and device pages do one): the counts walk the whole
// fleet, and a step that fell between the first read and the stream shows with the next one.
follow({ handled_only: true }, throttle(refresh, REFRESH));
