// Charts from data the page carries as JSON (no inline script: the CSP forbids it), drawn with Chart.js.
(() => {
  "use strict";
  if (typeof Chart === "undefined") return;
  const read = (id) => {
    const el = document.getElementById(id);
    return el ? JSON.parse(el.textContent) : null;
  };
  const options = (unit, max) => ({
    responsive: true,
    maintainAspectRatio: false,
    animation: false,
    scales: { y: { beginAtZero: true, max, title: { display: true, text: unit } }, x: { ticks: { display: false } } },
    plugins: { legend: { display: false } },
  });
  const builds = read("build-chart-data");
  if (builds) {
    new Chart(document.getElementById("duration-chart"), {
      type: "bar",
      data: { labels: builds.labels, datasets: [{ label: "Duration (s)", data: builds.duration, backgroundColor: "#0b5cad" }] },
      options: options("seconds"),
    });
    new Chart(document.getElementById("hit-chart"), {
      type: "line",
      data: { labels: builds.labels, datasets: [{ label: "Steps cached (%)", data: builds.hit_rate, borderColor: "#5a32a3", backgroundColor: "#5a32a3" }] },
      options: options("%", 100),
    });
  }
  const daily = read("daily-chart-data");
  if (daily) {
    const o = options("minutes");
    o.plugins.legend.display = true;
    o.scales.x.ticks.display = true;
    o.scales.builds = { position: "right", beginAtZero: true, grid: { drawOnChartArea: false }, title: { display: true, text: "builds" } };
    new Chart(document.getElementById("daily-chart"), {
      data: {
        labels: daily.labels,
        datasets: [
          { type: "bar", label: "Builds", data: daily.builds, yAxisID: "builds", backgroundColor: "#c9d6e3" },
          { type: "line", label: "Build minutes", data: daily.minutes, borderColor: "#0b5cad", backgroundColor: "#0b5cad" },
          { type: "line", label: "Billed minutes", data: daily.billed, borderColor: "#8a5300", backgroundColor: "#8a5300" },
          { type: "line", label: "Saved minutes", data: daily.saved, borderColor: "#1a7f37", backgroundColor: "#1a7f37" },
        ],
      },
      options: o,
    });
  }
  const usage = read("usage-chart-data");
  if (usage) {
    const o = options("minutes");
    o.plugins.legend.display = true;
    o.scales.x.ticks.display = true;
    new Chart(document.getElementById("usage-chart"), {
      type: "bar",
      data: {
        labels: usage.labels,
        datasets: [
          { label: "Build minutes", data: usage.minutes, backgroundColor: "#0b5cad" },
          { label: "Billed minutes", data: usage.billed, backgroundColor: "#8a5300" },
          { label: "Saved minutes", data: usage.saved, backgroundColor: "#1a7f37" },
        ],
      },
      options: o,
    });
  }
})();
