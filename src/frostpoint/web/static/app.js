// The dashboard's only script besides htmx and Chart.js: served by the service, so the
// Content-Security-Policy can forbid inline script (docs/web.md).
"use strict";

function humanBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n.toFixed(0)) + " " + units[i];
}

function drawCharts(root) {
  if (typeof Chart === "undefined") return;
  root.querySelectorAll("canvas[data-chart]").forEach(function (canvas) {
    if (canvas.dataset.drawn) return;
    canvas.dataset.drawn = "1";
    const spec = JSON.parse(canvas.dataset.chart);
    const ticks = spec.bytes ? { callback: function (v) { return humanBytes(v); } } : {};
    new Chart(canvas, {
      type: spec.type,
      data: { labels: spec.labels,
              datasets: spec.series.map(function (s) { return { label: s.label, data: s.data }; }) },
      options: { animation: false, responsive: true, maintainAspectRatio: false,
                 scales: { y: { beginAtZero: true, ticks: ticks } } },
    });
  });
}

// A form with data-confirm asks first: risky doctor fixes, deletes, cancels.
document.addEventListener("submit", function (ev) {
  const msg = ev.target.dataset && ev.target.dataset.confirm;
  if (msg && !window.confirm(msg)) ev.preventDefault();
}, true);

document.addEventListener("DOMContentLoaded", function () { drawCharts(document); });
document.addEventListener("htmx:afterSwap", function (ev) { drawCharts(ev.target); });
