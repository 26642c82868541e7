// The build page: waterfall bars, live steps and logs over SSE, a virtualized log viewer (only the lines in
// view are in the DOM, so 100,000 lines scroll as smoothly as 10), line permalinks and search.
(() => {
  "use strict";
  const root = document.getElementById("build");
  if (!root) return;
  const base = root.dataset.base;
  const cursor = Number(root.dataset.cursor);
  let lastLine = cursor; // the last log line the event stream brought: where a new stream starts
  let live = root.dataset.live === "true";
  const LINE = 20;
  const OVERSCAN = 30;
  const FIRST_WINDOW = 2000;
  const WINDOW = 50000;
  const logEl = document.getElementById("log");
  const spacer = logEl.querySelector(".log-spacer");
  const box = logEl.querySelector(".log-lines");
  const stepsBox = document.getElementById("steps");
  const title = document.getElementById("log-title");
  const logs = new Map(); // step id -> {lines, lastId, loaded, loading, pending}
  let current = null;
  let target = 0;
  let needle = "";
  let follow = true;
  let frame = 0;

  const applyBars = (scope) => {
    for (const bar of scope.querySelectorAll(".bar")) {
      bar.style.left = bar.dataset.offset + "%";
      bar.style.width = bar.dataset.width + "%";
    }
  };

  const entry = (id) => {
    let e = logs.get(id);
    if (!e) {
      e = { lines: [], lastId: 0, loaded: false, loading: null, pending: [] };
      logs.set(id, e);
    }
    return e;
  };

  const stepName = (id) => {
    const el = document.getElementById(`step-${id}`);
    if (!el) return `step ${id}`;
    const parts = [".platform", ".kw", ".instr"].map((s) => el.querySelector(s)?.textContent || "");
    return parts.join(" ").replace(/\s+/g, " ").trim();
  };

  const countSteps = () => {
    const all = stepsBox.querySelectorAll(".step").length;
    const cached = stepsBox.querySelectorAll(".step.cached").length;
    document.getElementById("step-count").textContent = `${all} steps, ${cached} cached`;
  };

  function render() {
    frame = 0;
    const e = current === null ? null : logs.get(current);
    const lines = e ? e.lines : [];
    spacer.style.height = `${lines.length * LINE}px`;
    const top = logEl.scrollTop;
    const first = Math.max(0, Math.floor(top / LINE) - OVERSCAN);
    const last = Math.min(lines.length, Math.ceil((top + logEl.clientHeight) / LINE) + OVERSCAN);
    box.style.transform = `translateY(${first * LINE}px)`;
    const fragment = document.createDocumentFragment();
    const lower = needle.toLowerCase();
    for (let i = first; i < last; i++) {
      const row = document.createElement("div");
      row.className = "log-line";
      const number = i + 1;
      if (number === target) row.classList.add("target");
      if (lower && lines[i].toLowerCase().includes(lower)) row.classList.add("hit");
      const link = document.createElement("a");
      link.href = `#step-${current}-L${number}`;
      link.textContent = String(number);
      link.setAttribute("aria-label", `Link to line ${number}`);
      const text = document.createElement("span");
      text.textContent = lines[i];
      row.append(link, text);
      fragment.append(row);
    }
    box.replaceChildren(fragment);
  }

  const schedule = () => {
    if (!frame) frame = requestAnimationFrame(render);
  };

  async function load(id) {
    const e = entry(id);
    if (e.loaded) return e;
    if (!e.loading) {
      e.loading = (async () => {
        let after = 0;
        for (;;) {
          // A live page reads up to the cursor it was rendered with; the event stream brings the rest.
          const until = live || e.pending.length ? `&until=${cursor}` : "";
          // A small first window paints at once; the rest comes in large ones.
          const limit = after === 0 ? FIRST_WINDOW : WINDOW;
          const url = `${base}/log?step=${id}&after=${after}&limit=${limit}${until}`;
          const response = await fetch(url, { credentials: "same-origin" });
          if (!response.ok) throw new Error(`log of step ${id}: HTTP ${response.status}`);
          const data = await response.json();
          for (const [lineId, text] of data.lines) {
            e.lines.push(text);
            e.lastId = lineId;
          }
          if (data.lines.length) after = data.lines[data.lines.length - 1][0];
          if (current === id) schedule();
          if (!data.more) break;
        }
        for (const [lineId, text] of e.pending) {
          if (lineId > e.lastId) {
            e.lines.push(text);
            e.lastId = lineId;
          }
        }
        e.pending = [];
        e.loaded = true;
        return e;
      })();
    }
    return e.loading;
  }

  async function select(id, line) {
    current = id;
    target = line || 0;
    for (const el of document.querySelectorAll(".step.selected")) el.classList.remove("selected");
    document.getElementById(`step-${id}`)?.classList.add("selected");
    title.textContent = `Log of ${stepName(id)}`;
    logEl.scrollTop = 0;
    schedule();
    await load(id);
    if (current !== id) return;
    const count = logs.get(id).lines.length;
    if (target) {
      logEl.scrollTop = Math.max(0, (target - 5) * LINE);
      follow = false;
    } else if (live) {
      logEl.scrollTop = count * LINE;
      follow = true;
    }
    render();
    if (count === 0) title.textContent = `${stepName(id)} printed nothing`;
  }

  function fromHash() {
    const match = /^#(?:step|log)-(\d+)(?:-L(\d+))?$/.exec(location.hash);
    if (!match) return false;
    select(Number(match[1]), match[2] ? Number(match[2]) : 0);
    return true;
  }

  function platformFilter() {
    const select = document.getElementById("platform-filter");
    const wanted = select ? select.value : "";
    for (const el of stepsBox.querySelectorAll(".step")) {
      el.classList.toggle("hidden", Boolean(wanted) && el.dataset.platform !== wanted);
    }
  }

  logEl.addEventListener("scroll", () => {
    follow = logEl.scrollTop + logEl.clientHeight >= logEl.scrollHeight - 2 * LINE;
    schedule();
  });
  window.addEventListener("hashchange", fromHash);
  window.addEventListener("resize", schedule);
  document.getElementById("platform-filter")?.addEventListener("change", platformFilter);

  document.getElementById("search").addEventListener("submit", async (event) => {
    event.preventDefault();
    needle = document.getElementById("search-q").value.trim();
    const results = document.getElementById("search-results");
    schedule();
    if (!needle) {
      results.replaceChildren();
      return;
    }
    const response = await fetch(`${base}/search?q=${encodeURIComponent(needle)}`, { credentials: "same-origin" });
    const data = await response.json();
    const summary = document.createElement("p");
    const hits = data.hits || [];
    summary.textContent = `${hits.length}${data.limited ? "+" : ""} matching line${hits.length === 1 ? "" : "s"}`;
    const list = document.createElement("ol");
    for (const [stepId, number, text] of hits) {
      const item = document.createElement("li");
      const link = document.createElement("a");
      link.href = `#step-${stepId}-L${number}`;
      link.textContent = `${stepName(stepId).slice(0, 60)} · line ${number}: ${text}`;
      item.append(link);
      list.append(item);
    }
    results.replaceChildren(summary, list);
  });

  applyBars(stepsBox);
  if (!fromHash()) {
    const steps = [...stepsBox.querySelectorAll(".step")];
    const withLines = steps.filter((el) => el.dataset.logs === "1");
    const chosen = root.dataset.failing || (withLines.length ? withLines[withLines.length - 1].id.slice(5) : "");
    if (chosen) select(Number(chosen), 0);
  }

  const listen = () => {
    const events = new EventSource(`${base}/events?after=${lastLine}`);
    // A refused stream (the server follows too many: 503) is closed for good; try again a little later.
    events.addEventListener("error", () => {
      if (events.readyState === EventSource.CLOSED && live) setTimeout(listen, 5000);
    });
    events.addEventListener("steps", (event) => {
      stepsBox.innerHTML = event.data;
      applyBars(stepsBox);
      platformFilter();
      countSteps();
      if (current !== null) document.getElementById(`step-${current}`)?.classList.add("selected");
      if (current === null) {
        const first = stepsBox.querySelector('.step[data-logs="1"]');
        if (first) select(Number(first.id.slice(5)), 0);
      }
    });
    events.addEventListener("log", (event) => {
      for (const [lineId, stepId, text] of JSON.parse(event.data)) {
        lastLine = Math.max(lastLine, lineId);
        const e = entry(stepId);
        if (e.loaded) {
          if (lineId > e.lastId) {
            e.lines.push(text);
            e.lastId = lineId;
          }
        } else {
          e.pending.push([lineId, text]);
        }
      }
      if (current !== null && follow) logEl.scrollTop = logs.get(current).lines.length * LINE;
      schedule();
    });
    events.addEventListener("end", (event) => {
      events.close();
      live = false;
      const final = JSON.parse(event.data);
      const badge = document.getElementById("build-status");
      badge.textContent = final.status;
      badge.className = `badge ${final.status}`;
      document.getElementById("build-duration").textContent = final.duration;
      // A failure: show the page as it is now, with the failing step opened and its error on top.
      if (final.status !== "success" && !location.hash) location.reload();
    });
  };
  if (live) listen();
})();
