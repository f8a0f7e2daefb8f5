/* runner report: draws the job's charts with uPlot from the JSON embedded in the page. */
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var BLUE = "#2563eb", RED = "#dc2626", GREEN = "#16a34a", GREY = "#9ca3af",
    ORANGE = "#ea580c";
  var PALETTE = [BLUE, ORANGE, GREEN, "#9333ea", "#0891b2", "#ca8a04", "#db2777", "#4b5563"];
  var charts = [];

  function fmtSeconds(v) {
    if (v == null) return "";
    if (v < 1) return (v * 1000).toPrecision(3) + " ms";
    if (v < 120) return v.toPrecision(3) + " s";
    return (v / 60).toFixed(1) + " min";
  }

  var SPAN = data.span.end - data.span.start;

  function fmtTime(v) {
    if (v == null) return "";
    var iso = new Date(v * 1000).toISOString();  // always UTC
    if (SPAN > 2 * 86400) return iso.slice(5, 16).replace("T", " ");
    return SPAN > 3 * 3600 ? iso.slice(11, 16) : iso.slice(11, 19);
  }

  function plotWidth(el) {
    return Math.max(260, Math.floor(el.getBoundingClientRect().width));
  }

  function empty(key, text) {
    var el = document.querySelector("#chart-" + key + " .plot");
    if (el) el.innerHTML = '<div class="empty">' + text + "</div>";
  }

  function draw(key, opts, series) {
    var el = document.querySelector("#chart-" + key + " .plot");
    if (!el) return;
    opts.width = plotWidth(el);
    var timeAxis = !(opts.scales && opts.scales.x && opts.scales.x.time === false);
    if (timeAxis) {
      // The page states its times in UTC, so the axes do too, whatever the reader's zone;
      // one line of labels (uPlot's two-line default collides at minute boundaries).
      opts.axes[0] = Object.assign({ space: 80, values: function (u, vals) {
        return vals.map(fmtTime); } },
        opts.axes[0]);
      opts.series[0] = Object.assign({ label: "UTC", value: function (u, v) {
        return v == null ? "--" : fmtTime(v); } }, opts.series[0]);
    }
    opts.height = opts.height || 230;
    var u = new uPlot(opts, series, el);
    charts.push({ u: u, el: el, height: opts.height });
  }

  function constant(xs, value) {
    return xs.map(function () { return value; });
  }

  function hasValues(arr) {
    return arr.some(function (v) { return v != null && v !== 0; });
  }

  // Throughput against the ideal C/L line.
  var thr = data.throughput, tl = data.timeline, tier = data.tier;
  if (hasValues(thr.done)) {
    var series = [{}, { label: "answered rows/s", stroke: BLUE, width: 2, fill: "rgba(37,99,235,0.08)" }];
    var cols = [thr.t, thr.done];
    if (tl.recorded) {
      series.push({ label: "sent/s (attempts)", stroke: GREY, width: 1 });
      cols.push(tl.sent);
    }
    if (tier.ideal_rps) {
      series.push({ label: "ideal C/L", stroke: GREEN, width: 2, dash: [6, 4],
        points: { show: false } });
      cols.push(constant(thr.t, tier.ideal_rps));
    }
    draw("throughput", { series: series, scales: { y: { range: function (u, min, max) {
      return [0, Math.max(max, tier.ideal_rps || 0) * 1.1 || 1]; } } },
      axes: [{}, { label: "rows / s" }] }, cols);
  } else {
    empty("throughput", "No row answered yet.");
  }

  // In flight against the concurrency limit, 429s marked.
  if (tl.recorded) {
    var marks = tl.rate_limited.map(function (v) { return v ? v : null; });
    draw("inflight", {
      series: [
        {},
        { label: "in flight", stroke: BLUE, width: 2, fill: "rgba(37,99,235,0.10)" },
        { label: "limit", stroke: "#111827", width: 1.5, paths: uPlot.paths.stepped({ align: 1 }) },
        { label: "429s/s", stroke: RED, fill: RED, scale: "r", paths: function () { return null; },
          points: { show: true, size: 6, stroke: RED, fill: RED } }
      ],
      scales: { y: { range: function (u, min, max) { return [0, max * 1.1 || 1]; } },
        r: { range: function (u, min, max) { return [0, Math.max(1, (max || 0) * 1.2)]; } } },
      axes: [{}, { label: "requests" },
        { scale: "r", side: 1, label: "429 / s", stroke: RED, grid: { show: false } }]
    }, [tl.t, tl.in_flight, tl.cap, marks]);
  } else {
    empty("inflight", data.job.mode === "batch"
      ? "Batch mode: the requests ran on the platform's side (see Batches below)."
      : "No timeline was recorded for this job (it ran before the runner kept one).");
  }

  // Latency percentiles over time.
  var lat = data.latency;
  if (lat.count) {
    draw("latency", {
      series: [{},
        { label: "p50", stroke: BLUE, width: 2, value: function (u, v) { return fmtSeconds(v); } },
        { label: "p90", stroke: ORANGE, width: 1.5, value: function (u, v) { return fmtSeconds(v); } },
        { label: "p99", stroke: RED, width: 1.5, value: function (u, v) { return fmtSeconds(v); } }],
      scales: { y: { range: function (u, min, max) { return [0, max * 1.1 || 1]; } } },
      axes: [{}, { label: "seconds" }]
    }, [lat.t, lat.series.p50, lat.series.p90, lat.series.p99]);
  } else {
    empty("latency", "No latency to show yet.");
  }

  // A log-binned histogram: bars at the bins' geometric centres on a log x axis.
  function histogram(key, hist, label, stroke) {
    if (!hist.counts.length) { empty(key, "Nothing to show yet."); return; }
    var xs = [], ys = hist.counts.slice();
    for (var i = 0; i < hist.counts.length; i++) {
      xs.push(Math.sqrt(hist.edges[i] * hist.edges[i + 1]));
    }
    draw(key, {
      series: [{ label: "seconds", value: function (u, v) { return fmtSeconds(v); } },
        { label: label, stroke: stroke, fill: stroke + "99", width: 1,
          paths: uPlot.paths.bars({ size: [0.9, 60], align: 0 }), points: { show: false } }],
      scales: { x: { time: false, distr: 3 }, y: { range: function (u, min, max) {
        return [0, max * 1.1 || 1]; } } },
      axes: [{ values: function (u, vals) { return vals.map(fmtSeconds); } },
        { label: "rows" }]
    }, [xs, ys]);
  }
  histogram("latency-hist", lat.histogram, "rows", BLUE);

  // Cumulative cost over time, one line per model.
  var models = Object.keys(thr.cost);
  if (models.length) {
    var cs = [{}], cc = [thr.t];
    models.forEach(function (m, i) {
      var colour = PALETTE[i % PALETTE.length];
      cs.push({ label: m, stroke: colour, width: 2,
        value: function (u, v) { return v == null ? "-" : v.toFixed(6) + " " + data.currency; } });
      cc.push(thr.cost[m]);
    });
    draw("cost", { series: cs, scales: { y: { range: function (u, min, max) {
      return [0, max * 1.1 || 1]; } } },
      axes: [{}, { label: data.currency, size: 80, values: function (u, vals) {
        return vals.map(function (v) { return v == null ? "" : +v.toPrecision(3) + ""; }); } }]
    }, cc);
  } else {
    empty("cost", "No billed cost yet.");
  }

  // Failed rows and retried attempts per second.
  if (hasValues(thr.failed) || (tl.recorded && hasValues(tl.retries))) {
    var fs = [{}, { label: "failed rows/s", stroke: RED, width: 2, fill: "rgba(220,38,38,0.08)" }];
    var fc = [thr.t, thr.failed];
    if (tl.recorded) {
      fs.push({ label: "retries/s", stroke: ORANGE, width: 1.5 });
      fc.push(tl.retries);
    }
    draw("failures", { series: fs, scales: { y: { range: function (u, min, max) {
      return [0, max * 1.1 || 1]; } } }, axes: [{}, { label: "per second" }] }, fc);
  } else {
    empty("failures", "No row failed and nothing was retried.");
  }

  if (data.tasks.count) histogram("tasks", data.tasks.histogram, "tasks", "#9333ea");

  // Fit the charts to their boxes on resize, and to the paper when printing.
  function fit() {
    charts.forEach(function (c) {
      c.u.setSize({ width: plotWidth(c.el), height: c.height });
    });
  }
  var pending = null;
  window.addEventListener("resize", function () {
    clearTimeout(pending);
    pending = setTimeout(fit, 100);
  });
  window.addEventListener("beforeprint", function () {
    charts.forEach(function (c) { c.u.setSize({ width: 330, height: 170 }); });
  });
  window.addEventListener("afterprint", fit);
  document.documentElement.setAttribute("data-charts", String(charts.length));
})();
