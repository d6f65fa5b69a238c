// ecgtrace serve: drop pictures -> POST /api/digitize one at a time -> overlay, 12 lead plots, downloads.
// Plain JS, no libraries: the page must work with no internet at all.
"use strict";

const LAYOUT = [["I", "aVR", "V1", "V4"], ["II", "aVL", "V2", "V5"], ["III", "aVF", "V3", "V6"]];
const COLUMN_S = 2.5;   // each 3x4 column holds 2.5 s
const RECORD_S = 10.0;  // lead II (rhythm strip) spans the full 10 s
const $ = (sel, root = document) => root.querySelector(sel);

const ui = {
  maxBytes: null,
  queue: Promise.resolve(),
  results: [],  // every finished answer, for the curious (and the browser test)
};
window.ecgtraceUI = ui;

// ------------------------------------------------------------------ server info
fetch("/api/health").then(r => r.json()).then(h => {
  ui.maxBytes = h.max_upload_bytes;
  const m = h.methods || {};
  $("#server").textContent = `ecgtrace ${h.version} · stages ${m.stage0}/${m.stage1}/${m.stage2} · ${h.device}`;
  $("#limit").textContent = `Up to ${(h.max_upload_bytes / 1e6).toFixed(0)} MB a picture.`;
}).catch(() => { $("#server").textContent = "server not reachable"; });

// ------------------------------------------------------------------ choosing pictures
const drop = $("#drop");
const input = $("#files");
input.addEventListener("change", () => { addFiles(input.files); input.value = ""; });
["dragenter", "dragover"].forEach(t => drop.addEventListener(t, e => { e.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach(t => drop.addEventListener(t, e => { e.preventDefault(); drop.classList.remove("over"); }));
drop.addEventListener("drop", e => addFiles(e.dataTransfer.files));
// a picture dropped next to the zone must not make the browser leave the page
window.addEventListener("dragover", e => e.preventDefault());
window.addEventListener("drop", e => e.preventDefault());

function addFiles(files) {
  for (const file of Array.from(files || [])) {
    const card = makeCard(file.name);
    // one picture at a time: the server runs one page at a time anyway, so each bar means something
    ui.queue = ui.queue.then(() => process(card, file));
  }
}

function makeCard(title) {
  const card = $("#card-template").content.firstElementChild.cloneNode(true);
  $(".card-title", card).textContent = title;
  $("#results").append(card);
  return card;
}

function setState(card, state, text) {
  card.dataset.state = state;
  $(".status", card).textContent = text;
}

// ------------------------------------------------------------------ upload + wait
async function process(card, file) {
  if (ui.maxBytes && file.size > ui.maxBytes) {
    setState(card, "failed", `failed: ${(file.size / 1e6).toFixed(1)} MB is over the limit of ` +
      `${(ui.maxBytes / 1e6).toFixed(0)} MB; scale the picture down`);
    return;
  }
  const form = new FormData();
  form.append("file", file, file.name);
  form.append("fs", $("#fs").value || "500");
  const bar = $(".bar", card), fill = $(".bar-fill", card);
  const t0 = performance.now();
  let timer = null;
  try {
    const answer = await new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();  // fetch() reports no upload progress
      xhr.open("POST", "/api/digitize");
      xhr.responseType = "json";
      setState(card, "uploading", "uploading 0 %");
      xhr.upload.onprogress = e => {
        if (!e.lengthComputable) return;
        const pct = Math.round(100 * e.loaded / e.total);
        fill.style.width = pct + "%";
        bar.setAttribute("aria-valuenow", pct);
        $(".status", card).textContent = `uploading ${pct} %`;
      };
      xhr.upload.onload = () => {
        bar.classList.add("busy");
        fill.style.width = "";
        setState(card, "digitizing", "digitizing…");
        timer = setInterval(() => {
          $(".status", card).textContent = `digitizing… ${((performance.now() - t0) / 1000).toFixed(1)} s`;
        }, 200);
      };
      xhr.onload = () => {
        const body = xhr.response || {};
        if (xhr.status === 200) resolve(body);
        else reject(new Error(body.error || `the server answered ${xhr.status}`));
      };
      xhr.onerror = () => reject(new Error("the server could not be reached (is `ecgtrace serve` still running?)"));
      xhr.send(form);
    });
    clearInterval(timer);
    const wall = (performance.now() - t0) / 1000;
    answer.wall_s = wall;
    ui.results.push(answer);
    renderResult(card, answer, URL.createObjectURL(file));
    setState(card, "done", `done in ${wall.toFixed(1)} s (pipeline ${answer.timing_s.pipeline.toFixed(1)} s)`);
  } catch (err) {
    clearInterval(timer);
    setState(card, "failed", `failed: ${err.message}`);
  } finally {
    bar.classList.remove("busy");
  }
}
ui.makeCard = makeCard;

// ------------------------------------------------------------------ result
function isFlagged(q) { return q !== undefined && q !== "ok"; }

function renderResult(card, r, originalUrl) {
  const rep = r.report, quality = rep.lead_quality || {};
  const img = $(".overlay", card), link = $(".overlay-link", card), toggle = $(".toggle", card);
  img.src = r.links["overlay.png"];
  link.href = r.links["overlay.png"];
  let showingOriginal = false;
  toggle.hidden = !originalUrl;
  toggle.onclick = () => {
    showingOriginal = !showingOriginal;
    img.src = showingOriginal ? originalUrl : r.links["overlay.png"];
    toggle.textContent = showingOriginal ? "show the overlay" : "show the original";
  };
  img.onerror = () => { if (showingOriginal) { toggle.click(); toggle.hidden = true; } };  // e.g. TIFF

  for (const a of card.querySelectorAll(".dl")) {
    a.href = r.links[a.dataset.kind];
    a.download = r.download_names[a.dataset.kind];
  }

  const facts = $(".facts", card);
  facts.textContent = "";
  const fact = (k, v, cls) => {
    const dt = document.createElement("dt"), dd = document.createElement("dd");
    dt.textContent = k; dd.textContent = v;
    if (cls) dd.className = cls;
    facts.append(dt, dd);
  };
  const num = (v, d = 2) => (v === null || v === undefined) ? "n/a" : Number(v).toFixed(d);
  fact("orientation", `${rep.orientation_name} (confidence ${num(rep.orientation_confidence)})`);
  fact("grid error", `${num(rep.grid_error_px)} px (confidence ${num(rep.grid_confidence)})`);
  fact("method", `stage 0 ${rep.method.stage0} · stage 1 ${rep.method.stage1} · stage 2 ${rep.method.stage2}`);
  if (rep.weights) {
    fact("weights", Object.entries(rep.weights).map(([k, w]) =>
      `${k.replace("stage", "s")} ${w.kind === "classical" ? "classical" : `${w.kind} ${w.name || ""} ${w.sha256 || ""}`.trim()}`
    ).join(" · "));
  }
  fact("time", Object.entries(rep.timing_s).map(([k, v]) => `${k} ${num(v)}`).join(" · ") +
    ` s (round trip ${num(r.wall_s ?? r.timing_s.request, 1)} s)`);
  const doubtful = Object.entries(quality).filter(([, q]) => isFlagged(q));
  fact("leads", doubtful.length ? `check ${doubtful.map(([k, q]) => `${k} (${q})`).join("; ")}`
    : `all 12 read (${r.fs} Hz, ${r.n_samples} samples)`, doubtful.length ? "warn" : "");
  for (const w of rep.warnings || []) fact("warning", w, "warn");

  const range = yRange(r.leads);
  const grid = $(".leads", card), rhythm = $(".rhythm", card);
  grid.textContent = ""; rhythm.textContent = "";
  $(".card-body", card).hidden = false;  // visible first: the canvases take their size from the layout
  LAYOUT.forEach((row, ri) => row.forEach((lead, ci) => {
    grid.append(leadPlot("lead-plot", lead, lead, r.leads[lead], r.fs, ci * COLUMN_S, (ci + 1) * COLUMN_S,
      range, quality[lead]));
  }));
  rhythm.append(leadPlot("rhythm-plot", "II", "II (rhythm, 10 s)", r.leads.II, r.fs, 0, RECORD_S, range, quality.II));
  requestAnimationFrame(() => card.querySelectorAll("canvas").forEach(c => c.redraw()));
}
ui.renderResult = renderResult;

function yRange(leads) {
  let lo = -1.0, hi = 1.0;  // at least +-1 mV, so a flat lead looks flat
  for (const { values } of Object.values(leads)) {
    for (const v of values) if (v !== null) { if (v < lo) lo = v; if (v > hi) hi = v; }
  }
  return [Math.max(lo - 0.15, -5), Math.min(hi + 0.15, 5)];
}

function leadPlot(cls, lead, label, data, fs, t0, t1, range, quality) {
  const box = document.createElement("div");
  box.className = cls + (isFlagged(quality) ? " flagged" : "");
  box.dataset.lead = lead;
  box.dataset.quality = quality || "";
  const canvas = document.createElement("canvas");
  const tag = document.createElement("span");
  tag.className = "lead-label";
  tag.textContent = label + (isFlagged(quality) ? " ?" : "");
  box.append(canvas, tag);
  if (isFlagged(quality)) {
    box.title = `${lead}: ${quality}`;
    const note = document.createElement("span");
    note.className = "lead-note";
    note.textContent = quality;
    box.append(note);
  }
  canvas.redraw = () => drawLead(canvas, data, fs, t0, t1, range);
  return box;
}

function drawLead(canvas, data, fs, t0, t1, [lo, hi]) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  const X = t => (t - t0) / (t1 - t0) * w, Y = v => (hi - v) / (hi - lo) * h;
  // paper grid: small squares 0.04 s x 0.1 mV (drawn only when they are at least 3 px), large 0.2 s x 0.5 mV
  const lines = (step, color) => {
    ctx.strokeStyle = color; ctx.lineWidth = 1; ctx.beginPath();
    for (let t = Math.ceil(t0 / step - 1e-9) * step; t <= t1 + 1e-9; t += step) {
      const x = Math.round(X(t)) + .5; ctx.moveTo(x, 0); ctx.lineTo(x, h);
    }
    const vStep = step * 2.5;  // 0.04 s <-> 0.1 mV, 0.2 s <-> 0.5 mV
    for (let v = Math.ceil(lo / vStep - 1e-9) * vStep; v <= hi + 1e-9; v += vStep) {
      const y = Math.round(Y(v)) + .5; ctx.moveTo(0, y); ctx.lineTo(w, y);
    }
    ctx.stroke();
  };
  if (X(t0 + 0.04) - X(t0) >= 3) lines(0.04, getComputedStyle(document.body).getPropertyValue("--grid-minor") || "#f6d5d5");
  lines(0.2, getComputedStyle(document.body).getPropertyValue("--grid-major") || "#e8a5a5");
  canvas.dataset.points = "0";
  if (!data || data.start_s === null || !data.values.length) {
    ctx.fillStyle = "#b42318"; ctx.font = "12px sans-serif"; ctx.fillText("no trace", w / 2 - 22, h / 2);
    return;
  }
  ctx.strokeStyle = "#111"; ctx.lineWidth = 1.2; ctx.lineJoin = "round"; ctx.beginPath();
  let pen = false, drawn = 0;
  const i0 = Math.max(0, Math.floor((t0 - data.start_s) * fs)), i1 = Math.min(data.values.length, Math.ceil((t1 - data.start_s) * fs) + 1);
  for (let i = i0; i < i1; i++) {
    const v = data.values[i];
    if (v === null) { pen = false; continue; }
    const x = X(data.start_s + i / fs), y = Y(Math.max(lo, Math.min(hi, v)));
    if (pen) ctx.lineTo(x, y); else ctx.moveTo(x, y);
    pen = true; drawn++;
  }
  ctx.stroke();
  canvas.dataset.points = String(drawn);
}

window.addEventListener("resize", () => document.querySelectorAll(".card canvas").forEach(c => c.redraw && c.redraw()));
