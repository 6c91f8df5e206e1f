// medret's viewing-station page: plain JavaScript against /api/v1, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const MAX_UPLOAD = 32 * 1024 * 1024;

const state = {
  file: null,          // the query image as picked
  region: null,        // {x, y, w, h} in fractions, or null for the whole image
  history: [],         // [{title, response, file, region}]
  current: -1,
  selected: new Set(), // case ids picked for "more like these"
  models: [],
};

function status(text) { $("status").textContent = text; }

function showMessage(text) {
  const m = $("message");
  m.textContent = text;
  m.hidden = !text;
}

async function api(path, options) {
  const res = await fetch(path, options);
  let body = null;
  try { body = await res.json(); } catch (_) { /* not JSON */ }
  if (!res.ok) {
    const why = body && body.error ? body.error : res.status + " " + res.statusText;
    throw new Error(why);
  }
  return body;
}

async function loadModels() {
  try {
    const body = await api("/api/v1/models");
    state.models = body.models;
    const sel = $("model");
    sel.textContent = "";
    for (const m of body.models) {
      const o = document.createElement("option");
      o.value = m.name;
      o.textContent = `${m.name} (${m.cases} cases${m.can_encode ? "" : ", by case only"})`;
      sel.appendChild(o);
    }
    const labels = new Set(body.models.flatMap((m) => m.class_names));
    const dl = $("labels");
    dl.textContent = "";
    for (const l of labels) {
      const o = document.createElement("option");
      o.value = l;
      dl.appendChild(o);
    }
    status(body.models.length ? "ready" : "this store has no models");
  } catch (e) {
    showMessage("Cannot list the models: " + e.message);
  }
}

function filters() {
  const f = {};
  for (const [key, id] of [["label", "f-label"], ["view", "f-view"], ["eye", "f-eye"], ["grade", "f-grade"], ["split", "f-split"]]) {
    const v = $(id).value.trim();
    if (v) f[key] = key === "grade" ? Number(v) : v;
  }
  return f;
}

function k() { return Math.max(1, Math.min(500, Number($("k").value) || 12)); }

async function searchImage(file, region) {
  if (!file) return;
  if (file.size > MAX_UPLOAD) {
    showMessage(`${file.name}: ${(file.size / 1048576).toFixed(1)} MB is larger than the 32 MB upload limit.`);
    return;
  }
  const form = new FormData();
  form.append("model", $("model").value);
  form.append("k", String(k()));
  form.append("image", file, file.name);
  for (const [key, v] of Object.entries(filters())) form.append(key, String(v));
  if (region) form.append("region", [region.x, region.y, region.w, region.h].map((v) => v.toFixed(4)).join(","));
  status("searching...");
  try {
    const body = await api("/api/v1/search", { method: "POST", body: form });
    showMessage("");
    const title = (region ? "region of " : "") + file.name;
    push({ title, response: body, file, region });
  } catch (e) {
    showMessage(`${file.name} was not searched: ${e.message}`);
    status("ready");
  }
}

async function searchCases(ids) {
  status("searching...");
  try {
    const body = await api("/api/v1/search/cases", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model: $("model").value, case_ids: ids, k: k(), filters: filters() }),
    });
    showMessage("");
    const cur = state.history[state.current];
    push({ title: "more like " + ids.join(", "), response: body, file: cur ? cur.file : null, region: cur ? cur.region : null });
  } catch (e) {
    showMessage("Search by example failed: " + e.message);
    status("ready");
  }
}

function push(entry) {
  state.history = state.history.slice(0, state.current + 1);
  state.history.push(entry);
  state.current = state.history.length - 1;
  render();
}

function undo() {
  if (state.current > 0) {
    state.current -= 1;
    render();
  }
}

function render() {
  const entry = state.history[state.current];
  $("undo").disabled = state.current <= 0;
  const hist = $("history");
  hist.textContent = "";
  state.history.forEach((h, i) => {
    const li = document.createElement("li");
    li.textContent = h.title;
    if (i === state.current) li.className = "current";
    li.addEventListener("click", () => { state.current = i; render(); });
    hist.appendChild(li);
  });
  if (!entry) return;
  const r = entry.response;
  state.selected.clear();
  $("more-like").disabled = true;
  renderQuery(entry);
  renderSummary(r.summary);
  renderResults(r.results);
  const t = r.timings_ms;
  status(t ? `${r.results.length} results in ${(t.decode + t.encode + t.search + t.explain).toFixed(0)} ms` : `${r.results.length} results`);
}

function renderQuery(entry) {
  const q = entry.response.query || {};
  if (!q.image_png) return; // a search by example keeps the last query image
  $("query-view").hidden = false;
  $("query-img").src = q.image_png;
  $("query-overlay").src = q.overlay_png || q.image_png;
  applyOverlay();
  $("whole-btn").hidden = !entry.region;
  const probs = Object.entries(q.probabilities || {}).sort((a, b) => b[1] - a[1]).slice(0, 3)
    .map(([c, p]) => `${c} ${(p * 100).toFixed(0)}%`).join(", ");
  const box = q.crop_box ? `crop box ${q.crop_box.w}x${q.crop_box.h} px of ${q.input_size}` : "";
  $("query-info").textContent = [entry.region ? "searched by region" : "", box, probs ? "model output: " + probs : ""].filter(Boolean).join(" · ");
  $("region-box").hidden = true;
}

function renderSummary(s) {
  const el = $("summary");
  el.textContent = "";
  if (!s) { el.hidden = true; return; }
  el.hidden = false;
  const notice = document.createElement("div");
  notice.className = "notice";
  notice.textContent = s.notice || "Reference retrieval, not a diagnosis.";
  el.appendChild(notice);
  const counts = document.createElement("div");
  counts.id = "label-counts";
  counts.textContent = s.labels.length
    ? `Among the ${s.results} results: ` + s.labels.map((l) => `${l.label} ${l.count}`).join(", ") + ` · most frequent: ${s.majority}`
    : "No labels among the results.";
  el.appendChild(counts);
}

function renderResults(results) {
  const grid = $("results");
  grid.textContent = "";
  $("result-tools").hidden = results.length === 0;
  const overlays = $("result-overlays").checked;
  for (const r of results) {
    const card = document.createElement("div");
    card.className = "result";
    card.tabIndex = 0;
    card.setAttribute("role", "listitem");
    card.dataset.case = r.case_id;
    const img = document.createElement("img");
    img.alt = "Case " + r.case_id;
    img.loading = "lazy";
    img.dataset.plain = r.thumbnail_url;
    img.dataset.overlay = r.overlay_url;
    img.src = overlays ? r.overlay_url : r.thumbnail_url;
    card.appendChild(img);
    const labels = document.createElement("div");
    labels.className = "labels";
    labels.textContent = r.labels.length ? r.labels.join(", ") : (r.grade !== null && r.grade !== undefined ? "DR grade " + r.grade : "no label");
    card.appendChild(labels);
    const meta = document.createElement("div");
    meta.className = "meta";
    const extra = [r.view, r.eye, r.age ? "age " + r.age : null, r.sex].filter(Boolean).join(" · ");
    meta.textContent = `#${r.rank} · distance ${Number(r.distance).toFixed(3)}` + (extra ? " · " + extra : "");
    card.appendChild(meta);
    if (r.viewer_url) {
      // The case in the PACS's own viewer (medret serve --viewer-url).
      const link = document.createElement("a");
      link.className = "pacs-link";
      link.href = r.viewer_url;
      link.target = "_blank";
      link.rel = "noopener noreferrer";
      link.textContent = "open in the PACS viewer";
      link.addEventListener("click", (ev) => ev.stopPropagation());
      card.appendChild(link);
    }
    card.addEventListener("click", (ev) => { if (ev.shiftKey) toggleSelect(card); else openViewer(r); });
    card.addEventListener("keydown", (ev) => onResultKey(ev, card, r));
    grid.appendChild(card);
  }
}

function toggleSelect(card) {
  const id = card.dataset.case;
  if (state.selected.has(id)) state.selected.delete(id); else state.selected.add(id);
  card.classList.toggle("selected", state.selected.has(id));
  $("more-like").disabled = state.selected.size === 0;
}

function onResultKey(ev, card, r) {
  const cards = [...document.querySelectorAll(".result")];
  const i = cards.indexOf(card);
  const cols = Math.max(1, Math.round($("results").clientWidth / card.clientWidth));
  const move = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: cols, ArrowUp: -cols }[ev.key];
  if (move !== undefined) {
    const next = cards[Math.max(0, Math.min(cards.length - 1, i + move))];
    next.focus();
    ev.preventDefault();
  } else if (ev.key === "Enter") {
    openViewer(r);
    ev.preventDefault();
  } else if (ev.key === " ") {
    toggleSelect(card);
    ev.preventDefault();
  }
}

function applyOverlay() {
  const on = $("overlay-toggle").checked;
  const ov = $("query-overlay");
  ov.hidden = !on;
  ov.style.opacity = $("opacity").value;
}

// Region selection: drag a box on the query image, then search by it.
function setupRegion() {
  const frame = $("query-frame");
  const box = $("region-box");
  let drawing = false;
  let start = null;
  const pos = (ev) => {
    const r = $("query-img").getBoundingClientRect();
    return {
      x: Math.max(0, Math.min(1, (ev.clientX - r.left) / r.width)),
      y: Math.max(0, Math.min(1, (ev.clientY - r.top) / r.height)),
    };
  };
  const place = (a, b) => {
    const r = $("query-img").getBoundingClientRect();
    const x = Math.min(a.x, b.x), y = Math.min(a.y, b.y);
    const w = Math.abs(a.x - b.x), h = Math.abs(a.y - b.y);
    box.style.left = x * r.width + "px";
    box.style.top = y * r.height + "px";
    box.style.width = w * r.width + "px";
    box.style.height = h * r.height + "px";
    return { x, y, w, h };
  };
  frame.addEventListener("pointerdown", (ev) => {
    if ($("region-btn").getAttribute("aria-pressed") !== "true") return;
    drawing = true;
    start = pos(ev);
    box.hidden = false;
    place(start, start);
    frame.setPointerCapture(ev.pointerId);
    ev.preventDefault();
  });
  frame.addEventListener("pointermove", (ev) => { if (drawing) place(start, pos(ev)); });
  frame.addEventListener("pointerup", (ev) => {
    if (!drawing) return;
    drawing = false;
    const region = place(start, pos(ev));
    setRegionMode(false);
    if (region.w < 0.05 || region.h < 0.05) {
      box.hidden = true;
      showMessage("The region is too small; drag a larger box.");
      return;
    }
    const cur = state.history[state.current];
    const file = cur ? cur.file : state.file;
    // The region is of the image as last shown, which may itself be a region.
    const base = cur && cur.region;
    const abs = base
      ? { x: base.x + region.x * base.w, y: base.y + region.y * base.h, w: region.w * base.w, h: region.h * base.h }
      : region;
    searchImage(file, abs);
  });
}

function setRegionMode(on) {
  $("region-btn").setAttribute("aria-pressed", on ? "true" : "false");
  $("query-frame").classList.toggle("drawing", on);
}

// Side-by-side viewer with linked zoom, pan and window/level.
const viewer = { zoom: 1, x: 0, y: 0, images: [null, null] };

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("cannot load " + src));
    img.src = src;
  });
}

async function openViewer(r) {
  const entry = state.history[state.current];
  const q = entry && entry.response.query;
  $("viewer").hidden = false;
  $("v-title").textContent = `Case ${r.case_id} · ${r.labels.join(", ") || (r.grade !== null && r.grade !== undefined ? "DR grade " + r.grade : "")} · distance ${Number(r.distance).toFixed(3)}`;
  $("v-result-caption").textContent = "Case " + r.case_id;
  viewer.zoom = 1; viewer.x = 0; viewer.y = 0;
  try {
    const qsrc = q && q.image_png ? q.image_png : $("query-img").src;
    viewer.images = await Promise.all([qsrc ? loadImage(qsrc) : null, loadImage(r.image_url)]);
  } catch (e) {
    showMessage(e.message);
  }
  drawViewer();
  $("v-close").focus();
}

function drawPane(canvas, img) {
  const ctx = canvas.getContext("2d");
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  if (!img) return;
  const s = Math.min(canvas.width / img.width, canvas.height / img.height) * viewer.zoom;
  const w = img.width * s, h = img.height * s;
  ctx.imageSmoothingEnabled = viewer.zoom < 2;
  ctx.drawImage(img, (canvas.width - w) / 2 + viewer.x, (canvas.height - h) / 2 + viewer.y, w, h);
  // Window/level on the 8-bit grey values as displayed.
  const win = Number($("v-window").value), lev = Number($("v-level").value);
  if (win === 255 && lev === 128) return;
  const data = ctx.getImageData(0, 0, canvas.width, canvas.height);
  const lo = lev - win / 2;
  for (let i = 0; i < data.data.length; i += 4) {
    for (let c = 0; c < 3; c++) {
      const v = ((data.data[i + c] - lo) / win) * 255;
      data.data[i + c] = v < 0 ? 0 : v > 255 ? 255 : v;
    }
  }
  ctx.putImageData(data, 0, 0);
}

function drawViewer() {
  drawPane($("v-query"), viewer.images[0]);
  drawPane($("v-result"), viewer.images[1]);
}

function setupViewer() {
  for (const id of ["v-query", "v-result"]) {
    const c = $(id);
    let drag = null;
    c.addEventListener("wheel", (ev) => {
      viewer.zoom = Math.max(1, Math.min(16, viewer.zoom * (ev.deltaY < 0 ? 1.2 : 1 / 1.2)));
      drawViewer();
      ev.preventDefault();
    }, { passive: false });
    c.addEventListener("pointerdown", (ev) => { drag = { x: ev.clientX - viewer.x, y: ev.clientY - viewer.y }; c.setPointerCapture(ev.pointerId); });
    c.addEventListener("pointermove", (ev) => { if (drag) { viewer.x = ev.clientX - drag.x; viewer.y = ev.clientY - drag.y; drawViewer(); } });
    c.addEventListener("pointerup", () => { drag = null; });
  }
  $("v-window").addEventListener("input", drawViewer);
  $("v-level").addEventListener("input", drawViewer);
  $("v-reset").addEventListener("click", () => {
    viewer.zoom = 1; viewer.x = 0; viewer.y = 0;
    $("v-window").value = 255; $("v-level").value = 128;
    drawViewer();
  });
  $("v-close").addEventListener("click", closeViewer);
}

function closeViewer() {
  $("viewer").hidden = true;
  const focused = document.querySelector(".result");
  if (focused) focused.focus();
}

function setup() {
  const drop = $("drop");
  drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    drop.classList.remove("over");
    const f = ev.dataTransfer.files[0];
    if (f) { state.file = f; searchImage(f, null); }
  });
  drop.addEventListener("keydown", (ev) => { if (ev.key === "Enter") $("file").click(); });
  $("file").addEventListener("change", () => {
    const f = $("file").files[0];
    if (f) { state.file = f; searchImage(f, null); }
  });
  $("overlay-toggle").addEventListener("change", applyOverlay);
  $("opacity").addEventListener("input", applyOverlay);
  $("region-btn").addEventListener("click", () => setRegionMode($("region-btn").getAttribute("aria-pressed") !== "true"));
  $("whole-btn").addEventListener("click", () => {
    const cur = state.history[state.current];
    if (cur && cur.file) searchImage(cur.file, null);
  });
  $("undo").addEventListener("click", undo);
  $("more-like").addEventListener("click", () => searchCases([...state.selected]));
  $("result-overlays").addEventListener("change", () => {
    const on = $("result-overlays").checked;
    for (const img of document.querySelectorAll(".result img")) img.src = on ? img.dataset.overlay : img.dataset.plain;
  });
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && !$("viewer").hidden) { closeViewer(); return; }
    const typing = ["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement.tagName);
    if (typing || !$("viewer").hidden) return;
    if (ev.key === "u" || (ev.key === "z" && (ev.ctrlKey || ev.metaKey))) { undo(); ev.preventDefault(); }
    else if (ev.key === "o") { $("overlay-toggle").checked = !$("overlay-toggle").checked; applyOverlay(); }
    else if (ev.key === "r" && !$("query-view").hidden) { setRegionMode(true); }
    else if (ev.key === "m" && state.selected.size) { searchCases([...state.selected]); }
  });
  setupRegion();
  setupViewer();
  loadModels();
}

document.addEventListener("DOMContentLoaded", setup);
