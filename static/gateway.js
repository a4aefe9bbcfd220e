// The gateway's pages: loading state, session-end and team-switch handling, iframe-mode
// token renewal, and status events for a partner page that frames us. Served as a file:
// the CSP allows no inline script.
(function () {
  "use strict";
  var data = document.body.dataset;
  var origins = (data.parentOrigins || "").split(" ").filter(Boolean).map(function (o) {
    return o === "self" ? window.location.origin : o;
  });

  // Tell the partner's page (only the origins allowed to frame us) what happened.
  function tell(type, status) {
    if (window.parent === window) { return; }
    var message = { source: "zipteams-gateway", type: type, status: status, requestId: data.requestId || null };
    origins.forEach(function (origin) {
      try { window.parent.postMessage(message, origin); } catch (e) { /* a closed or foreign parent */ }
    });
  }

  if (data.page === "error") {
    var status = Number(data.status);
    tell(status === 401 ? "session-ended" : "error", status);
    // Inside our own embed page's frame, let that page take over instead of
    // showing a sign-in page squeezed into the frame.
    if (window.parent !== window && status === 401) {
      try { window.parent.postMessage({ source: "zipteams-gateway", type: "session-ended", status: 401 },
                                      window.location.origin); } catch (e) { /* not ours */ }
    }
    return;
  }
  if (data.page === "signed-out") {
    // Ended here; end the sign-in at the IdP or the partner's proxy too. A navigation, not a
    // form redirect: CSP form-action (ours allows only 'self') governs the latter.
    var onward = document.getElementById("continue-signout");
    if (onward) { window.location.replace(onward.href); }
    tell("signed-out", 200);
    return;
  }
  if (data.page !== "embed") { return; }

  var frame = document.getElementById("dashboard");
  var loading = document.querySelector(".loading");
  var ended = document.querySelector(".ended");
  var paused = document.querySelector(".paused");
  var over = false;

  frame.addEventListener("load", function () {
    if (over) { return; }
    loading.hidden = true;
    paused.hidden = true;
    frame.hidden = false;
    frame.setAttribute("aria-busy", "false");
    tell("ready", 200);
  });

  function endSession() {
    if (over) { return; }
    over = true;
    frame.src = "about:blank";
    frame.hidden = true;
    loading.hidden = true;
    paused.hidden = true;
    ended.hidden = false;
    var link = ended.querySelector("a");
    if (link) { link.focus(); }
    tell("session-ended", 401);
  }

  window.addEventListener("message", function (event) {
    var m = event.data;
    if (event.origin === window.location.origin && event.source === frame.contentWindow &&
        m && m.source === "zipteams-gateway" && m.type === "session-ended") {
      endSession();
    }
  });

  function checkSession() {
    if (over) { return; }
    fetch("/session/status", { credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } })
      .then(function (r) { if (r.status === 401) { endSession(); } })
      .catch(function () { /* offline for a moment: try again later */ });
  }
  window.setInterval(checkSession, Number(data.statusEvery || 30000));
  document.addEventListener("visibilitychange", function () { if (!document.hidden) { checkSession(); } });

  // Other tabs of this browser hear about a sign-out at once.
  var channel = "BroadcastChannel" in window ? new BroadcastChannel("zipteams-gateway") : null;
  if (channel) {
    channel.onmessage = function (event) { if (event.data === "signed-out") { endSession(); } };
  }
  var logout = document.querySelector("form.logout");
  if (logout) {
    logout.addEventListener("submit", function () { if (channel) { channel.postMessage("signed-out"); } });
  }
  var switcher = document.querySelector("form.switcher select");
  if (switcher) {
    switcher.addEventListener("change", function () { switcher.form.requestSubmit(); });
  }

  // Iframe mode: the token lives in the frame's URL, so renew the URL before the
  // token stops being served, and never leave an expired dashboard on screen.
  if (data.mode === "iframe") {
    var serveUntil = Number(data.serveUntil);
    var loadedAt = Date.now() / 1000;
    var renewTimer = null;
    var expireTimer = null;

    var schedule = function () {
      var now = Date.now() / 1000;
      var lifetime = Math.max(serveUntil - loadedAt, 1);
      var wait = Math.max(serveUntil - now - Math.max(lifetime * 0.25, 5), 1);
      window.clearTimeout(renewTimer);
      window.clearTimeout(expireTimer);
      renewTimer = window.setTimeout(renew, wait * 1000);
      expireTimer = window.setTimeout(function () {
        if (over) { return; }
        frame.hidden = true;  // expired: hide it rather than show a dead dashboard
        paused.hidden = false;
      }, Math.max(serveUntil - now, 0) * 1000);
    };

    var renew = function () {
      if (over) { return; }
      fetch("/embed/frame?subtenant=" + encodeURIComponent(data.subtenant),
            { credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } })
        .then(function (r) {
          if (r.status === 401) { endSession(); return null; }
          return r.ok ? r.json() : null;
        })
        .then(function (fresh) {
          if (!fresh) { renewTimer = window.setTimeout(renew, 3000); return; }
          if (fresh.serve_until > serveUntil) {
            serveUntil = fresh.serve_until;
            loadedAt = Date.now() / 1000;
            frame.src = fresh.src;
            schedule();
          } else {
            renewTimer = window.setTimeout(renew, 2000);  // the new token is on its way
          }
        })
        .catch(function () { renewTimer = window.setTimeout(renew, 3000); });
    };
    schedule();
  }
})();
