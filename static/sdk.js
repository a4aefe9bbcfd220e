// The Zipteams Insights gateway's host SDK: a dependency-free ES module for the partner's page.
// It creates the frame, checks every message's origin and window, and turns the gateway's
// messages into events; commands go back to the gateway's origin only. Served at /sdk.js;
// you may also copy this file into your app (pass `gateway` then). See README,
// "Embedding in your app".
//
//   import { embed } from "https://insights.partner.example/sdk.js";
//   const insights = embed(document.getElementById("insights"), { team: "acme/sales-emea", chrome: "none" });
//   insights.on("ready", (e) => console.log("showing", e.team.name));
//
// Events: loading, ready, reconnecting, error, session-ended, signed-out, team-changed, resize.
// Commands: refresh(), setTeam(id), signOut(). The gateway checks that this page's origin is in
// GATEWAY_FRAME_ANCESTORS before it says or does anything, and checks a team again on the server.

const EVENTS = ["loading", "ready", "reconnecting", "error", "session-ended", "signed-out", "team-changed", "resize",
  "sign-in-required", "choose-team"];
const REFUSED_AFTER = 1500; // ms after the frame's load event without a word from the gateway

export const gatewayUrl = new URL(".", import.meta.url).href; // where this module was served from

export function embed(container, options = {}) {
  const base = new URL(options.gateway || gatewayUrl);
  const origin = base.origin;
  const address = new URL("/", base);
  if (options.team) address.searchParams.set("team", String(options.team));
  if (options.chrome === "none") address.searchParams.set("chrome", "none");

  const iframe = document.createElement("iframe");
  iframe.title = options.title || "Dashboard";
  iframe.allow = "clipboard-write"; // the gateway's "Copy the request id" button
  iframe.style.border = "0";
  iframe.style.width = "100%";
  iframe.style.height = options.height || "640px";
  iframe.style.display = "block";

  const listeners = new Map(EVENTS.map((type) => [type, new Set()]));
  let heard = false;
  let phase = null;
  let team = null;
  let refusedTimer = 0;

  function emit(type, detail) {
    for (const listener of listeners.get(type)) {
      try {
        listener({ type, ...detail });
      } catch (error) {
        setTimeout(() => { throw error; }); // reported, without stopping the other listeners
      }
    }
  }

  function onMessage(event) {
    const m = event.data;
    if (event.source !== iframe.contentWindow || event.origin !== origin || !m || m.source !== "zipteams-gateway") return;
    heard = true;
    clearTimeout(refusedTimer);
    const { source, version, type, ...detail } = m;
    if (type === "loading" || type === "ready") {
      // A page of another team than the one shown last: first "loading", then "team-changed".
      const changed = m.team && team && m.team.id !== team.id ? team : null;
      if (m.team) team = m.team;
      if (type === "loading" && phase !== "loading") emit("loading", detail);
      if (changed) emit("team-changed", { team, previous: changed });
      phase = type === "loading" ? "loading" : "ready";
      if (type === "ready") emit("ready", detail);
      return;
    }
    if (type === "resize" && options.autoResize && detail.height > 0) iframe.style.height = `${detail.height}px`;
    if (EVENTS.includes(type)) {
      if (type !== "resize") phase = type;
      emit(type, detail);
    }
  }

  // A page that GATEWAY_FRAME_ANCESTORS does not list is refused by the browser: the frame
  // "loads" an error page and the gateway never speaks. That is an error, never "ready".
  iframe.addEventListener("load", () => {
    if (heard) return;
    // Browsers without location.ancestorOrigins (Firefox) cannot tell the gateway who framed it:
    // the first message from this page does.
    if (!("ancestorOrigins" in window.location)) send("hello");
    clearTimeout(refusedTimer);
    refusedTimer = setTimeout(() => {
      if (heard) return;
      phase = "error";
      emit("error", { code: "frame_refused", status: null, requestId: null, retryAfter: null });
    }, REFUSED_AFTER);
  });

  function send(command, fields = {}) {
    if (iframe.contentWindow) iframe.contentWindow.postMessage({ source: "zipteams-host", command, ...fields }, origin);
  }

  window.addEventListener("message", onMessage);
  iframe.src = address.href;
  container.appendChild(iframe);

  return {
    iframe,
    get team() { return team; },
    get state() { return phase; },
    on(type, listener) {
      if (!listeners.has(type)) throw new Error(`unknown event ${type}; one of ${EVENTS.join(", ")}`);
      listeners.get(type).add(listener);
      return this;
    },
    off(type, listener) {
      listeners.get(type)?.delete(listener);
      return this;
    },
    refresh() { send("refresh"); },
    setTeam(id) { send("setTeam", { team: String(id) }); },
    signOut() { send("signOut"); },
    destroy() {
      window.removeEventListener("message", onMessage);
      clearTimeout(refusedTimer);
      iframe.remove();
    },
  };
}
