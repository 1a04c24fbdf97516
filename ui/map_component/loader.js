// Evaluates plotly.js (sent once per session as the component's bytes) into window.Plotly, and
// tells Python through the component's state so later reruns send nothing (docs/architecture.md,
// "The app"). The maps wait on window.__oodPlotly, whichever of the two runs first creates it.
function plotlyGate() {
  if (!window.__oodPlotly) {
    let resolve;
    const ready = new Promise((r) => { resolve = r; });
    window.__oodPlotly = { ready, resolve, loading: false };
  }
  return window.__oodPlotly;
}

export default function ({ data, setStateValue }) {
  const gate = plotlyGate();
  if (window.Plotly) {
    gate.resolve(window.Plotly);
    if (data) setStateValue("loaded", true);
    return;
  }
  if (!data || gate.loading) return;
  gate.loading = true;
  const url = URL.createObjectURL(new Blob([data], { type: "text/javascript" }));
  const script = document.createElement("script");
  script.src = url;  // a classic script: plotly.min.js's UMD wrapper sets window.Plotly
  script.onload = () => {
    URL.revokeObjectURL(url);
    gate.resolve(window.Plotly);
    setStateValue("loaded", true);
  };
  script.onerror = () => { gate.loading = false; };
  document.head.appendChild(script);
}
