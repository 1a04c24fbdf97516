// A 2-D map drawn with plotly.js scattergl from one binary payload (ood_core.figures.maps.encode_map):
// a JSON header, then x/y (float32), the sample index (uint16/int32), an optional score (float32) and
// the ringed (selected) positions (uint32) as typed-array views, no per-point objects. The plot lives
// across reruns: Streamlit keeps this element's DOM while its key is stable and calls this function
// again with each rerun's payload; the plot is rebuilt only when the points' digest changes, and a
// new selection only redraws the rings (docs/architecture.md, "The app"). Once drawn, the digest goes
// back as the state "has", and Python sends only the rings until the points change. A lasso or box
// selection is sent back as payload positions (a trigger value), which Python maps to samples.
const TEXT = new TextDecoder();
const TYPES = { f4: Float32Array, u2: Uint16Array, i4: Int32Array, u4: Uint32Array };
// What each map did when (performance.now()): read by bench/browser_latency.py and the browser test.
const LOG = (window.__oodMapLog = window.__oodMapLog || []);

function plotlyGate() {
  // Shared with loader.js: whichever runs first creates the promise plotly.js resolves.
  if (!window.__oodPlotly) {
    let resolve;
    const ready = new Promise((r) => { resolve = r; });
    window.__oodPlotly = { ready, resolve, loading: false };
  }
  if (window.Plotly) window.__oodPlotly.resolve(window.Plotly);
  return window.__oodPlotly;
}

function decode(bytes) {
  // Copy once into an aligned buffer: the protobuf's bytes may start at any offset.
  const buf = bytes.slice().buffer;
  const view = new DataView(buf);
  if (TEXT.decode(new Uint8Array(buf, 0, 4)) !== "OODM") throw new Error("not a map payload");
  const hlen = view.getUint32(4, true);
  const header = JSON.parse(TEXT.decode(new Uint8Array(buf, 8, hlen)));
  const base = 8 + hlen;
  const arrays = {};
  for (const a of header.arrays) arrays[a.name] = new TYPES[a.dtype](buf, base + a.offset, a.length);
  return { header, arrays };
}

function traces(header, arrays) {
  return header.traces.map((t, j) => {
    const end = t.start + t.count;
    const marker = { ...t.marker };
    if (header.scale) {
      Object.assign(marker, {
        color: arrays.value.subarray(t.start, end), colorscale: "Viridis", cmin: header.scale.cmin,
        cmax: header.scale.cmax, showscale: j === 0, colorbar: { title: { text: header.scale.title } },
      });
    }
    const tr = {
      type: "scattergl", mode: "markers", name: t.name, showlegend: t.showlegend, marker,
      x: arrays.x.subarray(t.start, end), y: arrays.y.subarray(t.start, end),
      customdata: arrays.index.subarray(t.start, end),
      hovertemplate: `<b>${t.dataset}</b> #%{customdata}<extra></extra>`,
    };
    if (t.legendgroup) tr.legendgroup = t.legendgroup;
    return tr;
  });
}

function layout(header) {
  return {
    height: header.height, margin: { l: 10, r: 10, t: 20, b: 10 }, legend: { itemsizing: "constant" },
    dragmode: "lasso", hovermode: "closest", uirevision: header.digest,
    xaxis: { showticklabels: false, zeroline: false }, yaxis: { showticklabels: false, zeroline: false },
  };
}

function drawRings(st) {
  // The rings are drawn on a 2-D canvas over the plot, not as a plotly trace: restyling any trace
  // makes plotly recalculate and redraw all 100,000 points (about a second in software GL), while
  // these circles take a millisecond. Hand-written for that reason; positions come from plotly's axes.
  const fl = st.div._fullLayout, p = st.shown;
  if (!fl || !fl.xaxis || !p) return;
  const xa = fl.xaxis, ya = fl.yaxis, c = st.canvas, dpr = window.devicePixelRatio || 1;
  c.width = Math.round(fl.width * dpr); c.height = Math.round(fl.height * dpr);
  c.style.width = `${fl.width}px`; c.style.height = `${fl.height}px`;
  const ctx = c.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, fl.width, fl.height);
  const ring = p.arrays.ring, r = (p.header.size + 7) / 2;
  st.div.dataset.rings = String(ring.length);
  if (!ring.length) return;
  ctx.save();
  ctx.beginPath();
  ctx.rect(xa._offset, ya._offset, xa._length, ya._length);
  ctx.clip();
  ctx.beginPath();
  for (let i = 0; i < ring.length; i++) {
    const px = xa._offset + xa.d2p(p.arrays.x[ring[i]]), py = ya._offset + ya.d2p(p.arrays.y[ring[i]]);
    ctx.moveTo(px + r, py);
    ctx.arc(px, py, r, 0, 2 * Math.PI);
  }
  ctx.strokeStyle = "black";
  ctx.lineWidth = 1.5;
  ctx.stroke();
  ctx.restore();
}

function ringKey(arrays) {
  const r = arrays.ring;
  let h = r.length;
  for (let i = 0; i < r.length; i++) h = (Math.imul(h, 31) + r[i]) | 0;
  return `${r.length}:${h}`;
}

export default function ({ data, parentElement, setTriggerValue, setStateValue }) {
  if (!data) return;
  LOG.push([performance.now(), "payload", data.length]);
  let st = parentElement.__oodMap;
  if (!st) {
    const wrap = document.createElement("div");
    wrap.className = "ood-map-wrap";
    const div = document.createElement("div");
    div.className = "ood-map";
    const canvas = document.createElement("canvas");
    canvas.className = "ood-map-rings";
    wrap.append(div, canvas);
    parentElement.appendChild(wrap);
    st = parentElement.__oodMap = { div, canvas, digest: null, ring: null, pending: null, shown: null };
    LOG.push([performance.now(), "mount"]);
  }
  let payload;
  try {
    payload = decode(data);
  } catch (e) {
    st.div.textContent = `This map could not be read: ${e.message}`;
    return;
  }
  st.pending = payload;  // only the latest payload is drawn if several arrive during a draw
  if (!window.Plotly && !st.digest) st.div.textContent = "Loading the plotting library…";
  // One draw at a time: a rerun's payload waits for the draw in progress, then only the latest is drawn.
  st.chain = (st.chain || Promise.resolve())
    .then(() => plotlyGate().ready)
    .then((Plotly) => draw(Plotly, st, setTriggerValue, setStateValue))
    .catch((e) => { st.div.textContent = `This map could not be drawn: ${e.message}`; });
  // Streamlit calls this cleanup on unmount, but also at once when it re-ran this function before an
  // earlier call's module import had resolved (a rerun's payloads can arrive that close together):
  // only a map whose element has left the page is purged (freeing its WebGL context), a live one is kept.
  return () => setTimeout(() => {
    if (parentElement.isConnected || parentElement.__oodMap !== st) return;
    if (window.Plotly && st.digest) window.Plotly.purge(st.div);
    parentElement.__oodMap = null;
    LOG.push([performance.now(), "unmount"]);
  }, 0);
}

async function draw(Plotly, st, setTriggerValue, setStateValue) {
  const p = st.pending;
  if (!p) return;
  st.pending = null;
  const { header, arrays } = p;
  const rk = ringKey(arrays);
  if (st.digest === header.digest) {
    // Same points: only the rings may have moved. A rings-only payload keeps the points drawn.
    st.shown = header.rings_only ? { header: st.shown.header, arrays: { ...st.shown.arrays, ring: arrays.ring } } : p;
    if (st.ring !== rk) {
      drawRings(st);
      st.ring = rk;
      LOG.push([performance.now(), "ring", header.digest]);
    }
    if (!header.rings_only) setStateValue("has", header.digest);
    return;
  }
  if (header.rings_only) {
    // Rings for points this element does not hold (it was re-created): ask for the points.
    LOG.push([performance.now(), "need", header.digest]);
    setStateValue("has", null);
    return;
  }
  if (st.digest === null) st.div.textContent = "";
  await Plotly.react(st.div, traces(header, arrays), layout(header), { responsive: true, displaylogo: false });
  st.digest = header.digest;
  st.ring = rk;
  st.shown = p;
  st.div.dataset.points = String(header.n);
  st.div.dataset.digest = header.digest;
  drawRings(st);
  LOG.push([performance.now(), "drawn", header.digest]);
  setStateValue("has", header.digest);  // later reruns send only the rings
  if (!st.bound) {
    st.bound = true;
    // Zoom, pan, autoscale and resize end in a redraw of the plot: the rings follow.
    st.div.on("plotly_afterplot", () => drawRings(st));
    st.div.on("plotly_selected", (ev) => {
      if (!ev || !ev.points) return;
      LOG.push([performance.now(), "selected", ev.points.length]);
      const h = st.shown.header, n = h.traces.length, pos = [];
      for (const pt of ev.points) {
        if (pt.curveNumber < n) pos.push(h.traces[pt.curveNumber].start + pt.pointIndex);
      }
      if (!pos.length) return;
      pos.sort((a, b) => a - b);
      setTriggerValue("selected", { digest: h.digest, positions: pos });
    });
  }
}
