// zfscratch explore: the page. Plain JavaScript; every number and picture comes from the local server.
"use strict";

const $ = (id) => document.getElementById(id);
const st = { info: null, img: "d0", layer: 1, map: null, label: -1, cls: -1, offset: 0, per: 48,
             occ: null, maps: null, topkTimer: null };

function showError(text) {
  const m = $("msg");
  m.textContent = text;
  m.classList.remove("hidden");
  clearTimeout(showError.t);
  showError.t = setTimeout(() => m.classList.add("hidden"), 8000);
}

async function api(path, params, opts) {
  const q = params ? "?" + new URLSearchParams(params).toString() : "";
  let r;
  try {
    r = await fetch(path + q, opts);
  } catch (e) {
    showError("the server does not answer: " + e);
    throw e;
  }
  let body;
  try { body = await r.json(); } catch (e) { body = { error: r.status + " " + r.statusText }; }
  if (!r.ok || body.error) {
    showError(body.error || (r.status + " " + r.statusText));
    throw new Error(body.error);
  }
  return body;
}

function url(path, params) { return path + "?" + new URLSearchParams(params).toString(); }
function fmt(p) { return (100 * p).toFixed(1) + "%"; }
function name(c) { return st.info.classes[c] ?? String(c); }

// load an <img> from an engine URL; errors (JSON) are shown as messages
async function setImg(el, src) {
  const r = await fetch(src);
  if (!r.ok) {
    let e = r.status + " " + r.statusText;
    try { e = (await r.json()).error || e; } catch (_) { /* not JSON */ }
    showError(e);
    throw new Error(e);
  }
  const blob = await r.blob();
  if (el._objectUrl) URL.revokeObjectURL(el._objectUrl);
  el._objectUrl = URL.createObjectURL(blob);
  await new Promise((ok) => { el.onload = ok; el.onerror = ok; el.src = el._objectUrl; });
  el.dataset.loaded = String(Date.now());
}

// ---------------------------------------------------------------- set-up
async function init() {
  st.info = await api("/api/info");
  const i = st.info;
  $("model").textContent = `${i.weights} · ${i.arch} ${i.size}×${i.size} · ${i.classes.length} classes · ` +
    `${i.data} (${i.num_images} images) · ${i.backend}`;
  const cls = $("cls");
  cls.add(new Option(`all (${i.num_images})`, "-1"));
  i.classes.forEach((c, k) => cls.add(new Option(`${c} (${i.class_counts[k]})`, String(k))));
  const lab = $("label");
  lab.add(new Option("the image's own / predicted", "-1"));
  i.classes.forEach((c, k) => lab.add(new Option(c, String(k))));
  const layers = $("layers");
  i.layers.forEach((l) => {
    const b = document.createElement("button");
    b.type = "button"; b.textContent = String(l.number); b.title = `${l.name} ${l.shape.join("×")}`;
    b.dataset.layer = String(l.number);
    b.addEventListener("click", () => pickLayer(l.number));
    layers.appendChild(b);
  });
  $("occ-size").max = String(i.size);
  $("occ-size").value = String(i.occluder);
  $("sweep-stride").value = String(Math.max(1, Math.round(i.size / 14)));
  $("upload-note").textContent = `PNG, JPEG, GIF, BMP, WebP, TIFF; up to ${i.max_upload_bytes / 1048576} MiB, ` +
    `${i.max_upload_pixels / 1e6} megapixels; kept in memory only`;
  $("filters").src = "/api/filters.png";
  wire();
  st.layer = i.layers.length;
  pollTopk();
  await browse();
  await loadImage("d0");
}

function wire() {
  $("cls").addEventListener("change", () => { st.cls = +$("cls").value; st.offset = 0; browse(); });
  $("prev").addEventListener("click", () => { st.offset = Math.max(0, st.offset - st.per); browse(); });
  $("next").addEventListener("click", () => { st.offset += st.per; browse(); });
  $("label").addEventListener("change", () => { st.label = +$("label").value; refreshScores(); });
  $("file").addEventListener("change", (e) => { if (e.target.files[0]) upload(e.target.files[0]); });
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault(); drop.classList.remove("over");
    if (e.dataTransfer.files[0]) upload(e.dataTransfer.files[0]);
  });
  $("proj-mode").addEventListener("change", () => showProjection());
  const stage = $("stage");
  stage.addEventListener("pointerdown", (e) => { stage.setPointerCapture(e.pointerId); st.dragging = true; moveOcc(e); });
  stage.addEventListener("pointermove", (e) => { if (st.dragging) moveOcc(e); });
  stage.addEventListener("pointerup", () => { st.dragging = false; });
  $("occ-size").addEventListener("input", () => {
    $("occ-size-v").textContent = $("occ-size").value + " px";
    if (st.occ) { st.occ.size = +$("occ-size").value; drawOcc(); occlude(); }
  });
  $("occ-size-v").textContent = $("occ-size").value + " px";
  $("occ-off").addEventListener("click", () => { st.occ = null; drawOcc(); $("occ-out").textContent = "drag on the image to occlude it"; });
  $("sweep").addEventListener("click", sweep);
  $("sweep-clear").addEventListener("click", () => { $("heat").classList.add("hidden"); $("sweep-out").textContent = ""; });
  for (const id of ["shift", "scale", "rotation"]) $(id).addEventListener("input", invariance);
  $("inv-reset").addEventListener("click", () => {
    $("shift").value = "0"; $("scale").value = "1"; $("rotation").value = "0"; invariance();
  });
}

// ---------------------------------------------------------------- dataset browser and uploads
async function browse() {
  const d = await api("/api/dataset", { cls: st.cls, offset: st.offset, limit: st.per });
  if (st.offset >= d.total && d.total > 0) { st.offset = Math.max(0, d.total - st.per); return browse(); }
  $("page").textContent = d.total ? `${d.offset + 1}–${d.offset + d.items.length} of ${d.total}` : "none";
  const box = $("thumbs");
  box.textContent = "";
  for (const it of d.items) {
    const im = document.createElement("img");
    im.src = url("/api/thumb.png", { i: it.index });
    im.title = `#${it.index}: ${name(it.label)}`;
    im.alt = im.title;
    im.dataset.key = "d" + it.index;
    if (im.dataset.key === st.img) im.classList.add("sel");
    im.addEventListener("click", () => loadImage(im.dataset.key));
    box.appendChild(im);
  }
}

async function upload(file) {
  if (file.size > st.info.max_upload_bytes) {
    showError(`${file.name} is ${(file.size / 1048576).toFixed(1)} MiB; the limit is ${st.info.max_upload_bytes / 1048576} MiB`);
    return;
  }
  const form = new FormData();
  form.append("file", file);
  const r = await api("/api/upload", null, { method: "POST", body: form });
  $("label").value = "-1"; st.label = -1;
  await loadImage(r.key);
}

// ---------------------------------------------------------------- the image
async function loadImage(key) {
  st.img = key;
  for (const t of $("thumbs").children) t.classList.toggle("sel", t.dataset.key === key);
  $("heat").classList.add("hidden");
  $("sweep-out").textContent = "";
  await setImg($("img"), url("/api/image.png", { img: key }));
  await refreshScores();
  await pickLayer(st.layer, st.map);
}

async function refreshScores() {
  const p = await api("/api/predict", { img: st.img, label: st.label });
  const ol = $("preds");
  ol.textContent = "";
  for (const t of p.top) {
    const li = document.createElement("li");
    if (t.class === p.true) li.classList.add("true");
    const n = document.createElement("span"); n.className = "name"; n.textContent = t.name;
    const bar = document.createElement("span"); bar.className = "pbar";
    const fill = document.createElement("span"); fill.style.width = (100 * t.p).toFixed(1) + "%";
    bar.appendChild(fill);
    const v = document.createElement("span"); v.className = "num"; v.textContent = fmt(t.p);
    li.append(n, bar, v);
    ol.appendChild(li);
  }
  const li = document.createElement("li");
  li.className = "muted small";
  li.textContent = `P(${name(p.true)}) = ${fmt(p.p_true)}` + (p.label !== null ? ` (label: ${name(p.label)})` : " (upload: tracking the predicted class)");
  ol.appendChild(li);
  st.trueClass = p.true;
  if (st.occ) occlude();
  invariance();
}

// ---------------------------------------------------------------- layers and maps
async function pickLayer(n, keepMap) {
  st.layer = n;
  for (const b of $("layers").children) b.classList.toggle("sel", +b.dataset.layer === n);
  const seq = (st.layerSeq = (st.layerSeq || 0) + 1);
  const m = await api("/api/maps", { img: st.img, layer: n });
  if (seq !== st.layerSeq) return;  // a newer pick (or image) came while this one was computed
  st.maps = m;
  const sprite = url("/api/maps.png", { img: st.img, layer: n });
  const box = $("maps");
  box.textContent = "";
  const D = 44, s = D / m.tile, pitch = m.tile + m.gap;
  const cols = m.ncols, rows = Math.ceil(m.order.length / cols);
  m.order.forEach((mi, j) => {
    const d = document.createElement("div");
    d.className = "tile";
    d.dataset.map = String(mi);
    d.title = `map ${mi}: max ${m.max[j].toPrecision(3)}`;
    d.style.backgroundImage = `url("${sprite}")`;
    d.style.backgroundSize = `${cols * pitch * s}px ${rows * pitch * s}px`;
    d.style.backgroundPosition = `${-(j % cols) * pitch * s}px ${-Math.floor(j / cols) * pitch * s}px`;
    d.style.opacity = String(0.35 + 0.65 * Math.sqrt(m.rel[j]));
    d.addEventListener("click", () => pickMap(mi));
    box.appendChild(d);
  });
  $("maps-note").textContent = `${m.name}: ${m.shape[0]} maps of ${m.shape[1]}×${m.shape[2]}, strongest first ` +
    `(each thumbnail scaled to its own maximum; faded = weak). Receptive field ${m.rf[0]} px.`;
  const want = keepMap != null && keepMap < m.shape[0] ? keepMap : m.order[0];
  await pickMap(want);
}

async function pickMap(mi) {
  st.map = mi;
  for (const t of $("maps").children) t.classList.toggle("sel", +t.dataset.map === mi);
  $("map-title").textContent = `Layer ${st.layer} (${st.maps.name}), map ${mi}`;
  await showProjection();
  showTopk();
  if (st.occ) occlude();
}

async function showProjection() {
  if (st.map == null) return;
  const params = { img: st.img, layer: st.layer, map: st.map, mode: $("proj-mode").value };
  const seq = (st.projSeq = (st.projSeq || 0) + 1);
  const [info] = await Promise.all([api("/api/project", params), setImg($("proj"), url("/api/project.png", params)),
    setImg($("proj-crop"), url("/api/project.png", { ...params, crop: 1 }))]);
  if (seq !== st.projSeq) return;
  const b = info.box, k = 316 / st.info.size, box = $("rfbox");
  box.style.top = b[0] * k + "px"; box.style.left = b[2] * k + "px";
  box.style.height = (b[1] - b[0]) * k + "px"; box.style.width = (b[3] - b[2]) * k + "px";
  box.classList.toggle("hidden", info.value <= 0);
  box.title = `strongest unit (${info.y}, ${info.x}): ${info.value.toPrecision(3)}`;
}

// ---------------------------------------------------------------- top-9
function topkText(s) {
  if (s.state === "ready") return `top-9: ready (${s.total} images)`;
  if (s.state === "error") return "top-9 failed: " + s.message;
  if (s.state === "running") return `top-9: scanning ${s.done}/${s.total} images`;
  return "top-9: preparing";
}

async function pollTopk() {
  const i = await api("/api/info");
  const s = i.topk;
  $("topk-text").textContent = topkText(s);
  $("topk-bar").style.width = (s.total ? 100 * s.done / s.total : 0) + "%";
  if (s.state === "ready" || s.state === "error") {
    if (st.topkWaiting) { st.topkWaiting = false; showTopk(); }
    return;
  }
  setTimeout(pollTopk, 700);
}

async function showTopk() {
  if (st.map == null) return;
  const layer = st.layer, map = st.map;
  const t = await api("/api/topk", { layer, map });
  const out = $("topk-out"), img = $("topk"), list = $("topk-list");
  if (!t.entries) {
    out.textContent = topkText(t.status) + " — this panel fills in when the scan is done; everything else works now.";
    img.classList.add("hidden"); list.textContent = "";
    st.topkWaiting = true;
    return;
  }
  out.textContent = "projecting…";
  await setImg(img, url("/api/topk.png", { layer, map }));
  if (layer !== st.layer || map !== st.map) return;
  img.classList.remove("hidden");
  out.textContent = `${st.maps.name} map ${map}: its ${t.entries.length} strongest activations over the data, ` +
    "one per image (left: DeconvNet projections, right: the patches, cropped to the receptive field).";
  list.textContent = "open: ";
  t.entries.forEach((e, j) => {
    const a = document.createElement("a");
    a.textContent = `${j + 1}. ${name(e.label)}`;
    a.title = `image #${e.index}, activation ${e.value.toPrecision(3)}`;
    a.addEventListener("click", () => loadImage("d" + e.index));
    list.appendChild(a);
  });
}

// ---------------------------------------------------------------- occlusion
function moveOcc(e) {
  const r = $("stage").getBoundingClientRect();
  const k = st.info.size / r.width, size = +$("occ-size").value;
  const cx = (e.clientX - r.left) * k, cy = (e.clientY - r.top) * k;
  st.occ = { x: Math.round(cx - size / 2), y: Math.round(cy - size / 2), size };
  const lim = st.info.size - 1;
  st.occ.x = Math.max(1 - size, Math.min(lim, st.occ.x));
  st.occ.y = Math.max(1 - size, Math.min(lim, st.occ.y));
  drawOcc();
  occlude();
}

function drawOcc() {
  const o = $("occluder");
  if (!st.occ) { o.classList.add("hidden"); return; }
  const k = 316 / st.info.size;
  o.style.left = st.occ.x * k + "px"; o.style.top = st.occ.y * k + "px";
  o.style.width = o.style.height = st.occ.size * k + "px";
  o.classList.remove("hidden");
}

// one request in flight; the newest position waits and replaces older ones
let occBusy = false, occAgain = false;
async function occlude() {
  if (!st.occ) return;
  if (occBusy) { occAgain = true; return; }
  occBusy = true;
  try {
    const o = st.occ;
    const t0 = performance.now();
    const r = await api("/api/occlude", { img: st.img, y: o.y, x: o.x, size: o.size, layer: st.layer,
                                          map: st.map ?? -1, label: st.label });
    const ms = performance.now() - t0;
    $("occ-out").textContent = `P(${name(r.true)}) ${fmt(r.p_true)} (was ${fmt(r.base_p_true)}) · top: ${r.top_name} ` +
      `${fmt(r.top_p)} · ${r.layer} map ${r.map} activity ${r.activity.toPrecision(3)} (was ${r.base_activity.toPrecision(3)})` +
      ` · ${ms.toFixed(0)} ms`;
    $("occ-out").dataset.p = String(r.p_true);
  } catch (e) { /* shown */ }
  occBusy = false;
  if (occAgain) { occAgain = false; occlude(); }
}

async function sweep() {
  const size = +$("occ-size").value, stride = +$("sweep-stride").value;
  const params = { img: st.img, size, stride, layer: st.layer, map: st.map ?? -1, label: st.label };
  $("sweep-out").textContent = "sweeping…";
  $("sweep").disabled = true;
  try {
    const s = await api("/api/sweep", params);
    await setImg($("heat"), url("/api/sweep.png", params));
    $("heat").classList.remove("hidden");
    $("sweep-out").textContent = `${s.positions} positions in ${s.seconds.toFixed(1)} s: P(${name(s.true)}) from ` +
      `${fmt(s.min_p_true)} to ${fmt(s.max_p_true)} (unoccluded ${fmt(s.base_p_true)}); colour = P(true) where the ` +
      "occluder's centre is (blue: class lost, red: kept; see-through where P(true) did not drop)";
  } catch (e) { $("sweep-out").textContent = ""; }
  $("sweep").disabled = false;
}

// ---------------------------------------------------------------- invariance
let invBusy = false, invAgain = false;
async function invariance() {
  const p = { img: st.img, shift: $("shift").value, scale: $("scale").value, rotation: $("rotation").value, label: st.label };
  $("shift-v").textContent = (+p.shift).toFixed(2);
  $("scale-v").textContent = (+p.scale).toFixed(2) + "×";
  $("rotation-v").textContent = p.rotation + "°";
  if (invBusy) { invAgain = true; return; }
  invBusy = true;
  try {
    const [r] = await Promise.all([api("/api/invariance", p),
      setImg($("warp"), url("/api/warp.png", { img: p.img, shift: p.shift, scale: p.scale, rotation: p.rotation }))]);
    $("inv-out").textContent = `P(${name(r.true)}) ${fmt(r.p_true)} · top: ${r.top_name} ${fmt(r.top_p)} · ` +
      `feature distance ${r.first} ${r.dist_first.toFixed(3)}` +
      (r.penultimate ? `, ${r.penultimate} ${r.dist_penultimate.toFixed(3)}` : "");
  } catch (e) { /* shown */ }
  invBusy = false;
  if (invAgain) { invAgain = false; invariance(); }
}

init().catch((e) => showError("could not start the page: " + e));
