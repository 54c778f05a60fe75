/* saecli report.html: tables (sort, filter, paginate, keyboard), plots (Plotly) and the sample browser.
   Every number comes from the JSON document embedded in the page (the same objects as the CSVs). */
"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("saecli-data").textContent);
  const ALL = DATA.all;
  const DOMAINS = Object.keys(DATA.domains);
  const GROUPS = DOMAINS.concat([ALL]);
  // Okabe-Ito: distinguishable with the common colour-vision deficiencies; "all" in black
  const PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#999999"];
  const colour = (g) => (g === ALL ? "#000000" : PALETTE[DOMAINS.indexOf(g) % PALETTE.length]);
  const PLOT_CONFIG = { displaylogo: false, responsive: true };

  // -- helpers ------------------------------------------------------------------------------------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat(Infinity)) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
    return node;
  }
  const fin = (v) => typeof v === "number" && Number.isFinite(v);
  const fmt = (v, d = 3) => (fin(v) ? v.toFixed(d) : "–");
  const fmtSigned = (v, d = 3) => (fin(v) ? (v >= 0 ? "+" : "") + v.toFixed(d) : "–");
  const fmtP = (v) => (fin(v) ? (v < 1e-3 ? v.toExponential(1) : v.toFixed(3)) : "–");
  const fmtG = (v) => (fin(v) ? (Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-3) ? v.toExponential(2) : String(+v.toPrecision(4))) : "–");
  const records = (t) => t.rows.map((r) => Object.fromEntries(t.columns.map((c, i) => [c, r[i]])));
  function options(select, values, labels) {
    select.replaceChildren(...values.map((v, i) => el("option", { value: v, text: labels ? labels[i] : v })));
  }
  /* An interval bar on [0, 1] with the chance line at 0.5: the AUROC's 95% interval and its point. */
  function intervalBar(point, low, high) {
    const ns = "http://www.w3.org/2000/svg", w = 90, h = 12, x = (v) => 2 + v * (w - 4);
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("class", "ci"); svg.setAttribute("width", w); svg.setAttribute("height", h);
    svg.setAttribute("aria-hidden", "true");
    const line = (x1, x2, y1, y2, stroke, width) => {
      const l = document.createElementNS(ns, "line");
      Object.entries({ x1, x2, y1, y2, stroke, "stroke-width": width }).forEach(([k, v]) => l.setAttribute(k, v));
      svg.append(l);
    };
    line(x(0), x(1), h / 2, h / 2, "#ddd", 1);
    line(x(0.5), x(0.5), 0, h, "#999", 1);
    if (fin(low) && fin(high)) line(x(low), x(high), h / 2, h / 2, "#333", 2.5);
    if (fin(point)) {
      const c = document.createElementNS(ns, "circle");
      c.setAttribute("cx", x(point)); c.setAttribute("cy", h / 2); c.setAttribute("r", 3); c.setAttribute("fill", "#000");
      svg.append(c);
    }
    return svg;
  }

  // -- a small table: sortable headers (buttons, aria-sort), filter, pages, arrow keys between rows --
  class Table {
    constructor(host, { columns, rows, pageSize = 25, sort = null, dir = -1, caption = "", rowId = null, onOpen = null }) {
      Object.assign(this, { host, columns, all: rows, pageSize, sortKey: sort, dir, caption, rowId, onOpen });
      this.filter = () => true;
      this.page = 0;
      this.render();
    }
    column(key) { return this.columns.find((c) => c.key === key); }
    setFilter(f) { this.filter = f; this.page = 0; this.render(); }
    setRows(rows) { this.all = rows; this.page = 0; this.render(); }
    sortBy(key) {
      this.dir = this.sortKey === key ? -this.dir : (this.column(key).num ? -1 : 1);
      this.sortKey = key; this.page = 0; this.render();
      const b = this.host.querySelector(`th[data-key="${key}"] button`);
      if (b) b.focus();
    }
    rowsShown() {
      const rows = this.all.filter(this.filter);
      if (this.sortKey) {
        const c = this.column(this.sortKey), get = c.sort || c.get, dir = this.dir;
        rows.sort((a, b) => {
          const x = get(a), y = get(b);
          const xm = x === null || x === undefined || (typeof x === "number" && !Number.isFinite(x));
          const ym = y === null || y === undefined || (typeof y === "number" && !Number.isFinite(y));
          if (xm || ym) return xm === ym ? 0 : xm ? 1 : -1; // missing values last, either way
          return (x < y ? -1 : x > y ? 1 : 0) * dir;
        });
      }
      return rows;
    }
    render() {
      const rows = this.rowsShown(), pages = Math.max(1, Math.ceil(rows.length / this.pageSize));
      this.page = Math.min(this.page, pages - 1);
      const start = this.page * this.pageSize, shown = rows.slice(start, start + this.pageSize);
      const head = el("tr", {}, this.columns.map((c) => el("th", {
        scope: "col", "data-key": c.key, title: c.title,
        "aria-sort": this.sortKey === c.key ? (this.dir > 0 ? "ascending" : "descending") : "none",
      }, el("button", { type: "button", onclick: () => this.sortBy(c.key) }, c.label))));
      // one row in the tab order (roving tabindex): Tab leaves the table, the arrow keys move within it
      const body = el("tbody", { onkeydown: (e) => this.key(e) }, shown.map((r, i) => {
        const tr = el("tr", { tabindex: i ? "-1" : "0", "data-id": this.rowId ? this.rowId(r) : null },
          this.columns.map((c) => el("td", { class: c.num ? "num" : null }, c.cell ? c.cell(r) : c.num ? fmt(c.get(r)) : c.get(r) ?? "–")));
        if (this.onOpen) tr.addEventListener("click", (e) => { if (!e.target.closest("a,button")) this.onOpen(r, tr); });
        return tr;
      }));
      const table = el("table", {}, this.caption ? el("caption", { text: this.caption }) : null, el("thead", {}, head), body);
      const pager = el("div", { class: "pager" },
        el("button", { type: "button", disabled: this.page === 0, onclick: () => { this.page--; this.render(); } }, "‹ previous"),
        el("span", { class: "count" }, rows.length ? `rows ${start + 1}–${start + shown.length} of ${rows.length}` : "no rows"),
        el("button", { type: "button", disabled: this.page >= pages - 1, onclick: () => { this.page++; this.render(); } }, "next ›"));
      this.host.replaceChildren(el("div", { class: "table-wrap" }, table), pager);
      this.shown = shown;
    }
    key(e) {
      const tr = e.target.closest("tr");
      if (!tr || e.target !== tr) return;
      const move = (to) => { tr.tabIndex = -1; to.tabIndex = 0; to.focus(); e.preventDefault(); };
      if (e.key === "ArrowDown" && tr.nextElementSibling) move(tr.nextElementSibling);
      else if (e.key === "ArrowUp" && tr.previousElementSibling) move(tr.previousElementSibling);
      else if ((e.key === "Enter" || e.key === " ") && this.onOpen) {
        this.onOpen(this.shown[Array.prototype.indexOf.call(tr.parentNode.children, tr)], tr); e.preventDefault();
      }
    }
  }

  // -- head and verdict -----------------------------------------------------------------------------
  document.getElementById("run").textContent =
    `Run ${DATA.run_dir}; data ${DATA.data_source}; layers ${DATA.layers.join(", ")}; domains: ` +
    DOMAINS.map((d) => `${d} ${DATA.domains[d].toLocaleString("en")}`).join(", ") + `; ${DATA.bootstrap} bootstrap resamples.`;
  if (DATA.trained_on_benchmark) {
    document.getElementById("warning").textContent = `In-sample: the preset ${DATA.preset} learned the built-in benchmark; ` +
      "its log-probability and reconstruction AUROCs on it are in-sample, not evidence of detection on unseen text.";
  }
  // the verdict's sentences are summary.md's own, escaped and marked up in Python
  document.getElementById("verdict").innerHTML = DATA.verdict.map((s) => `<li>${s}</li>`).join("");
  document.getElementById("verdict-domains").innerHTML = DATA.verdict_domains.map((s) => `<li>${s}</li>`).join("");
  document.getElementById("page-notes").replaceChildren(...DATA.page_notes.map((n) => el("li", { text: n })));
  document.getElementById("notes").innerHTML = DATA.notes.map((s) => `<li>${s}</li>`).join("");
  if (!DATA.notes.length) document.getElementById("notes-box").hidden = true;
  document.getElementById("tested").textContent = DATA.tested;

  // -- ranking ------------------------------------------------------------------------------------
  const detection = records(DATA.detection).map((r) => ({ ...r, separation: fin(r.auroc) ? Math.abs(r.auroc - 0.5) : null }));
  const rankDomain = document.getElementById("rank-domain"), rankFamily = document.getElementById("rank-family");
  options(rankDomain, GROUPS);
  rankDomain.value = ALL;
  const families = [...new Set(detection.map((r) => r.family))];
  options(rankFamily, ["", ...families], ["every family", ...families]);
  const star = (on) => (on ? el("span", { class: "sig", title: "significant after correction" }, " ★") : null);
  const ranking = new Table(document.getElementById("ranking"), {
    rows: detection, sort: "separation", dir: -1, caption: "Every metric, baseline and probe in each group",
    rowId: (r) => `${r.metric}|${r.domain}`,
    columns: [
      { key: "metric", label: "metric", get: (r) => r.metric, cell: (r) => el("code", { text: r.metric }) },
      { key: "family", label: "family", get: (r) => r.family },
      { key: "domain", label: "domain", get: (r) => r.domain },
      { key: "n", label: "n", num: true, get: (r) => r.n, cell: (r) => r.n.toLocaleString("en") },
      { key: "separation", label: "|AUROC − 0.5|", num: true, get: (r) => r.separation },
      { key: "auroc", label: "AUROC [95% CI]", num: true, get: (r) => r.auroc, title: "P(hall > fact) + ½·P(tie)",
        cell: (r) => el("span", { class: "ci-cell" }, `${fmt(r.auroc)} [${fmt(r.ci_low)}, ${fmt(r.ci_high)}]`, intervalBar(r.auroc, r.ci_low, r.ci_high)) },
      { key: "direction", label: "hall is", get: (r) => (r.direction || "").replace(/^hall /, "") },
      { key: "win_rate", label: "win rate", num: true, get: (r) => r.win_rate,
        cell: (r) => `${fmt(r.win_rate, 2)} [${fmt(r.win_low, 2)}, ${fmt(r.win_high, 2)}]` },
      { key: "mean_diff", label: "Δ mean ± SD", num: true, get: (r) => r.mean_diff, cell: (r) => `${fmtG(r.mean_diff)} ± ${fmtG(r.sd_diff)}` },
      { key: "wilcoxon_p", label: "p", num: true, get: (r) => r.wilcoxon_p, cell: (r) => fmtP(r.wilcoxon_p) },
      { key: "q", label: "q", num: true, get: (r) => r.q, cell: (r) => [fmtP(r.q), star(r.significant)] },
      { key: "vs_baseline", label: "vs baseline [95% CI]", num: true, get: (r) => r.vs_baseline,
        cell: (r) => fin(r.vs_baseline) ? `${fmtSigned(r.vs_baseline)} [${fmtSigned(r.vs_baseline_low)}, ${fmtSigned(r.vs_baseline_high)}]${r.beats_baseline ? " ▲" : ""}` : "–" },
    ],
  });
  const rankSearch = document.getElementById("rank-search");
  function filterRanking() {
    const d = rankDomain.value, f = rankFamily.value, q = rankSearch.value.trim().toLowerCase();
    ranking.setFilter((r) => (!d || r.domain === d) && (!f || r.family === f) && (!q || r.metric.toLowerCase().includes(q)));
  }
  [rankDomain, rankFamily].forEach((s) => s.addEventListener("change", filterRanking));
  rankSearch.addEventListener("input", filterRanking);
  filterRanking();

  // -- plots -------------------------------------------------------------------------------------
  const byKey = new Map(detection.map((r) => [`${r.metric}|${r.domain}`, r]));
  const topAll = detection.filter((r) => r.domain === ALL && fin(r.auroc)).sort((a, b) => b.separation - a.separation || (a.metric < b.metric ? -1 : 1));
  const plotsOn = () => typeof Plotly !== "undefined";
  function plot(id, traces, layout) {
    if (!plotsOn()) { document.getElementById(id).textContent = "(plots need plotly.js, which this page lacks)"; return; }
    Plotly.newPlot(id, traces, Object.assign({ margin: { l: 230, r: 20, t: 40, b: 50 }, hovermode: "closest",
      legend: { title: { text: "group (click to toggle)" } }, font: { size: 12 } }, layout), PLOT_CONFIG);
  }
  const forestMetrics = topAll.slice(0, 20).map((r) => r.metric).reverse();
  function drawPlots() {
    plot("plot-forest", GROUPS.map((g) => {
      const rows = forestMetrics.map((m) => byKey.get(`${m}|${g}`) || {});
      return {
        type: "scatter", mode: "markers", name: g, visible: g === ALL ? true : "legendonly", y: forestMetrics,
        x: rows.map((r) => r.auroc ?? null),
        error_x: { type: "data", symmetric: false, array: rows.map((r) => (fin(r.ci_high) ? r.ci_high - r.auroc : null)),
          arrayminus: rows.map((r) => (fin(r.ci_low) ? r.auroc - r.ci_low : null)), color: colour(g), thickness: 1.5 },
        marker: { color: colour(g), size: 9, symbol: rows.map((r) => (r.significant ? "circle" : "circle-open")) },
        customdata: rows.map((r) => [r.ci_low, r.ci_high, r.q, r.n]),
        hovertemplate: `%{y} (${g})<br>AUROC %{x:.3f} [%{customdata[0]:.3f}, %{customdata[1]:.3f}]<br>q %{customdata[2]:.2g}, n %{customdata[3]}<extra></extra>`,
      };
    }), { title: { text: "Top 20 metrics (all samples): AUROC and 95% interval; filled = significant after correction" },
      xaxis: { title: { text: "AUROC (0.5 = chance)" }, range: [0, 1] }, height: 560,
      shapes: [{ type: "line", x0: 0.5, x1: 0.5, yref: "paper", y0: 0, y1: 1, line: { dash: "dot", color: "#777" } }] });

    const heatMetrics = topAll.slice(0, 12).map((r) => r.metric);
    const cell = (m, g) => byKey.get(`${m}|${g}`) || {};
    plot("plot-domains", [{
      type: "heatmap", x: GROUPS, y: heatMetrics, zmin: 0, zmax: 1, colorscale: "RdBu", reversescale: true,
      z: heatMetrics.map((m) => GROUPS.map((g) => cell(m, g).auroc ?? null)),
      text: heatMetrics.map((m) => GROUPS.map((g) => (fin(cell(m, g).auroc) ? fmt(cell(m, g).auroc) + (cell(m, g).significant ? "*" : "") : ""))),
      texttemplate: "%{text}", colorbar: { title: { text: "AUROC" } },
      hovertemplate: "%{y} in %{x}<br>AUROC %{z:.3f}<extra></extra>",
    }], { title: { text: "AUROC of the top metrics per domain (* significant after correction)" }, height: 80 + 32 * heatMetrics.length + 60,
      yaxis: { autorange: "reversed" } });

    const versus = topAll.filter((r) => r.family !== "baseline" && fin(r.vs_baseline)).slice(0, 12).map((r) => r.metric).reverse();
    if (versus.length) {
      plot("plot-baseline", GROUPS.map((g) => {
        const rows = versus.map((m) => cell(m, g));
        return { type: "scatter", mode: "markers", name: g, visible: g === ALL ? true : "legendonly", y: versus,
          x: rows.map((r) => r.vs_baseline ?? null),
          error_x: { type: "data", symmetric: false, array: rows.map((r) => (fin(r.vs_baseline_high) ? r.vs_baseline_high - r.vs_baseline : null)),
            arrayminus: rows.map((r) => (fin(r.vs_baseline_low) ? r.vs_baseline - r.vs_baseline_low : null)), color: colour(g) },
          marker: { color: colour(g), size: 9, symbol: rows.map((r) => (r.beats_baseline ? "triangle-up" : "circle-open")) },
          hovertemplate: `%{y} (${g})<br>vs baseline %{x:+.3f}<extra></extra>` };
      }), { title: { text: "Oriented AUROC minus the best log-prob baseline's (95% paired bootstrap interval; ▲ beats it)" },
        xaxis: { title: { text: "difference of AUROC" }, zeroline: true }, height: 80 + 30 * versus.length + 60 });
    } else {
      document.getElementById("plot-baseline").replaceWith(el("p", { class: "explain", text: "No comparison with a baseline in this run (no baselines, or --bootstrap 0)." }));
    }
  }

  // -- samples -----------------------------------------------------------------------------------
  const ST = DATA.sample_table, samples = ST.samples, metricIndex = new Map(ST.metrics.map((m, i) => [m, i]));
  const scatterSelect = document.getElementById("scatter-metric"), sortSelect = document.getElementById("sample-sort");
  const ranked = topAll.map((r) => r.metric).filter((m) => metricIndex.has(m));
  const sampleMetrics = ranked.concat(ST.metrics.filter((m) => !ranked.includes(m)));
  options(scatterSelect, ranked.slice(0, 20));
  options(sortSelect, sampleMetrics);
  document.getElementById("samples-explain").textContent =
    `${samples.length.toLocaleString()} of ${DATA.samples.toLocaleString()} samples. Search by id (an exact id opens it) or by text; ` +
    "click a row or press Enter to see its texts, every metric on both and its top SAE features.";
  function drawScatter() {
    const m = scatterSelect.value, i = metricIndex.get(m);
    if (i === undefined) return;
    const traces = DOMAINS.map((d) => {
      const rows = samples.filter((s) => s.domain === d && fin(s.f[i]) && fin(s.h[i]));
      return { type: "scatter", mode: "markers", name: d, x: rows.map((s) => s.f[i]), y: rows.map((s) => s.h[i]),
        customdata: rows.map((s) => s.id), marker: { color: colour(d), size: 6, opacity: 0.7 },
        hovertemplate: "%{customdata}<br>fact %{x:.4g}<br>hall %{y:.4g}<extra>" + d + "</extra>" };
    });
    const values = samples.flatMap((s) => [s.f[i], s.h[i]]).filter(fin);
    const lo = Math.min(...values), hi = Math.max(...values);
    plot("plot-scatter", traces, { title: { text: `${m}: hallucination against fact, one point per sample (${samples.length.toLocaleString()} shown)` },
      xaxis: { title: { text: "fact" } }, yaxis: { title: { text: "hallucination" } }, height: 480, margin: { l: 70, r: 20, t: 40, b: 50 },
      shapes: values.length ? [{ type: "line", x0: lo, y0: lo, x1: hi, y1: hi, line: { dash: "dot", color: "#777" } }] : [] });
    if (plotsOn()) document.getElementById("plot-scatter").on("plotly_click", (ev) => openSample(ev.points[0].customdata, true));
  }
  scatterSelect.addEventListener("change", drawScatter);

  const sampleDomain = document.getElementById("sample-domain"), sampleSearch = document.getElementById("sample-search");
  options(sampleDomain, ["", ...DOMAINS], ["every domain", ...DOMAINS]);
  const delta = (s, i) => (fin(s.f[i]) && fin(s.h[i]) ? s.h[i] - s.f[i] : null);
  const clip = (t, n) => (t && t.length > n ? t.slice(0, n - 1) + "…" : t || "–");
  function sampleColumns() {
    const m = sortSelect.value, i = metricIndex.get(m);
    return [
      { key: "id", label: "id", get: (s) => s.id, cell: (s) => el("code", { text: s.id }) },
      { key: "domain", label: "domain", get: (s) => s.domain },
      { key: "prompt", label: "prompt", get: (s) => s.prompt, cell: (s) => clip(s.prompt, 90) },
      { key: "fact", label: `${m} fact`, num: true, get: (s) => s.f[i], cell: (s) => fmtG(s.f[i]) },
      { key: "hall", label: `${m} hall`, num: true, get: (s) => s.h[i], cell: (s) => fmtG(s.h[i]) },
      { key: "delta", label: "Δ hall − fact", num: true, get: (s) => delta(s, i), cell: (s) => fmtG(delta(s, i)) },
    ];
  }
  const sampleTable = new Table(document.getElementById("samples"), {
    rows: samples, columns: sampleColumns(), sort: "delta", dir: -1, rowId: (s) => s.id, onOpen: (s) => showSample(s),
  });
  sortSelect.addEventListener("change", () => { sampleTable.columns = sampleColumns(); sampleTable.sortKey = "delta"; sampleTable.dir = -1; sampleTable.render(); });
  const byId = new Map(samples.map((s) => [s.id, s]));
  function filterSamples() {
    const d = sampleDomain.value, q = sampleSearch.value.trim().toLowerCase();
    sampleTable.setFilter((s) => (!d || s.domain === d) && (!q || s.id.toLowerCase().includes(q) ||
      [s.prompt, s.fact, s.hall].some((t) => t && t.toLowerCase().includes(q))));
    const exact = byId.get(sampleSearch.value.trim());
    if (exact) showSample(exact);
  }
  sampleDomain.addEventListener("change", filterSamples);
  sampleSearch.addEventListener("input", filterSamples);

  function showSample(s) {
    const detail = document.getElementById("sample-detail");
    document.querySelectorAll("#samples tr.open").forEach((tr) => tr.classList.remove("open"));
    const row = document.querySelector(`#samples tr[data-id="${CSS.escape(s.id)}"]`);
    if (row) row.classList.add("open");
    const texts = el("dl", { class: "texts" },
      el("dt", { text: "prompt" }), el("dd", { text: s.prompt ?? "(the run kept no texts)" }),
      el("dt", { class: "fact", text: "fact" }), el("dd", { text: s.fact ?? "–" }),
      el("dt", { class: "hall", text: "hallucination" }), el("dd", { text: s.hall ?? "–" }));
    const metricsHost = el("div");
    const layers = Object.keys(s.features || {});
    const feats = layers.length ? el("div", {}, el("h4", { text: "Top SAE features per layer (largest |hall − fact| activation)" }),
      layers.map((layer) => {
        const base = DATA.neuronpedia[layer];
        return el("div", {}, el("strong", { text: `layer ${layer}: ` }),
          s.features[layer].length ? s.features[layer].map(([f, a, b], k) => [k ? ", " : "",
            base ? el("a", { href: `${base}/${f}`, target: "_blank", rel: "noopener" }, `#${f}`) : `#${f}`,
            ` (fact ${fmtG(a)}, hall ${fmtG(b)})`]) : "no feature differs");
      })) : el("p", { class: "explain", text: "No SAE features for this run (no residuals.safetensors)." });
    detail.replaceChildren(el("h3", { id: "sample-title", text: `Sample ${s.id} (${s.domain})` }), texts,
      el("div", { class: "cols" }, el("div", {}, el("h4", { text: "Every metric on both texts" }), metricsHost), feats));
    new Table(metricsHost, {
      rows: sampleMetrics.map((m) => ({ m, f: s.f[metricIndex.get(m)], h: s.h[metricIndex.get(m)] })), pageSize: 200,
      columns: [
        { key: "m", label: "metric", get: (r) => r.m, sort: (r) => sampleMetrics.indexOf(r.m), cell: (r) => el("code", { text: r.m }) },
        { key: "f", label: "fact", num: true, get: (r) => r.f, cell: (r) => fmtG(r.f) },
        { key: "h", label: "hallucination", num: true, get: (r) => r.h, cell: (r) => fmtG(r.h) },
        { key: "d", label: "Δ", num: true, get: (r) => (fin(r.f) && fin(r.h) ? r.h - r.f : null), cell: (r) => fmtG(fin(r.f) && fin(r.h) ? r.h - r.f : null) },
      ],
    });
  }
  function openSample(id, scroll) {
    const s = byId.get(id);
    if (!s) return;
    sampleSearch.value = id;
    filterSamples();
    if (scroll) document.getElementById("samples-section").scrollIntoView();
  }

  // -- features ------------------------------------------------------------------------------------
  const features = records(DATA.features);
  const featureLayer = document.getElementById("feature-layer");
  const featureLayers = [...new Set(features.map((f) => String(f.layer)))];
  options(featureLayer, ["", ...featureLayers], ["every layer", ...featureLayers.map((l) => `layer ${l}`)]);
  if (!features.length) {
    document.getElementById("features").replaceChildren(el("p", { class: "explain", text: "No SAE feature ranking in this run (no residuals.safetensors, or no feature differs)." }));
  } else {
    const tops = (f) => [1, 2, 3].filter((k) => f[`top${k}_sample`]).map((k) => el("div", {},
      byId.has(f[`top${k}_sample`]) ? el("button", { type: "button", class: "link", onclick: () => openSample(f[`top${k}_sample`], true) }, f[`top${k}_sample`]) : f[`top${k}_sample`],
      ` (${fmtSigned(f[`top${k}_diff`])}) `, el("span", { class: "excerpt", text: f[`top${k}_text`] || "" })));
    const featureTable = new Table(document.getElementById("features"), {
      rows: features, sort: "score", dir: -1, pageSize: 20, rowId: (f) => `${f.layer}:${f.feature}`,
      columns: [
        { key: "layer", label: "layer", num: true, get: (f) => f.layer, cell: (f) => String(f.layer) },
        { key: "rank", label: "#", num: true, get: (f) => f.rank, cell: (f) => String(f.rank) },
        { key: "feature", label: "feature", num: true, get: (f) => f.feature,
          cell: (f) => (f.url ? el("a", { class: "np-link", href: f.url, target: "_blank", rel: "noopener", title: "Neuronpedia" }, String(f.feature)) : String(f.feature)) },
        { key: "score", label: "score", num: true, get: (f) => f.score, cell: (f) => [fmt(f.score), star(f.significant)] },
        { key: "effect_size", label: "d_z", num: true, get: (f) => f.effect_size, cell: (f) => fmtSigned(f.effect_size, 2) },
        { key: "updown", label: "up / down", num: true, get: (f) => f.n_up - f.n_down, cell: (f) => `${f.n_up} / ${f.n_down}` },
        { key: "p", label: "p", num: true, get: (f) => f.p, cell: (f) => fmtP(f.p) },
        { key: "q", label: "q", num: true, get: (f) => f.q, cell: (f) => fmtP(f.q) },
        { key: "freq_fact", label: "fires fact", num: true, get: (f) => f.freq_fact, cell: (f) => `${(100 * f.freq_fact).toFixed(0)}%` },
        { key: "freq_hall", label: "fires hall", num: true, get: (f) => f.freq_hall, cell: (f) => `${(100 * f.freq_hall).toFixed(0)}%` },
        { key: "auroc", label: "AUROC", num: true, get: (f) => f.auroc },
        { key: "tops", label: "samples where it differs most", get: (f) => f.top1_sample, cell: tops },
      ],
    });
    featureLayer.addEventListener("change", () => {
      const l = featureLayer.value;
      featureTable.setFilter((f) => !l || String(f.layer) === l);
    });
  }
  // printed, the folded parts (notes, per-domain verdicts) are shown too
  window.addEventListener("beforeprint", () => document.querySelectorAll("details").forEach((d) => { d.open = true; }));
  document.body.dataset.tables = "1";
  performance.mark("saecli-tables");
  /* plotly.js (most of the page's bytes) is compiled only now, after the verdict and the tables are
     on screen: it is kept as text in the page and run here, once the browser has painted. */
  function loadPlotly() {
    const source = document.getElementById("plotly-src");
    if (!plotsOn() && source && source.textContent.trim()) {
      const script = document.createElement("script");
      script.textContent = source.textContent;
      document.head.append(script);
    }
  }
  requestAnimationFrame(() => setTimeout(() => {
    loadPlotly();
    drawPlots();
    if (ranked.length) drawScatter();
    performance.mark("saecli-ready");
    document.body.dataset.ready = "1"; // the browser tests wait for this
  }, 0));
})();
