// The archive page: draws everything from the JSON API of `evo ui` (evo/browse/web.py).
// Plain DOM and SVG, no framework and no build step; every text from the archive is set with
// textContent, never as HTML, since hypotheses and code are written by an LLM.
"use strict";

const POLL_MS = 3000;
const SVG_NS = "http://www.w3.org/2000/svg";
const VIRIDIS_R = ["#fde725", "#b5de2b", "#6ece58", "#35b779", "#1f9e89", "#26828e", "#31688e", "#3e4989", "#482878", "#440154"];
const state = { run: null, version: null, selected: null, tab: "diff", shown: 100, lineageFor: null };

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  return fill(node, attrs, children);
}

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  return fill(node, attrs, children);
}

function fill(node, attrs, children) {
  for (const [key, value] of Object.entries(attrs)) {
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== null && value !== undefined && value !== false) node.setAttribute(key, value);
  }
  for (const child of children.flat(Infinity)) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

async function api(path) {
  const response = await fetch(path, { cache: "no-store" });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

// ------------------------------------------------------------------ formatting

const bpb = (v) => (v === null || v === undefined ? "-" : v.toFixed(4));
const signed = (v) => (v === null || v === undefined ? "" : (v > 0 ? "+" : "−") + Math.abs(v).toFixed(4));
const firstLine = (text, width) => {
  const line = (text || "").trim().split("\n")[0];
  return width && line.length > width ? line.slice(0, width - 1) + "…" : line;
};

function count(v) {
  if (v === null || v === undefined) return "-";
  for (const [scale, suffix] of [[1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "K"]]) {
    if (Math.abs(v) >= scale) return +(v / scale).toPrecision(3) + suffix;
  }
  return String(+v.toPrecision(3));
}

function score(ind) {
  if (ind.val_bpb === null) return "-";
  return `${bpb(ind.val_bpb)}${ind.sd !== null ? " ± " + ind.sd.toFixed(4) : ""} (n=${ind.n})`;
}

// `#12 3f2a9c1d`, as the CLI prints it; a rejected proposal has no hash, so only its number
const label = (ind) => (ind.short.startsWith("#") ? ind.short : `#${ind.id} ${ind.short}`);

function idLink(ind) {
  return el("a", { class: "id", title: firstLine(ind.hypothesis), onclick: (e) => { e.stopPropagation(); select(ind.id); } },
    label(ind));
}

function edges(dim) {
  const out = [];
  for (let i = 0; i <= dim.bins; i++) {
    const f = i / dim.bins;
    out.push(dim.log ? dim.lo * Math.pow(dim.hi / dim.lo, f) : dim.lo + (dim.hi - dim.lo) * f);
  }
  return out;
}

// ------------------------------------------------------------------ heatmap

function drawHeatmap(run) {
  const box = $("#heatmap");
  box.textContent = "";
  const s = run.summary;
  $("#archive-note").textContent = s.cells ? `${s.elites} of ${s.cells} cells filled · colour: elite val_bpb (brighter is better)` : "";
  if (!run.dims.length) {
    box.append(el("p", { class: "dim" }, "No grid yet: it is centred on the seed once the seed's trials have measured the noise."));
    return;
  }
  const dx = run.dims[0];
  const dy = run.dims[1] || { name: "", bins: 1, lo: 0, hi: 1, log: false };
  const best = new Map(); // "x,y" -> best elite there (further descriptors are folded)
  for (const e of run.elites) {
    const key = `${e.index[0]},${e.index[1] || 0}`;
    if (e.val_bpb !== null && (!best.has(key) || e.val_bpb < best.get(key).val_bpb)) best.set(key, e);
  }
  const values = [...best.values()].map((e) => e.val_bpb);
  const lo = Math.min(...values), hi = Math.max(...values);
  const m = { l: 64, r: 8, t: 8, b: 58 };
  const W = 560, cw = (W - m.l - m.r) / dx.bins, ch = Math.min(cw, 320 / dy.bins), H = m.t + m.b + ch * dy.bins;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "archive heatmap" });
  for (let x = 0; x < dx.bins; x++) {
    for (let y = 0; y < dy.bins; y++) {
      const e = best.get(`${x},${y}`);
      const px = m.l + x * cw, py = m.t + (dy.bins - 1 - y) * ch;
      if (!e) {
        root.append(svg("rect", { x: px, y: py, width: cw, height: ch, class: "empty" }));
        continue;
      }
      const t = hi > lo ? (e.val_bpb - lo) / (hi - lo) : 0;
      const rect = svg("rect", { x: px, y: py, width: cw, height: ch, class: "cell", fill: VIRIDIS_R[Math.min(9, Math.floor(t * 10))],
        "data-cell": e.cell, "data-id": e.id, onclick: () => select(e.id) },
        svg("title", {}, `cell ${e.cell} · ${label(e)} · ${score(e)}\n${firstLine(e.hypothesis)}`));
      root.append(rect);
      if (cw >= 38) {
        root.append(svg("text", { x: px + cw / 2, y: py + ch / 2 + 4, "text-anchor": "middle", "pointer-events": "none",
          style: `font-size:${cw >= 50 ? 10 : 8.5}px;fill:${t > 0.5 ? "#fff" : "#111"}` }, bpb(e.val_bpb)));
      }
    }
  }
  const xe = edges(dx), ye = edges(dy);
  xe.forEach((v, i) => {
    const px = m.l + i * cw;
    root.append(svg("text", { x: px, y: m.t + dy.bins * ch + 12, transform: `rotate(-40 ${px} ${m.t + dy.bins * ch + 12})`,
      "text-anchor": "end" }, count(v)));
  });
  if (run.dims[1]) {
    ye.forEach((v, i) => root.append(svg("text", { x: m.l - 4, y: m.t + (dy.bins - i) * ch + 4, "text-anchor": "end" }, count(v))));
  }
  const scale = (d) => `${d.name}${d.log ? " (log scale)" : ""}`;
  root.append(svg("text", { x: m.l + (W - m.l - m.r) / 2, y: H - 4, "text-anchor": "middle" }, scale(dx)));
  if (run.dims[1]) {
    const cy = m.t + (dy.bins * ch) / 2;
    root.append(svg("text", { x: 12, y: cy, transform: `rotate(-90 12 ${cy})`, "text-anchor": "middle" }, scale(dy)));
  }
  box.append(root);
  markSelected();
}

function markSelected() {
  document.querySelectorAll("rect.cell.selected").forEach((r) => r.classList.remove("selected"));
  if (state.selected !== null) {
    document.querySelectorAll(`rect.cell[data-id="${state.selected}"]`).forEach((r) => r.classList.add("selected"));
  }
}

// ------------------------------------------------------------------ progress chart

function dots(points, x, y, r) {
  return points.map((p) => `M${(x(p[0]) - r).toFixed(1)} ${y(p[1]).toFixed(1)}a${r} ${r} 0 1 0 ${2 * r} 0a${r} ${r} 0 1 0 ${-2 * r} 0`).join("");
}

function drawProgress(p) {
  const box = $("#progress");
  box.textContent = "";
  const ok = p.points.filter((q) => q[1] !== null);
  const failed = p.points.filter((q) => q[1] === null);
  $("#progress-note").textContent = `${p.trials} trials, ${failed.length} failed · dots: one trial each (green: kept) · line: running best (mean over seeds) · ✗ failed`;
  if (!ok.length) {
    box.append(el("p", { class: "dim" }, "No finished trial with a score yet."));
    return;
  }
  const sorted = ok.map((q) => q[1]).sort((a, b) => a - b);
  const lo = Math.min(sorted[0], ...p.best.map((b) => b[1]));
  // clipped at the 95th percentile, as in `evo plot`: a broken model scoring 8 bpb must not flatten the rest
  const hi = Math.max(sorted[Math.floor(0.95 * (sorted.length - 1))], ...p.best.map((b) => b[1]));
  const pad = Math.max(hi - lo, 1e-3) * 0.06, top = hi + 2 * pad, bottom = lo - 3 * pad;
  const W = 1100, H = 330, m = { l: 56, r: 12, t: 12, b: 34 };
  const n = Math.max(p.trials - 1, 1);
  const x = (o) => m.l + (o / n) * (W - m.l - m.r);
  const y = (v) => m.t + (1 - (Math.min(v, top) - bottom) / (top - bottom)) * (H - m.t - m.b);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "progress chart" });
  for (let i = 0; i <= 4; i++) {
    const v = lo + ((top - lo) * i) / 4;
    root.append(svg("line", { x1: m.l, x2: W - m.r, y1: y(v), y2: y(v), stroke: "#eef0f2" }),
      svg("text", { x: m.l - 6, y: y(v) + 4, "text-anchor": "end" }, v.toFixed(3)));
  }
  root.append(svg("text", { x: m.l + (W - m.l - m.r) / 2, y: H - 4, "text-anchor": "middle" }, "trial (in the order trials finished)"));
  root.append(svg("path", { d: dots(ok.filter((q) => !q[3]), x, y, 2.2), fill: "#a8adb3", "fill-opacity": 0.6 }));
  root.append(svg("path", { d: dots(ok.filter((q) => q[3]), x, y, 2.8), fill: "#2a9d55", "fill-opacity": 0.8 }));
  if (failed.length) {
    const fy = y(lo - 2 * pad); // a strip under the running best, where no trial can be
    const d = failed.map((q) => `M${x(q[0]) - 3} ${fy - 3}l6 6m0 -6l-6 6`).join("");
    root.append(svg("path", { d, stroke: "#d1495b", "stroke-width": 1.2 }));
  }
  let d = `M${x(p.best[0][0])} ${y(p.best[0][1])}`;
  for (const [order, value] of p.best.slice(1)) d += `H${x(order)}V${y(value)}`;
  d += `H${x(p.trials - 1)}`;
  root.append(svg("path", { d, fill: "none", stroke: "#1d3557", "stroke-width": 2 }));
  for (const imp of p.improvements) {
    root.append(svg("circle", { cx: x(imp.order), cy: y(imp.value), r: 5, class: "imp", fill: "none", stroke: "#1d3557",
      "stroke-width": 1.5, "pointer-events": "all", onclick: () => select(imp.id) },
      svg("title", {}, `${label(imp)} · ${bpb(imp.value)}\n${firstLine(imp.hypothesis)}`)));
  }
  box.append(root);
}

// ------------------------------------------------------------------ one individual

// `ref`: an individual's number, or a prefix of its commit or source hash (as in the address)
async function select(ref, quiet = false) {
  let d;
  try {
    d = await api("/api/individual/" + encodeURIComponent(ref));
  } catch (err) {
    if (!quiet) alert(err.message);
    return;
  }
  // the page asks by number (a rejected proposal has no hash); the address names it by its hash
  state.selected = d.id;
  if (!quiet) history.replaceState(null, "", "#" + (d.short.startsWith("#") ? d.id : d.short));
  $("#detail-empty").hidden = true;
  $("#detail").hidden = false;
  $("#d-title").textContent = label(d) + (d.elite_cell ? ` · elite of cell ${d.elite_cell}` : "");
  $("#hypothesis").textContent = d.hypothesis || "(no hypothesis)";
  const facts = $("#facts");
  facts.textContent = "";
  const fact = (name, ...value) => facts.append(el("dt", {}, name), el("dd", {}, ...value));
  fact("val_bpb", score(d), el("span", { class: "dim" }, `  ${d.n_trials} trial(s), ${d.n_trials - d.n} failed`));
  fact("run", `${d.run}, generation ${d.generation}`);
  fact("status", d.status + (d.rejected_reason ? `: ${d.rejected_reason}` : "") + (d.cell && !d.elite_cell ? ` (cell ${d.cell})` : ""));
  fact("operator", d.operator || "-");
  fact("parents", d.parents.length ? d.parents.map((q) => [idLink(q), ` ${bpb(q.val_bpb)}  `]) : "none (a seed)");
  if (d.children.length) fact("children", d.children.map((q) => [idLink(q), " "]));
  if (d.descriptors.params !== undefined) fact("size", `${count(d.descriptors.params)} params, ${count(d.descriptors.tokens)} tokens`);
  fact("commit", el("code", {}, d.commit || "-"));

  const diffBox = $("#tab-diff");
  diffBox.textContent = "";
  if (!d.diffs.length) diffBox.append(el("p", { class: "dim" }, d.parents.length ? "No source (a rejected proposal)." : "A seed: it has no parent to differ from."));
  for (const item of d.diffs) {
    diffBox.append(el("div", { class: "diff-title" }, "against parent ", idLink(item.parent), ` ${bpb(item.parent.val_bpb)}`));
    diffBox.append(diffView(item.diff));
  }
  $("#tab-code").textContent = d.source || "(no source)";
  const runs = $("#tab-runs");
  runs.textContent = "";
  runs.append(el("table", {}, el("thead", {}, el("tr", {}, ["seed", "outcome", "val_bpb", "params", "tokens", "steps", "train s", "message"].map((h) => el("th", {}, h)))),
    el("tbody", {}, d.trials.map((t) => [el("tr", {},
      el("td", { class: "num" }, t.seed), el("td", { class: t.outcome === "ok" ? "" : "bad" }, t.outcome || t.status),
      el("td", { class: "num" }, bpb(t.val_bpb)), el("td", { class: "num" }, count(t.params)), el("td", { class: "num" }, count(t.tokens)),
      el("td", { class: "num" }, t.steps ?? "-"), el("td", { class: "num" }, t.seconds === null ? "-" : t.seconds.toFixed(1)),
      el("td", {}, t.outcome === "ok" ? "" : t.message)),
      // what broke: the end of a failed trial's stderr
      t.stderr_tail ? el("tr", {}, el("td", { colspan: 8 }, el("pre", { class: "stderr" }, t.stderr_tail))) : null]))));
  state.lineageFor = null;
  if (state.tab === "lineage") await showLineage();
  markSelected();
}

function diffView(text) {
  const box = el("div", { class: "diff" });
  if (!text) box.append(el("span", { class: "meta" }, "(identical sources)"));
  for (const line of text.split("\n")) {
    const kind = line.startsWith("+++") || line.startsWith("---") ? "meta" : line.startsWith("@@") ? "hunk"
      : line.startsWith("+") ? "add" : line.startsWith("-") ? "del" : "";
    box.append(el("span", { class: kind }, line || " "));
  }
  return box;
}

async function showLineage() {
  if (state.lineageFor === state.selected) return;
  state.lineageFor = state.selected;
  const lin = await api("/api/lineage/" + encodeURIComponent(state.selected));
  const list = $("#tab-lineage");
  list.textContent = "";
  for (const s of lin.steps) {
    const change = s.delta === null ? "" : signed(s.delta);
    list.append(el("li", {}, idLink(s), ` ${bpb(s.val_bpb)} `,
      el("span", { class: s.delta < 0 ? "good" : s.delta > 0 ? "bad" : "" }, change), " ",
      el("span", { class: "dim" }, `${s.operator}: `), firstLine(s.hypothesis),
      s.other ? el("div", { class: "other" }, "× also from ", idLink(s.other), ` ${bpb(s.other.val_bpb)}`) : null));
  }
}

function showTab(name) {
  state.tab = name;
  document.querySelectorAll("#tabs button").forEach((b) => b.classList.toggle("active", b.dataset.tab === name));
  for (const tab of ["diff", "code", "lineage", "runs"]) $("#tab-" + tab).hidden = tab !== name;
  if (name === "lineage" && state.selected) showLineage();
}

// ------------------------------------------------------------------ trials table

function setOptions(select, values) {
  const current = select.value;
  select.textContent = "";
  select.append(el("option", { value: "" }, "all"));
  if (select.id === "f-outcome") select.append(el("option", { value: "failed" }, "failed (any)"));
  for (const v of values) select.append(el("option", { value: v }, v));
  select.value = [...select.options].some((o) => o.value === current) ? current : "";
}

async function loadTrials() {
  const query = new URLSearchParams({ run: state.run, outcome: $("#f-outcome").value, operator: $("#f-operator").value,
    limit: state.shown });
  const t = await api("/api/trials?" + query);
  setOptions($("#f-outcome"), t.outcomes);
  setOptions($("#f-operator"), t.operators);
  $("#trials-note").textContent = `${t.total} shown by the filters, newest first`;
  const body = $("#trials tbody");
  body.textContent = "";
  for (const r of t.rows) {
    body.append(el("tr", { onclick: () => select(r.id) },
      el("td", { class: "num" }, r.order + 1), el("td", {}, idLink(r)), el("td", { class: "num" }, r.seed),
      el("td", { class: r.outcome === "ok" ? "" : "bad" }, r.outcome), el("td", { class: "num" }, bpb(r.val_bpb)),
      el("td", {}, r.operator), el("td", { title: r.message || r.hypothesis }, r.message ? el("span", { class: "bad" }, r.message) : r.hypothesis)));
  }
  $("#more").hidden = t.rows.length >= t.total;
}

// ------------------------------------------------------------------ refresh and polling

async function refresh() {
  const runs = await api("/api/runs");
  const picker = $("#run");
  picker.textContent = "";
  for (const r of runs) picker.append(el("option", { value: r.name }, `${r.name} (${r.status})`));
  if (!runs.length) {
    $("#summary").textContent = "no runs yet";
    return;
  }
  if (!state.run || !runs.some((r) => r.name === state.run)) state.run = runs[0].name;
  picker.value = state.run;
  const s = runs.find((r) => r.name === state.run);
  $("#summary").textContent = `${s.trials} trials (${s.failed} failed${s.running ? `, ${s.running} running` : ""}) · best ${s.best ? bpb(s.best.val_bpb) + " " + s.best.short : "-"} · ${s.cells ? `${s.elites}/${s.cells} cells` : "no grid yet"}`;
  const [run, progress] = await Promise.all([api("/api/run?run=" + encodeURIComponent(state.run)),
    api("/api/progress?run=" + encodeURIComponent(state.run)), loadTrials()]);
  drawHeatmap(run);
  drawProgress(progress);
  if (state.selected) await select(state.selected, true);
}

async function poll() {
  const live = $("#live");
  try {
    const { version } = await api("/api/version");
    if (version !== state.version) {
      state.version = version;
      await refresh();
    }
    live.classList.remove("stale");
    $("#updated").textContent = "live, checked " + new Date().toLocaleTimeString();
  } catch (err) {
    live.classList.add("stale");
    $("#updated").textContent = "cannot reach evo ui: " + err.message;
  }
}

function start() {
  document.querySelectorAll("#tabs button").forEach((b) => b.addEventListener("click", () => showTab(b.dataset.tab)));
  $("#run").addEventListener("change", () => { state.run = $("#run").value; state.shown = 100; refresh(); });
  $("#f-outcome").addEventListener("change", () => { state.shown = 100; loadTrials(); });
  $("#f-operator").addEventListener("change", () => { state.shown = 100; loadTrials(); });
  $("#more").addEventListener("click", () => { state.shown += 100; loadTrials(); });
  state.run = new URLSearchParams(location.search).get("run");
  if (location.hash.length > 1) select(decodeURIComponent(location.hash.slice(1)), true);
  poll();
  setInterval(poll, POLL_MS);
}

start();
