// The stand-in dashboard's script: reads the token it was bootstrapped with and
// calls the dashboard API with it, as real embedded dashboards do.
//
// It also models a dashboard that talks to the page framing it (postMessage): "ready" once
// its data is shown (and that it takes a new token in place: renew), "error" with the HTTP
// status when its data call fails, "activity" when a person uses it (at most once a minute),
// "resize" with its content height; and it takes {type: "token"} from its parent to carry on
// with a new token without a reload ({type: "hello"} asks it to say "ready" again). None of
// these messages ever holds the token.
(function () {
  "use strict";
  var boot = JSON.parse(document.getElementById("zt-bootstrap").textContent);
  var app = document.getElementById("app");
  var status = document.getElementById("status");
  var parentWindow = window.parent !== window ? window.parent : null;
  var shown = false;
  function tell(type, fields) {
    if (!parentWindow) { return; }
    var message = { source: "zipteams-dashboard", type: type };
    Object.keys(fields || {}).forEach(function (key) { message[key] = fields[key]; });
    parentWindow.postMessage(message, "*");  // nothing secret in it; the parent checks our origin
  }
  function load() {
    fetch(boot.api, { headers: { "Authorization": "Bearer " + boot.token, "Accept": "application/json" } })
      .then(function (r) {
        if (!r.ok) { var e = new Error("HTTP " + r.status); e.status = r.status; throw e; }
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
        if (!shown) { shown = true; tell("ready", { renew: true }); }
      })
      .catch(function (e) {
        app.setAttribute("data-state", "error");
        status.textContent = "Could not load data (" + e.message + ")";
        shown = false;
        tell("error", { status: e.status || null });
      });
  }
  load();
  // Dashboards poll: a long-open page keeps asking for fresh numbers.
  setInterval(load, Number(boot.poll) || 15000);

  window.addEventListener("message", function (event) {
    var m = event.data;
    if (event.source !== parentWindow || !m || m.source !== "zipteams-gateway") { return; }
    if (m.type === "hello") {  // the page framing us asks again what we said
      if (shown) { tell("ready", { renew: true }); }
      if (height) { tell("resize", { height: height }); }
      return;
    }
    if (m.type !== "token" || typeof m.token !== "string") { return; }
    boot.token = m.token;  // the next calls carry it; the page stays as it is
    app.setAttribute("data-renewed", String(Number(app.getAttribute("data-renewed") || 0) + 1));
    load();
  });
  var lastActivity = 0;
  ["pointerdown", "keydown", "wheel", "touchstart"].forEach(function (type) {
    document.addEventListener(type, function () {
      if (Date.now() - lastActivity < 60000) { return; }
      lastActivity = Date.now();
      tell("activity");
    }, { capture: true, passive: true });
  });
  var height = 0;
  if (window.ResizeObserver) {
    new ResizeObserver(function () {
      height = Math.ceil(document.documentElement.getBoundingClientRect().height);
      tell("resize", { height: height });
    }).observe(document.documentElement);
  }
})();
