// What every gateway page shares: the request id's copy button, the live countdown of a busy
// page, the sign-out continuation, the loading page, and the conversation with a partner page
// that frames us (window.ZG: status events out, commands in). The embed page's own behaviour is
// in embed.js. Served as files: the CSP allows no inline script.
(function () {
  "use strict";
  // The phone header's menu and other enhancements only apply once this script runs.
  document.documentElement.classList.add("js");
  var data = document.body.dataset;
  var framed = window.parent !== window;

  // ------------------------------------------------ the partner's page (see README)
  // Who may frame us is GATEWAY_FRAME_ANCESTORS; the browser enforces it. We talk only to a
  // parent whose origin is listed there, both ways: events go to that one origin (never "*",
  // and never to a listed origin that is not the parent's: the browser would log an error),
  // and commands are taken only from the parent window, from a listed origin.
  var listed = (data.parentOrigins || "").split(" ").filter(Boolean).map(function (o) {
    return o === "self" ? window.location.origin : o;
  });
  function allowed(origin) {
    return listed.some(function (source) {
      if (source === origin) { return true; }
      var star = source.indexOf("://*.");  // a CSP host wildcard: any subdomain, never the bare host
      if (star < 0) { return false; }
      var scheme = source.slice(0, star + 3);
      var rest = source.slice(star + 4);  // ".partner.example[:port]"
      var host = origin.slice(scheme.length, origin.length - rest.length);
      return origin.indexOf(scheme) === 0 && origin.slice(-rest.length) === rest && /^[A-Za-z0-9.-]+$/.test(host);
    });
  }
  var parentOrigin = null;
  var pending = framed ? [] : null;  // events kept until we know who the parent is
  var ancestors = window.location.ancestorOrigins;
  if (framed && ancestors && ancestors.length) {
    parentOrigin = allowed(ancestors[0]) ? ancestors[0] : null;
    pending = null;
  }
  function post(message) {
    try { window.parent.postMessage(message, parentOrigin); } catch (e) { /* the parent went away */ }
  }
  function tell(type, fields) {
    if (!framed) { return; }
    var message = { source: "zipteams-gateway", version: 1, type: type, requestId: data.requestId || null };
    Object.keys(fields || {}).forEach(function (key) { message[key] = fields[key]; });
    if (parentOrigin) { post(message); } else if (pending) { pending.push(message); }
  }
  // Commands from the partner's page. The embed page replaces these with its own.
  var commands = {
    refresh: function () { window.location.reload(); },
    setTeam: function (m) { window.location.assign("/?team=" + encodeURIComponent(String(m.team || ""))); },
    signOut: function () {
      var form = document.querySelector("form[action='/logout']");
      if (form) { form.requestSubmit(); }
    }
  };
  window.addEventListener("message", function (event) {
    var m = event.data;
    if (!framed || event.source !== window.parent || !allowed(event.origin) || !m || m.source !== "zipteams-host") {
      return;
    }
    if (!parentOrigin) {
      // A browser without location.ancestorOrigins: the host's first message names it.
      parentOrigin = event.origin;
      (pending || []).forEach(post);
      pending = null;
    }
    if (m.command !== "hello" && Object.prototype.hasOwnProperty.call(commands, m.command)) {
      commands[m.command](m);
    }
  });
  window.ZG = { tell: tell, commands: commands };
  // A page that waits for the user (signing in, choosing a team) says so: to the partner's page
  // the frame is working, not refused (the SDK reports frame_refused only when nothing is heard).
  if (data.page === "login") { tell("sign-in-required", { status: 401 }); }
  if (data.page === "select") { tell("choose-team", { status: 409 }); }

  // "Copy" beside a request id: the clipboard where the browser allows it, else the id
  // is selected for Ctrl+C. The result is announced (role=status).
  Array.prototype.forEach.call(document.querySelectorAll("button.copy[data-copy]"), function (button) {
    var holder = button.parentNode;
    var said = holder.querySelector(".copied");
    var say = function (text) { if (said) { said.textContent = text; } };
    var select = function () {
      var range = document.createRange();
      range.selectNodeContents(holder.querySelector("code"));
      var selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      say("Selected: press Ctrl+C to copy");
    };
    button.hidden = false;
    button.addEventListener("click", function () {
      if (navigator.clipboard && navigator.clipboard.writeText) {
        navigator.clipboard.writeText(button.getAttribute("data-copy")).then(function () { say("Copied"); }, select);
      } else {
        select();
      }
    });
  });

  // Inside our own embed page's frame, that page shows its own panel for this one.
  function inOurEmbedPage() {
    try { return framed && window.parent.document.body.getAttribute("data-page") === "embed"; } catch (e) { return false; }
  }

  // Signing out on any of our pages ends the embed pages open in this browser's other tabs too
  // (embed.js listens, and says the same for its own sign-out).
  if (data.page !== "embed" && "BroadcastChannel" in window) {
    Array.prototype.forEach.call(document.querySelectorAll("form.logout"), function (form) {
      form.addEventListener("submit", function () { new BroadcastChannel("zipteams-gateway").postMessage("signed-out"); });
    });
  }

  if (data.page === "error") {
    if (inOurEmbedPage()) { return; }
    var status = Number(data.status);
    var fields = { status: status, code: data.code || null, retryAfter: Number(data.retryAfter) || null };
    if (status === 401) {
      tell("session-ended", fields);
    } else {
      tell("error", fields);
      if (data.autoRetry) { tell("reconnecting", fields); }
    }
    countDownThenRetry();
    return;
  }
  // 429/503 pages: count the Retry-After wait down live, then open the page again by itself
  // (GET requests only: the server leaves data-retry-after out otherwise). The words and the
  // buttons say the same thing: "Try again" is unavailable until the wait is over (the page
  // says "try again once the wait is over"), and "Stop trying by itself" leaves the choice to
  // the user, once the wait is over.
  function countDownThenRetry() {
    var wait = document.querySelector(".wait[data-retry-after]");
    if (!wait) { return; }
    var deadline = Date.now() + Number(wait.getAttribute("data-retry-after")) * 1000;
    var target = wait.getAttribute("data-retry-url") || window.location.href;
    var stop = document.querySelector(".stop-retry");
    var again = document.querySelector("main .actions a.button");
    var timer = null;
    var leaving = null;
    var stopped = false;
    var STOPPED = "Not trying again by itself. ";
    var waiting = function (on) {
      if (!again) { return; }
      if (on) { again.setAttribute("aria-disabled", "true"); } else { again.removeAttribute("aria-disabled"); }
    };
    if (again) {
      again.addEventListener("click", function (event) {
        if (again.getAttribute("aria-disabled") === "true") { event.preventDefault(); }
      });
    }
    var tick = function () {
      // From the clock, not by counting ticks: a background tab's timers run late.
      var left = Math.max(0, Math.ceil((deadline - Date.now()) / 1000));
      if (left > 0) {
        wait.textContent = stopped ? STOPPED + "You can try again in " + seconds(left) + "."
          : "Trying again by itself in " + seconds(left) + ".";
        return;
      }
      window.clearInterval(timer);
      waiting(false);
      if (stop) { stop.hidden = true; }
      if (stopped) {
        wait.textContent = STOPPED + "Use \u201cTry again\u201d when you are ready.";
        return;
      }
      wait.textContent = "Trying again…";
      // Up to 2 s of jitter: pages that waited out the same limit do not all return at once.
      leaving = window.setTimeout(function () { window.location.replace(target); }, Math.random() * 2000);
    };
    waiting(true);
    tick();
    timer = window.setInterval(tick, 1000);
    if (stop) {
      stop.hidden = false;
      stop.addEventListener("click", function () {
        stopped = true;
        window.clearTimeout(leaving);
        stop.hidden = true;
        tick();
      });
    }
  }
  function seconds(s) {
    if (s >= 120) { return Math.ceil(s / 60) + " minutes"; }
    return s === 1 ? "1 second" : s + " seconds";
  }
  window.ZG.seconds = seconds;

  if (data.page === "loading") {
    // The team's first token is on its way: ask for the page again, waiting this time. The
    // browser keeps this page (and its timers) until the answer comes.
    tell("loading", { team: { id: data.team, name: data.teamName } });
    window.setTimeout(function () {
      var slow = document.querySelector(".slow");
      if (slow) { slow.hidden = false; }
    }, 4000);
    window.location.replace(data.next);
    return;
  }

  if (data.page === "signed-out") {
    // Ended here; end the sign-in at the IdP or the partner's proxy too. A navigation, not a
    // form redirect: CSP form-action (ours allows only 'self') governs the latter.
    var onward = document.getElementById("continue-signout");
    if (onward) { window.location.replace(onward.href); }
    tell("signed-out", { status: 200 });
  }
})();
