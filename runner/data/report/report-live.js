/* runner serve: refreshes the page's figures from live.json every few seconds (same origin
   only; the page loads nothing else), and the whole page when a newer report is ready. */
(function () {
  "use strict";
  var cfg = JSON.parse(document.getElementById("live-config").textContent);
  var loaded = Date.now();
  function fmt(n) { return Number(n).toLocaleString("en-US"); }
  function set(key, text) {
    var e = document.querySelector('[data-figure="' + key + '"]');
    if (e) e.textContent = text;
  }
  function duration(s) {
    if (s == null) return "-";
    if (s < 60) return s.toFixed(0) + " s";
    var m = Math.round(s / 60);
    if (m < 60) return m + " min";
    return Math.floor(m / 60) + " h " + ("0" + (m % 60)).slice(-2) + " min";
  }
  function money(nano) {
    return (nano / 1e9).toLocaleString("en-US", { minimumFractionDigits: 6,
      maximumFractionDigits: 6 }) + " " + cfg.currency;
  }
  function show(d) {
    set("succeeded", fmt(d.succeeded));
    set("failed", fmt(d.failed));
    set("pending", fmt(d.pending));
    set("cost", money(d.cost_nano));
    set("rate", d.live ? fmt(d.rate) + " rows/s" : "-");
    set("in_flight", d.live ? fmt(d.in_flight) + " / " + fmt(d.cap) : "-");
    set("eta", d.live ? duration(d.eta_s) : "-");
    var active = d.keys.filter(function (k) { return k.state === "active"; }).length;
    set("keys", d.keys.length ? active + " of " + d.keys.length + " active" : "-");
    var state = document.getElementById("live-state");
    if (state) state.textContent = d.live ? "running" : "not running";
    document.documentElement.setAttribute("data-live-at", String(d.generated_at));
    // Charts come with the page: reload it for a newer report, at most once a minute.
    if (d.report_at && d.report_at !== cfg.report_at && Date.now() - loaded > 60000) {
      location.reload();
    }
  }
  function tick() {
    fetch("live.json", { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
      .then(show)
      .catch(function () {
        var state = document.getElementById("live-state");
        if (state) state.textContent = "no answer from the server";
      });
  }
  setInterval(tick, cfg.every * 1000);
})();
