// The embed page: shows the dashboard once it has really loaded, turns failures into the
// gateway's own panels and recovers from them by itself, keeps the session honest (only a
// person's activity renews it), renews the token of an iframe-mode dashboard, and reports all of
// it to a partner page that frames us (ZG.tell; README "Embedding in your app").
(function () {
  "use strict";
  var ZG = window.ZG;
  var data = document.body.dataset;
  if (!ZG || data.page !== "embed") { return; }
  var state = JSON.parse(document.getElementById("zg-state").textContent);
  var words = state.words;
  var team = state.team;
  var proxy = state.mode === "proxy";
  var frame = document.getElementById("dashboard");
  var src = frame.getAttribute("src");
  var csrf = (document.querySelector("form.logout input[name=csrf_token]") || {}).value || "";
  var one = function (selector, root) { return (root || document).querySelector(selector); };
  var loading = one(".loading");
  var paused = one(".paused");
  var failed = one(".failed");
  var ended = one(".ended");
  var json = { credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } };

  // The address names the team, so that a reload or a copied link shows this team whatever
  // another tab chooses later; "wait" (the loading page's) is dropped.
  var here = new URL(window.location.href);
  if (here.searchParams.get("team") !== team.id || here.searchParams.has("wait")) {
    here.searchParams.set("team", team.id);
    here.searchParams.delete("wait");
    window.history.replaceState(window.history.state, "", here.pathname + here.search + here.hash);
  }

  // ------------------------------------------------------------------ states
  // loading -> ready; a failure -> reconnecting (it retries by itself) or failed (it needs
  // someone); ended is final. Exactly one of the frame and the panels is shown.
  var phase = "loading";
  var slowTimer = null;
  function show(which) {
    loading.hidden = which !== "loading";
    paused.hidden = which !== "paused";
    failed.hidden = which !== "failed";
    ended.hidden = which !== "ended";
    frame.hidden = which === "paused" || which === "failed" || which === "ended";
    frame.setAttribute("aria-busy", which === "frame" ? "false" : "true");
  }
  function startLoading() {
    phase = "loading";
    show("loading");
    one(".slow", loading).hidden = true;
    window.clearTimeout(slowTimer);
    slowTimer = window.setTimeout(function () { one(".slow", loading).hidden = phase !== "loading"; }, 4000);
    ZG.tell("loading", { team: team });
  }
  function navigate(url) {
    src = url;
    // replace(): a reload of the dashboard adds no entry to the browser's history.
    try { frame.contentWindow.location.replace(url); } catch (e) { frame.src = url; }
  }
  function ready(verified) {
    if (phase === "ended" || phase === "ready") { return; }
    phase = "ready";
    attempt = 0;
    lastCode = null;
    window.clearTimeout(slowTimer);
    window.clearTimeout(retryTimer);
    show("frame");
    ZG.tell("ready", { status: 200, team: team, teams: state.teams, verified: verified });
    reportSize();
  }

  // --------------------------------------------------- did the dashboard load?
  function frameDocument() {
    try { return frame.contentDocument; } catch (e) { return null; }
  }
  function inspect() {
    if (phase === "ended") { return; }
    var doc = frameDocument();
    if (doc && doc.URL === "about:blank") { return; }
    if (doc && doc.body && doc.body.getAttribute("data-page") === "error") {
      problem(fromPage(doc));  // the gateway's own error page, in the frame
      return;
    }
    if (!proxy) {
      // Iframe mode: Zipteams' page is on another origin. It says when it is ready (the stand-in
      // does); one that never speaks is taken as ready on its load event, unverified.
      window.clearTimeout(unverified);
      unverified = window.setTimeout(function () { if (phase === "loading") { ready(false); } }, speaks ? 10000 : 3000);
      return;
    }
    // Proxy mode: the dashboard is on our origin, so look. A frame we cannot read was refused
    // (its framing policy) or left for another site; a 401/403/5xx page is a failure to explain.
    if (!doc) { problem({ code: "frame_blocked", status: null, final: true }); return; }
    var entry = frame.contentWindow.performance.getEntriesByType("navigation")[0];
    var status = entry && entry.responseStatus || 200;
    if (status === 401 || status === 403 || status >= 500) { probe(); return; }
    watch(frame.contentWindow);
    ready(true);
  }

  // Proxy mode, once loaded: a person's use of the dashboard is activity, and its size is ours to
  // report. (Its failing calls are noted by the proxy and come with the session check below.)
  function watch(win) {
    try {
      ["pointerdown", "keydown", "wheel", "touchstart"].forEach(function (type) {
        win.document.addEventListener(type, activity, { capture: true, passive: true });
      });
      new win.ResizeObserver(reportSize).observe(win.document.documentElement);
    } catch (e) { /* an older browser: no activity from inside the dashboard, no size */ }
  }

  // ------------------------------------------------------------- failures
  var RETRY = [1, 2, 4, 8, 15, 30];
  var attempt = 0;
  var lastCode = null;
  var retryTimer = null;
  var ticking = null;
  var checking = false;
  var unverified = null;

  function text(root, selector) {
    var node = root && root.querySelector(selector);
    return node ? node.textContent.trim() : "";
  }
  function fromPage(doc) {
    var b = doc.body.dataset;
    var main = doc.querySelector("main");
    return { status: Number(b.status) || null, code: b.code || "error", requestId: b.requestId || null,
             retryAfter: Number(b.retryAfter) || null, title: text(main, "h1"),
             message: text(main, ".message"), hint: text(main, ".hint") };
  }
  function fromResponse(r) {
    var code = r.headers.get("X-Gateway-Error");
    return { status: r.status, requestId: r.headers.get("X-Request-Id"), retryAfter: Number(r.headers.get("Retry-After")) || null,
             byGateway: !!code, code: code || (r.status === 401 || r.status === 403 ? "dashboard_rejected" : "dashboard_unavailable") };
  }
  // A dashboard that is not where the gateway is set up to look stays missing until someone
  // changes the setting: the page says so and waits for the user instead of retrying forever.
  var FINAL = ["dashboard_not_found"];
  function transient(p) {
    return !p.final && FINAL.indexOf(p.code) < 0 && ([429, 502, 503, 504].indexOf(p.status) >= 0 || p.code === "dashboard_rejected" ||
                        p.code === "dashboard_unavailable" || p.code === "network_error" || p.code === "renewing");
  }
  function problem(p) {
    if (phase === "ended") { return; }
    if (p.status === 401 && (p.code === "not_signed_in" || p.code === "session_ended")) { endSession(); return; }
    var fields = { code: p.code, status: p.status, requestId: p.requestId || null, retryAfter: p.retryAfter || null };
    var fresh = lastCode !== p.code;
    lastCode = p.code;
    // An iframe-mode token past its time is no error: the page is renewing it.
    if (fresh && p.code !== "renewing") { ZG.tell("error", fields); }
    window.clearTimeout(retryTimer);
    window.clearInterval(ticking);
    if (!transient(p)) {
      phase = "failed";
      fill(failed, p);
      show("failed");
      return;
    }
    phase = "reconnecting";
    fill(paused, p);
    show("paused");
    if (fresh) { ZG.tell("reconnecting", fields); }
    var wait = p.retryAfter || RETRY[Math.min(attempt, RETRY.length - 1)] * (0.8 + Math.random() * 0.4);
    attempt += 1;
    retryIn(wait);
  }
  function fill(panel, p) {
    var own = words[p.code] || {};
    one(".reason", panel).textContent = p.title || own.title || words.error.title;
    [".message", ".hint"].forEach(function (selector) {
      var node = one(selector, panel);
      if (!node) { return; }
      node.textContent = p[selector.slice(1)] || own[selector.slice(1)] || "";
      node.hidden = !node.textContent;
    });
    var meta = one(".meta", panel);
    meta.hidden = !p.requestId;
    one("code", meta).textContent = p.requestId || "";
    one("button.copy", meta).setAttribute("data-copy", p.requestId || "");
    one(".copied", meta).textContent = "";
  }
  // Reconnecting: a live countdown, then the gateway is asked again; "Try again now" asks at once.
  function retryIn(wait) {
    var deadline = Date.now() + wait * 1000;
    var line = one(".wait", paused);
    window.clearTimeout(retryTimer);
    window.clearInterval(ticking);
    var tick = function () {
      var left = Math.max(0, Math.ceil((deadline - Date.now()) / 1000));
      line.textContent = left > 0 ? "Trying again in " + ZG.seconds(left) + "." : "Trying again…";
    };
    tick();
    line.hidden = false;
    one(".retry-now", paused).hidden = false;
    ticking = window.setInterval(tick, 1000);
    retryTimer = window.setTimeout(probe, wait * 1000);
  }
  one(".retry-now", paused).addEventListener("click", probe);
  one(".try-again", failed).addEventListener("click", function () { attempt = 0; lastCode = null; reload(); });

  function suspect() {
    if (!checking && phase === "ready") { probe(); }
  }
  // Asks the gateway what the dashboard's frame would get now: in proxy mode the dashboard's
  // own first page through the proxy, in iframe mode a fresh dashboard address.
  function probe() {
    window.clearTimeout(retryTimer);
    window.clearInterval(ticking);
    if (checking || phase === "ended") { return; }
    checking = true;
    var url = proxy ? src : "/embed/frame?team=" + encodeURIComponent(team.id);
    fetch(url, json).then(function (r) {
      if (r.ok) {
        if (proxy) { drop(r); recovered(null); return null; }
        return r.json().then(recovered);
      }
      var p = fromResponse(r);
      if (!p.byGateway) { drop(r); problem(p); return null; }
      return r.json().then(function (answer) {
        var e = (answer && answer.error) || {};
        p.title = e.title; p.message = e.message; p.hint = e.hint;
        problem(p);
      }, function () { problem(p); });
    }).catch(function () {
      problem({ code: "network_error", status: null });
    }).then(function () { checking = false; });
  }
  function drop(r) { if (r.body) { r.body.cancel().catch(function () {}); } }
  function recovered(fresh) {
    if (phase === "ready") {  // a false alarm: the dashboard's own hiccup
      if (fresh) { renewed(fresh); }
      return;
    }
    if (fresh) { renewed(fresh); src = fresh.src; }
    reload();
  }
  function reload() {
    startLoading();
    navigate(src);
  }

  // -------------------------------------------------------- session end
  function endSession() {
    if (phase === "ended") { return; }
    phase = "ended";
    window.clearTimeout(retryTimer);
    window.clearInterval(ticking);
    window.clearTimeout(slowTimer);
    frame.src = "about:blank";
    show("ended");
    // Nothing stale is left to press: the user, the team and sign-out belong to the ended session.
    Array.prototype.forEach.call(document.querySelectorAll(".bar .team, .bar .menu-toggle, .bar .who"), function (node) {
      node.hidden = true;
    });
    var link = one("a", ended);
    if (link) { link.focus(); }
    ZG.tell("session-ended", { status: 401 });
  }
  // A question for the gateway about this session: its JSON answer, or null when it had none
  // to give; a 401 means the session is over, and the page says so.
  function ask(url) {
    return fetch(url, json).then(function (r) {
      if (r.status === 401) { endSession(); return null; }
      return r.ok ? r.json() : null;
    });
  }
  // The session check: still signed in? And (proxy mode) did the dashboard's own calls fail
  // lately because of the gateway or its token? Then the gateway is asked (probe) before the
  // panel is shown: the dashboard's own hiccups stay the dashboard's.
  function checkSession() {
    if (phase === "ended") { return; }
    ask("/session/status?team=" + encodeURIComponent(team.id))
      .then(function (answer) { if (answer && answer.dashboard) { suspect(); } })
      .catch(function () { /* offline for a moment: try again later */ });
  }
  window.setInterval(checkSession, 15000);
  document.addEventListener("visibilitychange", function () { if (!document.hidden) { checkSession(); } });

  // Other tabs of this browser hear about a sign-out at once.
  var channel = "BroadcastChannel" in window ? new BroadcastChannel("zipteams-gateway") : null;
  if (channel) {
    channel.onmessage = function (event) { if (event.data === "signed-out") { endSession(); } };
  }
  var logout = one("form.logout");
  if (logout) {
    logout.addEventListener("submit", function () { if (channel) { channel.postMessage("signed-out"); } });
  }

  // ------------------------------------------------- an honest idle timer
  // Only a person renews the session: pointer and keyboard use on this page or in the
  // dashboard (proxy mode: its document is ours to listen to; iframe mode: its "activity"
  // messages, or focus moving into it), reported at most once a minute. The dashboard's own
  // polling never counts (the server ignores /dashboard/ for this).
  var MINUTE = 60000;
  var reported = Date.now();  // this page's own load counted
  var later = null;
  function activity() {
    if (phase === "ended" || later) { return; }
    later = window.setTimeout(function () {
      later = null;
      reported = Date.now();
      fetch("/session/activity", { method: "POST", credentials: "same-origin", cache: "no-store",
                                   headers: { Accept: "application/json" }, body: new URLSearchParams({ csrf_token: csrf }) })
        .then(function (r) { if (r.status === 401) { endSession(); } })
        .catch(function () { /* the next activity reports again */ });
    }, Math.max(0, reported + MINUTE - Date.now()));
  }
  ["pointerdown", "keydown", "wheel", "touchstart"].forEach(function (type) {
    document.addEventListener(type, activity, { capture: true, passive: true });
  });

  // --------------------------------------------------------- the header's menu
  // Phones: the user's email, team switcher and sign-out sit in a menu (a disclosure button),
  // so the header stays one row and the dashboard keeps the screen.
  var toggle = one(".menu-toggle");
  var menu = document.getElementById("user-menu");
  var setMenu = function (open) {
    menu.classList.toggle("open", open);
    toggle.setAttribute("aria-expanded", open ? "true" : "false");
  };
  if (toggle && menu && state.chrome !== "none") {
    toggle.hidden = false;
    toggle.addEventListener("click", function () { setMenu(toggle.getAttribute("aria-expanded") !== "true"); });
    document.addEventListener("keydown", function (event) {
      if (event.key === "Escape" && menu.classList.contains("open")) { setMenu(false); toggle.focus(); }
    });
    document.addEventListener("click", function (event) {
      if (!menu.contains(event.target) && !toggle.contains(event.target)) { setMenu(false); }
    });
  }
  // A click into the dashboard reaches its frame, not this document: the window loses focus.
  window.addEventListener("blur", function () {
    window.setTimeout(function () {
      if (document.activeElement !== frame) { return; }
      if (toggle && menu) { setMenu(false); }
      activity();
    }, 0);
  });

  // ------------------------------------------------------------ sizing
  var dashboardHeight = 0;
  var lastHeight = 0;
  function reportSize() {
    if (phase !== "ready") { return; }
    var inner = dashboardHeight;
    if (proxy) {
      var doc = frameDocument();
      inner = doc && doc.documentElement ? doc.documentElement.getBoundingClientRect().height : 0;
    }
    if (!inner) { return; }
    var bar = one(".bar");
    var height = Math.ceil(inner + (bar && !bar.hidden ? bar.getBoundingClientRect().height : 0));
    if (Math.abs(height - lastHeight) < 2) { return; }
    lastHeight = height;
    ZG.tell("resize", { height: height });
  }
  window.addEventListener("resize", reportSize);

  // ------------------------------------------------ the partner's commands
  ZG.commands.refresh = function () { attempt = 0; lastCode = null; if (phase !== "ended") { reload(); } };
  ZG.commands.setTeam = function (m) {
    var id = String(m.team || "");
    if (!state.teams.some(function (t) { return t.id === id; })) {
      // Only the user's own teams; the gateway checks the address again in any case.
      ZG.tell("error", { code: "team_not_allowed", status: 403, requestId: null, retryAfter: null });
      return;
    }
    var next = new URL(window.location.href);
    next.searchParams.set("team", id);
    window.location.assign(next.pathname + next.search);
  };
  ZG.commands.signOut = function () { if (logout) { logout.requestSubmit(); } };

  // ----------------------------------------------- iframe mode: Zipteams' page
  var speaks = false;
  var inPlace = false;
  window.addEventListener("message", function (event) {
    var m = event.data;
    if (proxy || event.source !== frame.contentWindow || event.origin !== state.dashboardOrigin ||
        !m || m.source !== "zipteams-dashboard") {
      return;
    }
    speaks = true;
    if (m.type === "ready") {
      inPlace = m.renew === true;  // it takes a new token without a reload
      ready(true);
    } else if (m.type === "error") {
      problem({ code: m.status === 401 || m.status === 403 ? "dashboard_rejected" : "dashboard_unavailable",
                status: Number(m.status) || null });
    } else if (m.type === "activity") {
      activity();
    } else if (m.type === "resize") {
      dashboardHeight = Number(m.height) || 0;
      reportSize();
    }
  });

  // The token lives in the frame's address: get a fresh one before it stops being served, and
  // never leave an expired dashboard on screen. A dashboard that takes a new token in place
  // (postMessage) keeps everything the user did in it; any other is reloaded with the new address.
  var serveUntil = Number(data.serveUntil);
  var renewTimer = null;
  var expireTimer = null;
  function renewed(fresh) {
    if (!(fresh.serve_until > serveUntil)) { return false; }
    var loadedAt = Date.now() / 1000;
    serveUntil = fresh.serve_until;
    src = fresh.src;
    if (phase === "ready" && inPlace) {
      var token = new URL(fresh.src).searchParams.get("token");
      frame.contentWindow.postMessage({ source: "zipteams-gateway", type: "token", token: token }, state.dashboardOrigin);
    } else if (phase === "ready") {
      reload();
    }  // otherwise the page is loading or recovering, and loads the new address next
    schedule(loadedAt);
    return true;
  }
  function schedule(loadedAt) {
    var now = Date.now() / 1000;
    var lifetime = Math.max(serveUntil - loadedAt, 1);
    var wait = Math.max(serveUntil - now - Math.max(lifetime * 0.25, 5), 1);
    window.clearTimeout(renewTimer);
    window.clearTimeout(expireTimer);
    renewTimer = window.setTimeout(renew, wait * 1000);
    expireTimer = window.setTimeout(function () {
      if (phase !== "ready") { return; }
      problem({ code: "renewing", status: null, final: false, retryAfter: 2 });  // expired: hide it
    }, Math.max(serveUntil - now, 0) * 1000);
  }
  function renew() {
    if (phase === "ended") { return; }
    ask("/embed/frame?team=" + encodeURIComponent(team.id))
      .then(function (fresh) {
        if (!fresh) { renewTimer = window.setTimeout(renew, 3000); return; }
        if (!renewed(fresh)) { renewTimer = window.setTimeout(renew, 2000); }  // the new token is on its way
      })
      .catch(function () { renewTimer = window.setTimeout(renew, 3000); });
  }
  if (!proxy) { schedule(Date.now() / 1000); }

  // ------------------------------------------------------------------ start
  frame.addEventListener("load", inspect);
  startLoading();
  // The frame may have loaded before this script ran (a busy machine, a cached dashboard).
  var already = frameDocument();
  if (already && already.readyState === "complete" && already.URL !== "about:blank") {
    inspect();
  } else if (!already && proxy) {
    // Proxy mode: a same-origin frame is always readable, even before its page arrives (about:blank).
    // Unreadable already means the browser refused it and its load event has come and gone.
    inspect();
  } else if (!already && !proxy) {
    // Iframe mode, Zipteams' page already in the frame: its "ready" may have gone unheard; ask
    // again, and take it as ready (unverified) if it never says.
    frame.contentWindow.postMessage({ source: "zipteams-gateway", type: "hello" }, state.dashboardOrigin);
    inspect();
  }
})();
