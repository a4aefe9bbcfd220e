// The stand-in dashboard's script: reads the token it was bootstrapped with and
// calls the dashboard API with it, as real embedded dashboards do.
(function () {
  "use strict";
  var boot = JSON.parse(document.getElementById("zt-bootstrap").textContent);
  var app = document.getElementById("app");
  var status = document.getElementById("status");
  function load() {
    fetch(boot.api, { headers: { "Authorization": "Bearer " + boot.token, "Accept": "application/json" } })
      .then(function (r) {
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.json();
      })
      .then(function (d) {
        document.getElementById("meetings").textContent = d.meetings;
        document.getElementById("deals").textContent = d.deals;
        document.getElementById("win-rate").textContent = d.win_rate + "%";
        app.setAttribute("data-state", "ready");
        app.setAttribute("data-loaded-at", String(d.served_at));
        app.setAttribute("data-subtenant", d.subtenant);
        status.textContent = "Live data for " + d.tenant + " / " + d.subtenant;
      })
      .catch(function (e) {
        app.setAttribute("data-state", "error");
        status.textContent = "Could not load data (" + e.message + ")";
      });
  }
  load();
  // Dashboards poll: a long-open page keeps asking for fresh numbers.
  setInterval(load, Number(boot.poll) || 15000);
})();
