// Live values: the page's Server-Sent Events (data-stream on <body>) update the readings shown, and
// their colours, in place. The bands and their severity order come from the server (data-levels).
(() => {
  "use strict";
  const body = document.body;
  const source = body.dataset.stream;
  if (!source || !window.EventSource) return;
  const { bands, severity } = JSON.parse(body.dataset.levels);

  const inside = (v, [low, high]) => (low === null || v >= low) && (high === null || v <= high);
  const level = (metric, v) => {
    const band = bands[metric];
    if (!band) return "plain";
    if (inside(v, band.good)) return "good";
    return inside(v, band.fair) ? "fair" : "poor";
  };
  // As the server's charts.num: whole numbers from 100 up, one decimal below.
  const num = (v) => (Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(1));

  const retile = (tile) => {
    const levels = [...tile.querySelectorAll(".metric")].map((m) => m.dataset.level);
    tile.dataset.level = levels.reduce(
      (a, b) => (severity.indexOf(b) > severity.indexOf(a) ? b : a), "none");
  };

  const show = (reading) => {
    const at = Date.parse(reading.ts);
    for (const el of document.querySelectorAll(`.metric[data-metric="${CSS.escape(reading.name)}"]`)) {
      if (!el.dataset.devices.split(" ").includes(reading.device)) continue;
      if (el.dataset.ts && Date.parse(el.dataset.ts) > at) continue; // older than what is shown
      el.dataset.ts = reading.ts;
      el.dataset.level = level(reading.name, reading.value);
      el.querySelector(".v").textContent = num(reading.value);
      const tile = el.closest(".tile");
      if (tile) retile(tile);
    }
  };

  const events = new EventSource(source);
  events.addEventListener("ready", () => { body.dataset.live = "on"; });
  events.addEventListener("error", () => { body.dataset.live = "off"; });
  events.addEventListener("reading", (e) => show(JSON.parse(e.data)));
})();
