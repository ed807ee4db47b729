"use strict";
// Cameras page: one card per camera with the anonymized MJPEG preview, stats and live controls.
const LABELS = [["face", "faces"], ["license_plate", "plates"], ["person", "persons"]];
const STATS = [["fps_in", "fps in"], ["fps_out", "fps out"], ["latency_ms", "latency ms"],
               ["frames_dropped", "lost"], ["frames_skipped", "skipped"], ["reconnects", "reconnects"], ["frames_masked_whole", "masked whole"],
               ["encoder", "encoder"], ["readers", "readers"]];
let session = {};
const cards = new Map();

function message(text, isError = false) {
  const node = document.getElementById("message");
  node.textContent = text;
  node.className = isError ? "error" : "okmsg";
}

async function patch(name, body) {
  try {
    const camera = await api("PATCH", `/api/cameras/${encodeURIComponent(name)}`, body);
    update(camera);
    message(`${name}: ${Object.keys(body).join(", ")} changed`);
  } catch (error) { message(`${name}: ${error.message}`, true); refresh(); }  // controls back to the truth
}

function card(camera) {
  const name = camera.name, path = `/api/cameras/${encodeURIComponent(name)}`;
  const badge = el("span", { class: "badge", "data-role": "state" });
  const preview = el("img", { class: "preview", "data-cam": name, alt: `anonymized ${name}`, src: `${path}/mjpeg` });
  const views = el("div", { class: "views" }, preview);
  const stats = el("div", { class: "stats" });
  const protect = LABELS.map(([key, text]) => el("label", {}, el("input", {
    type: "checkbox", name: key, "data-role": "protect", onchange: () => {
      const chosen = [...cardNode.querySelectorAll("[data-role=protect]:checked")].map(box => box.name);
      if (chosen.length) patch(name, { protect: chosen }); else message("protect at least one kind", true);
    } }), text));
  const method = el("select", { "data-role": "method", onchange: e => patch(name, { method: e.target.value }) },
    ...["blur", "pixelate", "fill", "replace"].map(m => el("option", { value: m, text: m })));
  const detection = el("input", { type: "checkbox", "data-role": "detection",
    onchange: e => patch(name, { detection: e.target.checked }) });
  const fps = el("input", { type: "number", min: 1, max: 60, step: 1, "data-role": "fps",
    onchange: e => patch(name, { fps: Number(e.target.value) }) });
  const height = el("input", { type: "number", min: 90, max: 2160, "data-role": "height", placeholder: "source",
    onchange: e => e.target.value ? patch(name, { height: Number(e.target.value) })
                                  : message("height: give a number from 90 to 2160", true) });
  const toggle = el("button", { "data-role": "toggle", onclick: async () => {
    try { update(await api("POST", `${path}/${cardNode.dataset.paused === "true" ? "start" : "stop"}`)); }
    catch (error) { message(error.message, true); }
  } });
  const controls = el("div", { class: "controls" }, ...protect, el("label", {}, "Method ", method),
    el("label", {}, detection, "detection"), el("label", {}, "fps ", fps), el("label", {}, "height ", height), toggle);
  if (session.allow_original_view) {
    controls.append(el("button", { class: "danger", "data-role": "original", onclick: () => toggleOriginal(name, views) },
      "Original view (audited)"));
  }
  const cardNode = el("section", { class: "card", "data-cam": name },
    el("h2", {}, el("span", { text: name }), badge, el("span", { class: "muted", text: `→ ${camera.stream}` })),
    views, stats, controls, el("p", { class: "hint", text: `source: ${camera.source}` }));
  cards.set(name, cardNode);
  return cardNode;
}

function toggleOriginal(name, views) {
  const existing = views.querySelector("img.original");
  if (existing) { existing.src = ""; existing.remove(); return; }
  views.append(el("img", { class: "original", alt: `original ${name}`,
    src: `/api/cameras/${encodeURIComponent(name)}/original.mjpeg` }));
}

function update(camera) {
  const node = cards.get(camera.name);
  if (!node) return;
  const badge = node.querySelector("[data-role=state]");
  badge.textContent = camera.state; badge.className = `badge ${camera.state}`;
  node.dataset.paused = camera.paused;
  node.querySelector("[data-role=toggle]").textContent = camera.paused ? "Start" : "Stop";
  const stats = node.querySelector(".stats");
  stats.replaceChildren(...STATS.flatMap(([key, text]) => [el("span", { text }), el("b", { text: String(camera.stats[key] ?? "–") })]));
  if (document.activeElement?.closest(".card") !== node) {  // never overwrite what the user is typing
    node.querySelector("[data-role=method]").value = camera.method;
    node.querySelector("[data-role=detection]").checked = camera.detection;
    node.querySelector("[data-role=fps]").value = camera.fps;
    node.querySelector("[data-role=height]").value = camera.height ?? "";
    for (const box of node.querySelectorAll("[data-role=protect]")) box.checked = camera.protect.includes(box.name);
  }
}

async function refresh() {
  try {
    const { cameras } = await api("GET", "/api/cameras");
    const grid = document.getElementById("cameras");
    for (const camera of cameras) {
      if (!cards.has(camera.name)) grid.append(card(camera));
      update(camera);
    }
    if (!cameras.length) grid.textContent = "No cameras configured.";
  } catch (error) { message(error.message, true); }
}

function addBody(form) {
  const data = new FormData(form);
  const body = { name: data.get("name"), source: data.get("source"), method: data.get("method"),
                 fps: Number(data.get("fps") || 15), protect: LABELS.map(([k]) => k).filter(k => data.get(k)) };
  if (data.get("height")) body.height = Number(data.get("height"));
  return body;
}

function setupAdd() {
  const form = document.getElementById("add-form"), result = document.getElementById("probe-result");
  const show = r => r.ok ? `${r.source}: ${r.codec} ${r.width}x${r.height} @ ${r.fps ?? "?"} fps` : `${r.source}: ${r.error}`;
  document.getElementById("probe").addEventListener("click", async () => {
    result.textContent = "probing…";
    try { result.textContent = show(await api("POST", "/api/probe", { source: form.source.value })); }
    catch (error) { result.textContent = error.message; }
  });
  form.addEventListener("submit", async event => {
    event.preventDefault();
    result.textContent = "probing and starting…";
    try { const camera = await api("POST", "/api/cameras", addBody(form)); result.textContent = show(camera.probe) + " — added";
          refresh(); }
    catch (error) { result.textContent = error.message; }
  });
}

(async () => {
  session = await setupHeader();
  if (session.admin) {
    document.getElementById("add").hidden = false;
    const save = document.getElementById("save");
    save.hidden = false;
    save.addEventListener("click", async () => {
      try { const r = await api("POST", "/api/config/save"); message(`saved to ${r.saved}: ${r.cameras.join(", ") || "nothing changed"}`); }
      catch (error) { message(error.message, true); }
    });
    setupAdd();
  }
  await refresh();
  setInterval(refresh, 2000);
})();
