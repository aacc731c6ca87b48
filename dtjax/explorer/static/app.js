// dtjax explorer: one WebSocket, one session. The server computes every number (dtjax.analysis);
// this script only sends the user's actions and draws the replies. No build step, no CDN.
"use strict";

const $ = (id) => document.querySelector(`[data-testid="${id}"]`);
const COLORS = { floor: "#000", wall: "#646464", goal: "#00ff00", ball: "#0000ff", agent: "#ff0000" };
const OBJ_COLOR = { 0: "#333", 1: "#000", 2: "#646464", 5: "#ffd000", 6: "#0000ff", 8: "#00ff00" };
// MiniGrid's COLORS by colour name (a cell's colour code, e.g. Memory's green key and ball)
const MG_RGB = { red: "#ff0000", green: "#00ff00", blue: "#0000ff", purple: "#7030ff", yellow: "#ffff00", grey: "#646464" };
const MG_COLOR_NAMES = ["red", "green", "blue", "purple", "yellow", "grey"];
const OBJ = { unseen: 0, empty: 1, wall: 2, key: 5, ball: 6, goal: 8 };
const DIRS = [[1, 0], [0, 1], [-1, 0], [0, -1]];
const PLOT_CFG = { displayModeBar: false, responsive: false };
const KEY_GLYPHS = { ArrowLeft: "\u27F2", ArrowRight: "\u27F3", ArrowUp: "\u2191", ArrowDown: "\u2193" };
let ACTION_KEYS = {};  // keyboard key -> action name, from the task (init.task.action_keys)

// Everything a test or a user's script may read: window.__dtjax (S.idle(): every message answered, panels drawn).
const S = {
  ws: null, seq: 0, init: null, step: null, panels: null, weights: null, weightsDirty: false,
  pendingActs: {},          // seq -> time of the key press (performance.now())
  latencies: [],            // key press -> probabilities in the DOM (ms)
  paintLatencies: [],       // key press -> the frame after the probabilities changed was painted (ms)
  renderMs: [],             // time to redraw the plotly panels after a step (ms)
  // seq of the messages this page sent (S.seq), of the last one answered, of the last panels drawn;
  // replies the server sends on its own (a new connection) count as seq 0
  answered: 0, stepSeq: 0, panelsSeq: 0, renderedSeq: -1, renderScheduled: false, renders: 0,
  loadedMs: null, errors: [], autoplay: false, controlInflight: null, controlQueued: null,
  memoryInflight: null, memoryQueued: null, memoryLoad: null,  // the Memory card's slider; the adversary loaded
  marks: { script: performance.now() },  // page-load milestones (ms since navigation start)
};
S.idle = () => S.answered === S.seq && S.renderedSeq === S.panelsSeq && !S.renderScheduled &&
  Object.keys(S.pendingActs).length === 0;
window.__dtjax = S;

// ---------------------------------------------------------------------------------------------
// CONNECTION
// ---------------------------------------------------------------------------------------------
function connect() {
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  S.ws = ws;
  ws.onopen = () => { setConn("connected", "ok"); S.marks.open = S.marks.open ?? performance.now(); };
  ws.onclose = () => { setConn("disconnected: reload the page", "bad"); };
  ws.onerror = () => { setConn("connection error", "bad"); };
  ws.onmessage = (ev) => {
    let msg;
    try { msg = JSON.parse(ev.data); } catch (e) { showMessage(`unreadable reply: ${e}`); return; }
    if (typeof msg.seq === "number") S.answered = Math.max(S.answered, msg.seq);
    const fn = HANDLERS[msg.type];
    if (fn) fn(msg); else showMessage(`unknown reply type ${msg.type}`);
  };
}

function setConn(text, cls) { const c = $("connection"); c.textContent = text; c.className = `conn ${cls}`; }

function send(msg) {
  if (!S.ws || S.ws.readyState !== WebSocket.OPEN) { showMessage("not connected"); return -1; }
  msg.seq = ++S.seq;
  S.ws.send(JSON.stringify(msg));
  return msg.seq;
}

function act(action) {
  const t0 = performance.now();
  const seq = send({ type: "act", action });
  if (seq >= 0) S.pendingActs[seq] = t0;
}

// Controls that fire while dragging (RTG, timestep) keep one message in flight; the latest value waits.
function sendControl(fields) {
  if (S.controlInflight !== null) { S.controlQueued = Object.assign(S.controlQueued || {}, fields); return; }
  S.controlInflight = send(Object.assign({ type: "set" }, fields));
}

function controlDone(seq) {
  if (S.controlInflight !== null && seq === S.controlInflight) {
    S.controlInflight = null;
    if (S.controlQueued) { const q = S.controlQueued; S.controlQueued = null; sendControl(q); }
  }
}

let messageTimer = null;
function showMessage(text, kind = "error") {
  const m = $("message");
  m.textContent = text;
  m.className = `message ${kind === "error" ? "" : "info"}`;
  m.hidden = false;
  if (kind === "error") S.errors.push(text);
  clearTimeout(messageTimer);
  messageTimer = setTimeout(() => { m.hidden = true; }, kind === "error" ? 15000 : 4000);
}

// ---------------------------------------------------------------------------------------------
// REPLIES
// ---------------------------------------------------------------------------------------------
const HANDLERS = {
  init(msg) {
    S.marks.init = S.marks.init ?? performance.now();
    S.init = msg; S.panels = null; S.weights = null; S.step = null;
    for (const id of ["closed-loop", "patching", "patch-info"]) {
      if (havePlotly()) Plotly.purge($(id));
      $(id).innerHTML = ""; $(id).removeAttribute("data-step");
    }
    buildControls(msg);
    $("sae-card").hidden = !(msg.saes && msg.saes.length);
    buildMemory(msg.memory);
    $("sae-latents").innerHTML = "";
    $("probes-concept").innerHTML = ""; $("probes-site").innerHTML = ""; $("probes").innerHTML = "";  // a new model's probes
  },
  weights(msg) { S.weights = msg; S.weightsDirty = true; scheduleRender(); },
  step(msg) { onStep(msg); },
  panels(msg) { S.panels = msg; S.panelsSeq = msg.seq ?? 0; controlDone(msg.seq); syncControls(msg.controls); scheduleRender(); },
  busy(msg) { showMessage(`computing ${msg.what.replace("_", " ")} ...`, "info"); },
  patching(msg) { if (havePlotly()) drawPatching(msg); else showMessage("plotly.js has not loaded yet"); $("message").hidden = true; },
  closed_loop(msg) { drawClosedLoop(msg); $("message").hidden = true; },
  probes(msg) { drawProbes(msg); $("message").hidden = true; },
  memory(msg) {
    if (S.panels) S.panels.memory = msg;
    drawMemory(msg);
    memoryDone(msg.seq);
  },
  error(msg) {
    if (msg.seq in S.pendingActs) delete S.pendingActs[msg.seq];
    controlDone(msg.seq);
    memoryDone(msg.seq);
    showMessage(msg.message);
    if (S.step) syncControls(S.panels && S.panels.controls);
  },
};

function onStep(msg) {
  S.step = msg;
  drawProbs(msg);  // first: what a key press is waiting for
  S.marks.step = S.marks.step ?? performance.now();
  const t0 = S.pendingActs[msg.seq];
  if (t0 !== undefined) {
    delete S.pendingActs[msg.seq];
    S.latencies.push(performance.now() - t0);
    requestAnimationFrame(() => setTimeout(() => S.paintLatencies.push(performance.now() - t0), 0));
  }
  S.stepSeq = msg.seq ?? 0;
  if (S.memoryLoad && (msg.seq ?? 0) > S.memoryLoad.seq) S.memoryLoad = null;  // a later step: the adversary is no longer on screen
  drawFrame(msg.grid, msg.carrying);
  drawView(msg.view, msg.carrying, msg.view_colours);
  drawContext(msg.context);
  $("status").textContent = msg.status;
  $("outcome-detail").textContent = outcomeDetail(msg);
  $("timestep").textContent = String(msg.timestep);
  $("model-timestep").textContent = String(msg.model_timestep);
  $("return").textContent = msg.return.toFixed(3);
  $("rtg-token").textContent = msg.rtg.toFixed(3);
  $("last-action").textContent = msg.action === null ? "-" : S.init.actions[msg.action];
  const scrub = $("history-scrub");
  scrub.max = String(msg.n_steps - 1);
  scrub.value = String(msg.step);
  $("history-step").textContent = String(msg.step);
  $("history-len").textContent = String(msg.n_steps);
  if (S.autoplay && msg.status !== "running") setAutoplay(false);
}

// What ended the episode, in the task's words: a failure's detail flags ("hit_wall" -> "a wall"), else
// the task's other objects it can run into ("a ball"); a success or timeout shows the return.
function outcomeDetail(msg) {
  const t = S.init.task;
  if (msg.status === "running") return "";
  if (t.failures.includes(msg.status)) {
    const on = t.details.filter((d) => msg.details && msg.details[d]).map((d) => d.replace(`${msg.status}_`, ""));
    const others = t.objects.filter((o) => !["empty", "wall", "goal"].includes(o));
    return on.length ? `(a ${on.join(", ")})` : others.length ? `(a ${others.join(" or ")})` : "";
  }
  return `(return ${msg.return.toFixed(3)})`;
}

// ---------------------------------------------------------------------------------------------
// FAST PANELS (plain DOM): probabilities, frame, view
// ---------------------------------------------------------------------------------------------
function drawProbs(msg) {
  const acts = S.init.actions;
  const best = msg.probs.indexOf(Math.max(...msg.probs));
  let html = "";
  for (let a = 0; a < acts.length; a++) {
    const p = msg.probs[a];
    html += `<div class="prow${a === best ? " chosen" : ""}"><span>${acts[a]}</span>` +
      `<div class="bar"><div style="width:${(100 * p).toFixed(1)}%"></div></div><span class="val">${p.toFixed(3)}</span></div>`;
    if (msg.ablated) {
      const q = msg.ablated_probs[a];
      html += `<div class="prow"><span class="sub">ablated</span><div class="bar abl"><div style="width:${(100 * q).toFixed(1)}%">` +
        `</div></div><span class="val" data-ablated="1">${q.toFixed(3)}</span></div>`;
    }
  }
  $("action-probs").innerHTML = html;
  $("probs-note").textContent = msg.ablated ? `clean (blue) and with ${msg.ablate.join(", ")} ${msg.kind}-ablated (orange)` : "";
}

function viewCells(agent, dir) {
  const f = DIRS[dir], r = [-f[1], f[0]];
  const out = new Set();
  for (let i = 0; i < 7; i++) for (let j = 0; j < 7; j++)
    out.add(`${agent[0] + f[0] * (6 - j) + r[0] * (i - 3)},${agent[1] + f[1] * (6 - j) + r[1] * (i - 3)}`);
  return out;
}

function agentTriangle(cx, cy, s, dir) {
  // pointing east, rotated by 90 degrees per direction (0=E 1=S 2=W 3=N; y points down)
  const pts = [[0.38, 0], [-0.38, -0.38], [-0.38, 0.38]].map(([x, y]) => {
    const a = (Math.PI / 2) * dir, c = Math.cos(a), sn = Math.sin(a);
    return `${(cx + s * (x * c - y * sn)).toFixed(1)},${(cy + s * (x * sn + y * c)).toFixed(1)}`;
  });
  return `<polygon points="${pts.join(" ")}" fill="${COLORS.agent}"/>`;
}

// A key (a ring and a bit) or a ball (a disc) at cell centre (cx, cy), cell side s, in colour c.
function objectGlyph(obj, cx, cy, s, c) {
  if (obj === OBJ.ball) return `<circle cx="${cx}" cy="${cy}" r="${0.31 * s}" fill="${c}" pointer-events="none"/>`;
  if (obj === OBJ.key) {
    return `<g pointer-events="none" data-glyph="key"><circle cx="${cx - 0.14 * s}" cy="${cy}" r="${0.17 * s}" fill="none" stroke="${c}" stroke-width="${0.09 * s}"/>` +
      `<rect x="${cx + 0.02 * s}" y="${cy - 0.05 * s}" width="${0.3 * s}" height="${0.1 * s}" fill="${c}"/>` +
      `<rect x="${cx + 0.2 * s}" y="${cy}" width="${0.08 * s}" height="${0.16 * s}" fill="${c}"/></g>`;
  }
  return "";
}

function drawFrame(grid, carrying) {
  const svg = $("frame");
  const n = grid.size, px = 320 / n;
  const view = viewCells(grid.agent, grid.dir);
  const balls = new Set(grid.balls.map((b) => `${b[0]},${b[1]}`));
  let html = "";
  const objects = [];
  for (let x = 0; x < n; x++) for (let y = 0; y < n; y++) {
    // the env's own cells (grid.cells[x][y] = MiniGrid [object, colour]); the border / goal guess without them
    const code = grid.cells ? grid.cells[x][y] : [x === 0 || y === 0 || x === n - 1 || y === n - 1 ? OBJ.wall
      : x === n - 2 && y === n - 2 ? OBJ.goal : balls.has(`${x},${y}`) ? OBJ.ball : OBJ.empty, 2];
    const wall = code[0] === OBJ.wall, goal = code[0] === OBJ.goal;
    let fill = wall ? COLORS.wall : goal ? COLORS.goal : COLORS.floor;
    if (!wall && view.has(`${x},${y}`)) fill = goal ? "#66ff99" : "#33414f";  // the agent's view, tinted
    html += `<rect class="cell" data-x="${x}" data-y="${y}" data-object="${code[0]}" x="${x * px}" y="${y * px}" width="${px}" height="${px}" fill="${fill}"/>`;
    if (code[0] === OBJ.ball || code[0] === OBJ.key) {
      objects.push(`${x},${y},${code[0]}`);
      html += objectGlyph(code[0], (x + 0.5) * px, (y + 0.5) * px, px, MG_RGB[MG_COLOR_NAMES[code[1]]] || COLORS.ball);
    }
  }
  html += agentTriangle((grid.agent[0] + 0.5) * px, (grid.agent[1] + 0.5) * px, px, grid.dir).replace("<polygon", '<polygon pointer-events="none"');
  if (carrying) {  // the carried object, small, on the agent
    html += objectGlyph(OBJ[carrying.object], (grid.agent[0] + 0.5) * px, (grid.agent[1] + 0.5) * px, 0.5 * px, MG_RGB[carrying.colour] || "#fff");
  }
  svg.innerHTML = html;
  svg.setAttribute("data-agent", `${grid.agent[0]},${grid.agent[1]},${grid.dir}`);
  svg.setAttribute("data-balls", grid.balls.map((b) => b.join(",")).join(";"));
  svg.setAttribute("data-objects", objects.join(";"));
  svg.setAttribute("data-carrying", carrying ? carrying.object : "");
  svg.classList.add("editable");
}

// view[y][x] object codes (colours[y][x] their MiniGrid colour codes, if known), the agent at (3, 6) facing up
function viewSvg(view, px, carrying, colours) {
  let html = "";
  for (let y = 0; y < 7; y++) for (let x = 0; x < 7; x++) {
    const code = view[y][x];
    if (code === OBJ.ball || code === OBJ.key) {
      const c = colours ? MG_RGB[MG_COLOR_NAMES[colours[y][x]]] : code === OBJ.ball ? COLORS.ball : OBJ_COLOR[OBJ.key];
      html += `<rect class="cell" x="${x * px}" y="${y * px}" width="${px}" height="${px}" fill="#000"/>` +
        objectGlyph(code, (x + 0.5) * px, (y + 0.5) * px, px, c);
    } else html += `<rect class="cell" x="${x * px}" y="${y * px}" width="${px}" height="${px}" fill="${OBJ_COLOR[code] || "#888"}"/>`;
  }
  html += agentTriangle(3.5 * px, 6.5 * px, px, 3);
  if (carrying) html += objectGlyph(OBJ[carrying.object], 3.5 * px, 6.5 * px, 0.5 * px, MG_RGB[carrying.colour] || "#fff");
  return html;
}

function drawView(view, carrying, colours) {
  $("view").innerHTML = viewSvg(view, 22, carrying, colours);
  $("view").setAttribute("data-view", view.map((r) => r.join("")).join("/"));
  $("carrying").textContent = carrying ? `${carrying.colour} ${carrying.object}` : "nothing";
}

// The model's context: one small view per timestep, oldest first, labelled with its state token
// (s1 ... sK, the original app's numbering; the current frame is sK) and the action taken there.
function drawContext(context) {
  const acts = S.init.actions;
  $("context").innerHTML = context.map((c) => {
    const body = c.valid ? viewSvg(c.view, 6, c.carrying) : `<rect width="42" height="42" fill="#ddd"/>`;
    const cap = c.valid ? `t=${c.t}${c.action !== null ? ` \u2192 ${c.action}` : ""}` : "padding";
    return `<figure class="ctx${c.valid ? "" : " pad"}${c.edited ? " edited" : ""}" data-token="${c.token}" data-t="${c.valid ? c.t : ""}"` +
      ` data-action="${c.action ?? ""}"><figcaption><b>${c.token}</b> ${cap}</figcaption><svg width="42" height="42">${body}</svg></figure>`;
  }).join("");
  void acts;
}

// ---------------------------------------------------------------------------------------------
// PLOTLY PANELS (drawn after the probabilities are painted)
// ---------------------------------------------------------------------------------------------
function scheduleRender() {
  if (S.renderScheduled) return;
  S.renderScheduled = true;
  requestAnimationFrame(() => setTimeout(renderPanels, 0));
}

S.plotlyLoaded = () => { S.marks.plotly = performance.now(); scheduleRender(); };
const havePlotly = () => typeof window.Plotly !== "undefined";

function renderPanels() {
  S.renderScheduled = false;
  if (!S.init || !S.panels) return;
  const t0 = performance.now();
  const p = S.panels;
  try {
    drawAttention(p);
    drawStateEncoder(p);
    drawAblation(p);
    drawHistory(p);
    drawSAE(p);
    drawMemory(p.memory);
    if (S.weightsDirty && S.weights) { drawWeights(S.weights); S.weightsDirty = false; }
    if (!havePlotly()) return;  // the line and bar charts follow when plotly.js has loaded
    drawDLA(p);
    drawScan(p);
  } catch (e) {
    showMessage(`drawing failed: ${e}`);
    throw e;
  }
  S.renderMs.push(performance.now() - t0);
  S.renderedSeq = p.seq ?? 0;
  S.renders += 1;
  if (S.loadedMs === null) { S.loadedMs = performance.now(); S.marks.drawn = S.loadedMs; }
}

function gridLayout(rows, cols, extra = {}) {
  return Object.assign({ grid: { rows, columns: cols, pattern: "independent", xgap: 0.12, ygap: 0.22 },
    margin: { l: 40, r: 10, t: 26, b: 30 }, font: { size: 10 }, showlegend: false }, extra);
}

// Small maps (7x7 views, attention patterns) are drawn as SVG grids: a plotly figure per map would
// cost tens of milliseconds per redraw; these cost well under one.
function mix(rgb, a) { return `rgb(${rgb.map((c) => Math.round(255 + (c - 255) * a)).join(",")})`; }
function rdbu(t) { return mix(t >= 0 ? [33, 102, 172] : [178, 24, 43], Math.min(1, Math.abs(t))); }  // + blue, - red
function blues(t) { return mix([8, 48, 107], Math.max(0, Math.min(1, t))); }
const DIVERGING = [[0, "rgb(178,24,43)"], [0.5, "rgb(255,255,255)"], [1, "rgb(33,102,172)"]];  // as rdbu()
function fmt(v) { return v === null ? "n/a" : Math.abs(v) >= 100 ? v.toFixed(0) : v.toPrecision(3); }

function drawMaps(el, maps, titles, opts = {}) {
  // maps: 2-D arrays [row][col]; one colour scale for all (symmetric around 0 unless opts.blues)
  const cell = opts.cell || 15, lx = opts.xlabels ? 34 : 0, ly = opts.ylabels ? 34 : 0;
  const lim = opts.blues ? 1 : Math.max(1e-12, ...maps.map((m) => Math.max(...m.flat().map((v) => Math.abs(v ?? 0)))));
  let html = "";
  maps.forEach((z, i) => {
    const R = z.length, Cn = z[0].length, w = ly + Cn * cell, h = lx + R * cell;
    let g = "";
    if (opts.xlabels) opts.xlabels.slice(0, Cn).forEach((t, c) => { g += `<text x="${ly + (c + 0.5) * cell}" y="${lx - 4}" text-anchor="middle" font-size="9">${t}</text>`; });
    if (opts.ylabels) opts.ylabels.slice(0, R).forEach((t, r) => { g += `<text x="${ly - 3}" y="${lx + (r + 0.7) * cell}" text-anchor="end" font-size="9">${t}</text>`; });
    for (let r = 0; r < R; r++) for (let c = 0; c < Cn; c++) {
      const v = z[r][c];
      const fill = v === null ? "#ddd" : opts.blues ? blues(v) : rdbu(v / lim);
      g += `<rect x="${ly + c * cell}" y="${lx + r * cell}" width="${cell}" height="${cell}" fill="${fill}"><title>${fmt(v)}</title></rect>`;
      if (opts.text && v !== null) g += `<text x="${ly + (c + 0.5) * cell}" y="${lx + (r + 0.62) * cell}" text-anchor="middle" font-size="9" fill="${Math.abs(v / lim) > 0.55 ? "#fff" : "#000"}">${v.toFixed(2)}</text>`;
    }
    html += `<figure class="map"><figcaption>${titles[i]}</figcaption><svg width="${w}" height="${h}">${g}</svg></figure>`;
  });
  const legend = opts.blues ? "colour: 0 (white) to 1 (dark blue)" : `colour: &minus;${fmt(lim)} (red) to +${fmt(lim)} (blue)`;
  el.innerHTML = `<div class="maps">${html}</div><div class="sub">${legend}</div>`;
  el.setAttribute("data-version", String(Number(el.getAttribute("data-version") || 0) + 1));
}

function drawAttention(p) {
  const { n_layers: L, n_heads: H } = S.init;
  const toks = S.init.tokens.slice(0, p.pattern[0][0].length);
  const maps = [], titles = [];
  for (let l = 0; l < L; l++) for (let h = 0; h < H; h++) { maps.push(p.pattern[l][h]); titles.push(`L${l}H${h} (query rows, key columns)`); }
  drawMaps($("attention"), maps, titles, { blues: true, text: toks.length <= 8, cell: toks.length <= 2 ? 44 : toks.length <= 8 ? 30 : 16,
    xlabels: toks, ylabels: toks });
}

function drawDLA(p) {
  const labels = S.init.dla_labels;
  const data = [{ type: "bar", x: labels, y: p.dla, name: "clean", marker: { color: "#3b6fd1" } }];
  if (p.ablated_dla) data.push({ type: "bar", x: labels, y: p.ablated_dla, name: "ablated", marker: { color: "#d1773b" } });
  const d = S.init.controls.direction;
  $("dla-sum").textContent = `onto ${dirLabel()}: the bars sum to the logit difference ${p.logit_diff.toFixed(3)}` +
    (p.ablated_dla ? ` (ablated ${p.ablated_logit_diff.toFixed(3)})` : "");
  Plotly.react($("dla"), data, { height: 230, margin: { l: 40, r: 10, t: 10, b: 60 }, font: { size: 10 },
    barmode: "group", showlegend: !!p.ablated_dla, legend: { orientation: "h", y: 1.1 } }, PLOT_CFG);
  void d;
}

function dirLabel() {
  const d = (S.panels && S.panels.controls.direction) || S.init.controls.direction;
  return d.neg ? `${d.pos} − ${d.neg}` : d.pos;
}

const LINE_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#ff7f0e"];

function drawScan(p) {
  const sc = p.scan, acts = S.init.actions, labels = S.init.dla_labels;
  const data = [];
  acts.forEach((a, i) => data.push({ x: sc.rtg, y: sc.logits.map((r) => r[i]), name: `logit ${a}`, mode: "lines",
    line: { color: LINE_COLORS[i], width: 1.5 }, xaxis: "x", yaxis: "y" }));
  labels.forEach((lab, c) => data.push({ x: sc.rtg, y: sc.dla.map((r) => r[c]), name: lab, mode: "lines",
    line: { color: LINE_COLORS[c % LINE_COLORS.length], width: 1, dash: c >= 10 ? "dot" : "solid" }, xaxis: "x2", yaxis: "y2" }));
  let k = 0;
  for (let l = 0; l < S.init.n_layers; l++) for (let h = 0; h < S.init.n_heads; h++, k++)
    data.push({ x: sc.rtg, y: sc.attn.map((r) => r[l][h]), name: `L${l}H${h} → R`, mode: "lines",
      line: { color: LINE_COLORS[k % LINE_COLORS.length], width: 1.5 }, xaxis: "x3", yaxis: "y3" });
  // the current RTG as one vertical line per subplot (a trace: a layout shape forces a full relayout)
  const span = (rows) => { const v = rows.flat(2).filter((x) => x !== null); return [Math.min(...v), Math.max(...v)]; };
  [["x", "y", sc.logits], ["x2", "y2", sc.dla], ["x3", "y3", sc.attn]].forEach(([xa, ya, rows]) => {
    data.push({ x: [sc.marker, sc.marker], y: span(rows), mode: "lines", name: "current RTG", showlegend: xa === "x",
      line: { color: "#000", width: 1.5, dash: "dash" }, xaxis: xa, yaxis: ya, hoverinfo: "x" });
  });
  const layout = gridLayout(1, 3, { height: 430, showlegend: true, legend: { font: { size: 9 }, orientation: "h", y: -0.08 },
    margin: { l: 40, r: 10, t: 24, b: 20 },
    annotations: [
      { text: "logits", xref: "x domain", yref: "y domain", x: 0.5, y: 1.06, showarrow: false },
      { text: `DLA onto ${dirLabel()}`, xref: "x2 domain", yref: "y2 domain", x: 0.5, y: 1.06, showarrow: false },
      { text: "attention s_t → R_t", xref: "x3 domain", yref: "y3 domain", x: 0.5, y: 1.06, showarrow: false }] });
  const div = $("rtg-scan");
  Plotly.react(div, data, layout, PLOT_CFG);
  div.setAttribute("data-marker", String(sc.marker));
}

function channelNames(ch) { return ch.map((c) => S.init.channels[c]); }

function drawStateEncoder(p) {
  const w = S.weights;
  const names = channelNames(p.channels);
  const maps = [], titles = [];
  if (w && w.channels.join() === p.channels.join()) w.state_encoder.forEach((m, i) => { maps.push(m); titles.push(`weight · ${names[i]}`); });
  p.state_encoder.forEach((m, i) => { maps.push(m); titles.push(`activation · ${names[i]}`); });
  drawMaps($("state-encoder"), maps, titles, { cell: 14 });
}

function drawWeights(w) {
  const names = channelNames(w.channels);
  drawMaps($("qk"), w.qk, names.map((n) => `L${w.head[0]}H${w.head[1]} · ${n}`), { cell: 14 });
  const maps = [...w.ov_dir], titles = names.map((n) => `${dirLabel()} · ${n}`);
  w.ov.forEach((perCh, a) => perCh.forEach((m, i) => { maps.push(m); titles.push(`${S.init.actions[a]} · ${n(i)}`); }));
  function n(i) { return names[i]; }
  drawMaps($("ov"), maps, titles, { cell: 11 });
  $("ov-rtg").textContent = `L${w.head[0]}H${w.head[1]}; per unit RTG attended w_R W_OV W_U = (${w.ov_rtg.map((x) => x.toFixed(2)).join(", ")})`;
  $("qk").setAttribute("data-head", w.head.join(","));
}

function drawAblation(p) {
  const labels = S.init.ablation_labels, acts = S.init.actions;
  let html = `<table><tr><th>ablated alone (${p.kind})</th>${acts.map((a) => `<th>${a}</th>`).join("")}</tr>`;
  p.each_probs.forEach((row, i) => {
    html += `<tr${p.ablate.includes(labels[i]) ? ' style="font-weight:600"' : ""}><td>${labels[i]}</td>` +
      row.map((x) => `<td>${x.toFixed(3)}</td>`).join("") + "</tr>";
  });
  $("ablation-each").innerHTML = html + "</table>";
  document.querySelectorAll("[data-testid=ablation-toggles] input").forEach((el) => { el.checked = p.ablate.includes(el.value); });
  $("ablation-kind").value = p.kind;
}

function drawClosedLoop(msg) {
  const outs = S.init.task.outcomes.slice(1).filter((o) => msg[`${o}_rate`] !== undefined);  // the task's outcomes
  let html = `<table><tr><th>${msg.episodes} episodes at RTG ${msg.rtg.toFixed(2)} (${msg.greedy ? "greedy" : "sampled"})</th>` +
    `<th>mean return</th>${outs.map((o) => `<th>${o}</th>`).join("")}<th>length</th></tr>`;
  msg.labels.forEach((lab, i) => {
    const name = i === 0 ? "clean" : `ablated: ${msg.ablate.length ? msg.ablate.join(", ") + ` (${msg.kind})` : "nothing"}`;
    html += `<tr><td>${name}</td><td>${msg.mean_return[i].toFixed(3)}</td>` +
      outs.map((o) => `<td>${msg[`${o}_rate`][i].toFixed(2)}</td>`).join("") + `<td>${msg.mean_length[i].toFixed(1)}</td></tr>`;
  });
  $("closed-loop").innerHTML = html + `</table><div class="sub">${msg.seconds.toFixed(1)} s</div>`;
}

function drawPatching(msg) {
  const z = msg.matrix;
  const lim = 1.5;  // colours saturate beyond +-1.5 (a tiny clean - corrupted gap makes effects huge); the text is exact
  const data = [{ type: "heatmap", z, x: msg.columns, y: msg.rows, colorscale: DIVERGING, zmid: 0,
    zmin: -lim, zmax: lim, texttemplate: "%{z:.2f}", hovertemplate: "%{y} @ %{x}: %{z:.3f}<extra></extra>",
    colorbar: { thickness: 8 } }];
  Plotly.react($("patching"), data, { height: 16 * msg.rows.length + 70, margin: { l: 230, r: 10, t: 10, b: 30 },
    font: { size: 10 }, yaxis: { autorange: "reversed", tickfont: { size: 9 } } }, PLOT_CFG);
  $("patch-info").textContent = `step ${msg.step}, ${msg.what}: clean ${dirLabel()} = ${msg.clean.toFixed(3)}, corrupted = ` +
    `${msg.corrupted.toFixed(3)}; 1 = the patch restores the clean value (${msg.seconds.toFixed(1)} s)`;
  $("patching").setAttribute("data-step", String(msg.step));
}

function drawSAE(p) {  // plain DOM: one table per dictionary (absent when the model has none)
  if (!p.sae || !p.sae.length) return;
  const dir = dirLabel();
  $("sae-latents").innerHTML = p.sae.map((d, j) => {
    const info = S.init.saes[j];
    const max = Math.max(1e-9, ...d.act);
    let html = `<div data-testid="sae-dict" data-name="${d.name}"><table><caption class="sub">${d.name}: ${info.hook}, ` +
      `${info.token} tokens, ${info.n_latents} latents; L0 ${d.l0}</caption>` +
      `<tr><th>latent</th><th>activation</th><th>best probe (AUROC)</th><th>DLA ${dir}</th></tr>`;
    d.index.forEach((k, i) => {
      const probe = d.probe ? `${d.probe[i]} (${d.auc[i] === null ? "n/a" : d.auc[i].toFixed(2)})` : "-";
      const dla = d.dla ? (d.dla[i] >= 0 ? "+" : "") + d.dla[i].toFixed(3) : "n/a";
      html += `<tr data-testid="sae-row" data-latent="${k}"><td>#${k}</td><td><span class="abar" style="width:` +
        `${Math.round(60 * d.act[i] / max)}px"></span> ${d.act[i].toFixed(2)}</td><td>${probe}</td><td>${dla}</td></tr>`;
    });
    if (!d.index.length) html += `<tr><td colspan="4">no latent active</td></tr>`;
    return html + "</table></div>";
  }).join("");
}

function probesMessage(act = false) {  // the probes' readouts at this step, with the slider's push
  const concept = $("probes-concept").value || null;
  return { type: "probes", site: Number($("probes-site").value || 0), concept, alpha: Number($("probes-alpha").value), act };
}

function drawProbes(msg) {  // plain DOM: one row per concept, one column per site
  const info = msg.info;
  if (!$("probes-concept").options.length) {
    options($("probes-concept"), [["", "(no push)"], ...info.binary.map((b) => [b, b])], "");
    options($("probes-site"), info.sites.map((s, i) => [String(i), s]), "0");
  }
  const acts = S.init.actions;
  const probs = (p) => p.map((x, i) => `${acts[i]} ${x.toFixed(2)}`).join(", ");
  let html = `<table><tr><th>concept</th>${info.sites.map((s) => `<th>${s}</th>`).join("")}</tr>`;
  msg.readouts.forEach((r, c) => {
    html += `<tr data-testid="probe-row" data-concept="${r.concept}"><td>${r.concept}</td>` + r.pred.map((k, s) => {
      const p = r.probs[s][r.classes.indexOf(k)];
      return `<td title="held-out F1 ${fmt(info.f1[s][c])}">${k} <span class="sub">${p.toFixed(2)}</span></td>`;
    }).join("") + "</tr>";
  });
  $("probes").innerHTML = html + "</table>";
  $("probes-info").textContent = `step ${msg.step}: actions ${probs(msg.plain_probs)}` +
    (msg.concept ? `; with ${msg.concept} x ${msg.alpha} at ${info.sites[msg.site]}: ${probs(msg.steered_probs)}` : "") +
    ` (fitted in ${info.seconds} s)`;
}

// The MemoryDT card (init.memory; hidden where the session says it does not apply): the adversary table,
// the feature projection on the context strip, the coefficient slider, the decision token's attention.
function buildMemory(m) {
  const card = $("memory-card");
  card.hidden = !m || m.undefined !== null;
  card.setAttribute("data-undefined", m && m.undefined ? m.undefined : "");
  if (card.hidden) return;
  const f = (v) => (v >= 0 ? "+" : "") + v.toFixed(3);
  let html = `<table><tr><th>layout</th><th>edit</th>${m.rtgs.map((r) => `<th>LD @ RTG ${r}</th><th>restored</th>`).join("")}</tr>`;
  m.layouts.forEach((lay, i) => m.edits.forEach((e, k) => {
    html += `<tr data-layout="${lay}" data-edit="${e}"><td>${k === 0 ? m.labels[i].join(", ") : ""}</td><td>${m.edit_labels[k]}</td>` +
      m.rtgs.map((r, j) => `<td class="adv" data-testid="adv-${lay}-${e}-${j}" data-rtg="${r}" title="load this context">` +
        `${f(m.ld[i][j][k])}</td><td>${m.restored[i][j][k].toFixed(2)}</td>`).join("") + "</tr>";
  }));
  $("memory-adversaries").innerHTML = html + "</table>";
  $("memory-explained").textContent = `${(100 * m.explained[0]).toFixed(1)}% of the subset's variance`;
  $("memory-note").textContent = m.note || "";
}

function memoryMessage(act = false) {
  return { type: "memory", coef: $("memory-coef-on").checked ? Number($("memory-coef").value) : null, act };
}

function sendMemory(msg) {  // the slider keeps one message in flight; the latest value waits
  if (S.memoryInflight !== null && !msg.act) { S.memoryQueued = msg; return; }
  S.memoryInflight = send(msg);
}

function memoryDone(seq) {
  if (S.memoryInflight !== null && seq === S.memoryInflight) {
    S.memoryInflight = null;
    if (S.memoryQueued) { const q = S.memoryQueued; S.memoryQueued = null; sendMemory(q); }
  }
}

function drawMemory(mp) {
  if (!mp || $("memory-card").hidden) return;
  const acts = S.init.actions, load = S.memoryLoad;
  $("memory-ld").textContent = (mp.ld >= 0 ? "+" : "") + mp.ld.toFixed(3);
  $("memory-ld").setAttribute("data-value", String(mp.ld));
  document.querySelectorAll("[data-testid=memory-adversaries] tr.loaded").forEach((r) => r.classList.remove("loaded"));
  if (load) {
    const m = S.init.memory, i = m.layouts.indexOf(load.layout), k = m.edits.indexOf(load.edit), j = m.rtgs.indexOf(load.rtg);
    $("memory-loaded").textContent = `${m.labels[i].join(", ")}, ${m.edit_labels[k]} at RTG ${load.rtg} ` +
      `(table: LD ${m.ld[i][j][k].toFixed(3)}, restored ${m.restored[i][j][k].toFixed(2)})`;
    const row = document.querySelector(`[data-testid=memory-adversaries] tr[data-layout="${load.layout}"][data-edit="${load.edit}"]`);
    if (row) row.classList.add("loaded");
  } else $("memory-loaded").textContent = "";
  // the feature's projection of each frame's state token, on the context strip
  const lim = Math.max(1e-9, ...mp.projection.map(Math.abs));
  document.querySelectorAll("[data-testid=context] figure.ctx").forEach((fig, j) => {
    const v = mp.projection[j];
    fig.setAttribute("data-proj", String(v));
    fig.classList.toggle("instr", j === mp.frame);
    let el = fig.querySelector(".proj");
    if (!el) { el = document.createElement("div"); el.className = "proj"; fig.appendChild(el); }
    el.textContent = (v >= 0 ? "+" : "") + v.toFixed(2);
    el.style.background = rdbu(v / lim);
    el.style.color = Math.abs(v / lim) > 0.55 ? "#fff" : "#000";
    el.title = "instruction feature . this state token (keys positive)";
  });
  $("memory-coef-on").checked = mp.coef !== null;
  if (mp.coef !== null && document.activeElement !== $("memory-coef")) $("memory-coef").value = String(mp.coef);
  $("memory-coef-value").textContent = $("memory-coef").value;
  let html = "";
  if (mp.steered_probs) {
    const best = mp.steered_probs.indexOf(Math.max(...mp.steered_probs));
    html = `<div class="sub" data-testid="memory-steered-ld" data-value="${mp.steered_ld}">with c = ${mp.coef} on the instruction frame ` +
      `(s${mp.frame + 1}): LD ${(mp.steered_ld >= 0 ? "+" : "") + mp.steered_ld.toFixed(3)}, greedy ${acts[mp.steered_action]}</div>`;
    acts.forEach((a, i) => {
      html += `<div class="prow${i === best ? " chosen" : ""}"><span>${a}</span><div class="bar abl"><div style="width:` +
        `${(100 * mp.steered_probs[i]).toFixed(1)}%"></div></div><span class="val">${mp.steered_probs[i].toFixed(3)}</span></div>`;
    });
  } else if (mp.coef !== null) html = `<div class="sub">the instruction frame (t = 0) has left the context: nothing to set</div>`;
  $("memory-steered").innerHTML = html;
  $("memory-act").disabled = !mp.steered_probs;
  const toks = S.init.context_tokens.slice(0, mp.attention[0][0].length);
  const heads = mp.attention[0].map((_, h) => `H${h}`);
  drawMaps($("memory-attention"), mp.attention, mp.attention.map((_, l) => `layer ${l}: head x token`),
    { blues: true, cell: 15, xlabels: toks, ylabels: heads });
}

// An action's initial (L, R, F), or its first two letters where initials collide (drop, done: Dr, Do)
function actionInitial(acts, a) {
  const first = (s) => s[0].toUpperCase();
  return acts.filter((b) => first(b) === first(acts[a])).length > 1 ? first(acts[a]) + acts[a][1] : first(acts[a]);
}

function drawHistory(p) {
  const acts = S.init.actions;
  const cur = S.step ? S.step.step : 0;
  $("history-list").innerHTML = p.history.map((h, i) => {
    const a = h.action === null ? "" : ` ${actionInitial(acts, h.action)}`;
    return `<span data-step="${i}" class="${i === cur ? "cur " : ""}${h.outcome === "running" ? "" : h.outcome}"` +
      ` title="t=${h.t} reward ${h.reward}">${h.t}${a}</span>`;
  }).join("");
}

// ---------------------------------------------------------------------------------------------
// CONTROLS
// ---------------------------------------------------------------------------------------------
function options(sel, items, selected) {
  sel.innerHTML = items.map(([v, t]) => `<option value="${v}"${v === selected ? " selected" : ""}>${t}</option>`).join("");
}

function buildTask(task) {  // the action buttons, keys and grid-edit modes the task has
  ACTION_KEYS = {};
  task.actions.forEach((a, i) => { if (task.action_keys[i]) ACTION_KEYS[task.action_keys[i]] = a; });
  $("act-buttons").innerHTML = task.actions.map((a, i) => {
    const k = task.action_keys[i];
    return `<button data-testid="act-${a}" data-action="${a}"${k ? ` title="${k}"` : ""}>${k && KEY_GLYPHS[k] ? KEY_GLYPHS[k] + " " : ""}${a}</button>`;
  }).join(" ");
  const modes = task.edit_ops.map((o) => [o, task.edit_labels[o]]);
  options($("edit-mode"), modes, modes[0][0]);
  const keys = task.actions.map((a, i) => task.action_keys[i] ? `${task.action_keys[i].replace("Arrow", "")} ${a}` : "").filter(Boolean);
  $("keys-help").textContent = `Keys: ${keys.join(", ")}, m model acts, [ and ] step through the history.`;
}

function buildControls(init) {
  buildTask(init.task);
  options($("model-select"), init.models.map((m) => [m, m]), init.model.name);
  $("model-name").textContent = `${init.model.name} (${init.model.config.n_layers}L ${init.model.config.n_heads}H K=${init.model.config.n_timesteps})`;
  $("config").textContent = JSON.stringify({ model: init.model.config, trained_env: init.model.env, compile_s: init.model.compile_s }, null, 1);
  options($("env-select"), init.env_ids.map((e) => [e, e]), init.env.env_id);
  const sc = $("scenario");
  sc.innerHTML = `<option value="">(pick a hand-made state)</option>` +
    Object.entries(init.scenarios).map(([n, c]) => `<option value="${n}" title="${c}">${n}</option>`).join("");
  options($("dir-pos"), init.actions.map((a) => [a, a]), init.controls.direction.pos);
  options($("dir-neg"), [["", "(none: one action)"], ...init.actions.map((a) => [a, a])], init.controls.direction.neg || "");
  const heads = [];
  for (let l = 0; l < init.n_layers; l++) for (let h = 0; h < init.n_heads; h++) heads.push([`${l},${h}`, `L${l}H${h}`]);
  options($("head-select"), heads, init.controls.head.join(","));
  $("ablation-toggles").innerHTML = init.ablation_labels.slice(1).map((n) =>
    `<label><input type="checkbox" value="${n}" data-testid="ablate-${n}"> ${n}</label>`).join("");
  $("channels").innerHTML = init.channels.map((n, i) =>
    `<label><input type="checkbox" value="${i}" data-testid="channel-${i}"${init.controls.channels.includes(i) ? " checked" : ""}> ${n}</label>`).join("");
  options($("patch-corruption"), Object.entries(init.corruptions), "rtg");
  const m = init.max_steps, span = init.model.config.max_timestep;
  $("t-adjust").min = String(-span); $("t-adjust").max = String(span);
  document.querySelectorAll("[data-note]").forEach((el) => { el.textContent = init.notes[el.dataset.note] || ""; });
  syncControls(init.controls);
  void m;
}

function syncControls(c) {
  if (!c) return;
  const act = document.activeElement;
  const set = (id, fn) => { const el = $(id); if (el !== act) fn(el); };
  const span = c.extrapolate ? 10 : 1;
  set("rtg-slider", (el) => { el.min = String(-span); el.max = String(span); el.step = c.extrapolate ? "0.05" : "0.01"; el.value = String(c.rtg); });
  set("rtg-value", (el) => { el.value = String(+c.rtg.toFixed(3)); });
  $("extrapolate").checked = c.extrapolate;
  set("t-adjust", (el) => { el.value = String(c.t_adjust); });
  $("t-adjust-value").textContent = String(c.t_adjust);
  $("greedy").checked = c.greedy;
  set("temperature", (el) => { el.value = String(c.temperature); });
  $("dir-pos").value = c.direction.pos;
  $("dir-neg").value = c.direction.neg || "";
  $("head-select").value = c.head.join(",");
}

function setAutoplay(on) {
  S.autoplay = on;
  $("autoplay").checked = on;
  if (on) autoplayTick();
}

function autoplayTick() {
  if (!S.autoplay) return;
  if (S.step && S.step.status !== "running") { setAutoplay(false); return; }
  if (Object.keys(S.pendingActs).length === 0) act("model");
  setTimeout(autoplayTick, 120);
}

function wire() {
  $("act-buttons").onclick = (e) => { const b = e.target.closest("button"); if (b) act(b.dataset.action); };
  $("act-model").onclick = () => act("model");
  $("autoplay").onchange = (e) => setAutoplay(e.target.checked);
  $("greedy").onchange = (e) => send({ type: "set", greedy: e.target.checked });
  $("temperature").onchange = (e) => send({ type: "set", temperature: Number(e.target.value) });
  $("reset").onclick = () => send({ type: "reset", seed: Number($("seed").value) });
  $("env-select").onchange = (e) => send({ type: "reset", seed: Number($("seed").value), env_id: e.target.value });
  $("model-select").onchange = (e) => { showMessage(`loading ${e.target.value} ...`, "info"); send({ type: "model", name: e.target.value }); };
  $("scenario").onchange = (e) => { if (e.target.value) send({ type: "scenario", name: e.target.value }); e.target.value = ""; };
  $("rtg-slider").oninput = (e) => { $("rtg-value").value = e.target.value; sendControl({ rtg: Number(e.target.value) }); };
  $("rtg-value").onchange = (e) => sendControl({ rtg: Number(e.target.value) });
  $("extrapolate").onchange = (e) => send({ type: "set", extrapolate: e.target.checked });
  $("t-adjust").oninput = (e) => { $("t-adjust-value").textContent = e.target.value; sendControl({ t_adjust: Number(e.target.value) }); };
  const dir = () => send({ type: "set", direction: { pos: $("dir-pos").value, neg: $("dir-neg").value || null } });
  $("dir-pos").onchange = dir;
  $("dir-neg").onchange = dir;
  $("head-select").onchange = (e) => send({ type: "set", head: e.target.value.split(",").map(Number) });
  $("ablation-toggles").onchange = () => send({ type: "set",
    ablate: [...document.querySelectorAll("[data-testid=ablation-toggles] input:checked")].map((el) => el.value) });
  $("ablation-kind").onchange = (e) => send({ type: "set", kind: e.target.value });
  $("channels").onchange = () => send({ type: "set",
    channels: [...document.querySelectorAll("[data-testid=channels] input:checked")].map((el) => Number(el.value)) });
  $("closed-loop-run").onclick = () => send({ type: "closed_loop", episodes: Number($("closed-loop-episodes").value) });
  $("probes-fit").onclick = () => send(probesMessage());
  $("probes-alpha").oninput = (e) => { $("probes-alpha-value").textContent = e.target.value; send(probesMessage()); };
  $("probes-concept").onchange = () => send(probesMessage());
  $("probes-site").onchange = () => send(probesMessage());
  $("probes-act").onclick = () => send(probesMessage(true));
  $("memory-adversaries").onclick = (e) => {
    const td = e.target.closest("td.adv");
    if (!td) return;
    const tr = td.closest("tr");
    const load = { layout: tr.dataset.layout, edit: tr.dataset.edit, rtg: Number(td.dataset.rtg) };
    load.seq = send(Object.assign({ type: "adversary" }, load));
    S.memoryLoad = load;
    $("memory-coef-on").checked = false;
  };
  $("memory-coef").oninput = (e) => { $("memory-coef-value").textContent = e.target.value; $("memory-coef-on").checked = true; sendMemory(memoryMessage()); };
  $("memory-coef-on").onchange = () => sendMemory(memoryMessage());
  $("memory-act").onclick = () => sendMemory(memoryMessage(true));
  $("patch-run").onclick = () => send({ type: "patch", corruption: $("patch-corruption").value, hooks: $("patch-hooks").value });
  const goto = (i) => { if (S.step && i >= 0 && i < S.step.n_steps) send({ type: "goto", step: i }); };
  $("history-scrub").oninput = (e) => goto(Number(e.target.value));
  $("history-back").onclick = () => S.step && goto(S.step.step - 1);
  $("history-forward").onclick = () => S.step && goto(S.step.step + 1);
  $("history-list").onclick = (e) => { const s = e.target.dataset.step; if (s !== undefined) goto(Number(s)); };
  $("frame").onclick = (e) => {
    const cell = e.target.closest("rect.cell");
    if (!cell) return;
    const xy = [Number(cell.dataset.x), Number(cell.dataset.y)];
    const mode = $("edit-mode").value;
    if (mode !== "agent") send({ type: "edit", op: mode, cell: xy });
    else send({ type: "edit", op: "agent", cell: xy, dir: Number($("agent-dir").value) });
  };
  $("agent-dir").onchange = (e) => send({ type: "edit", op: "agent", dir: Number(e.target.value) });
  // after a choice in a menu or on a slider, the arrow keys play again (instead of moving the control)
  document.querySelectorAll("select, input[type=range]").forEach((el) => el.addEventListener("change", () => el.blur()));
  document.addEventListener("keydown", (e) => {
    const t = e.target, tag = t && t.tagName;
    if (tag === "SELECT" || tag === "TEXTAREA" || (tag === "INPUT" && !["checkbox", "radio", "button"].includes(t.type))) return;
    if (e.key in ACTION_KEYS) { e.preventDefault(); act(ACTION_KEYS[e.key]); }
    else if (e.key === "m") act("model");
    else if (e.key === "[" && S.step) goto(S.step.step - 1);
    else if (e.key === "]" && S.step) goto(S.step.step + 1);
  });
}

wire();
connect();
