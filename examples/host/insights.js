// /insights.js
import { embed } from "https://insights.partner.example/sdk.js";

const status = document.getElementById("status");
const teams = document.getElementById("team");
const insights = embed(document.getElementById("insights"), {
  chrome: "none",          // hide the gateway's header (your app's header shows the user)
  autoResize: true,        // the frame takes the content's height ("resize")
  title: "Sales dashboard",
  // team: "acme/sales-emea",  optional: which of the user's teams to show (else the last one chosen)
});

insights.on("loading", () => { status.textContent = "Loading the dashboard…"; });
insights.on("ready", (e) => {
  status.textContent = "";
  teams.replaceChildren(...e.teams.map((t) => new Option(t.name, t.id, false, t.id === e.team.id)));
});
insights.on("team-changed", (e) => console.info(`now ${e.team.name}, was ${e.previous.name}`));
insights.on("reconnecting", (e) => { status.textContent = `Reconnecting… (request ${e.requestId ?? "-"})`; });
insights.on("error", (e) => { status.textContent = `The dashboard cannot be shown (${e.code}).`; });
insights.on("session-ended", () => { status.textContent = "Your session has ended: sign in again."; });
insights.on("signed-out", () => { status.textContent = "Signed out."; });
window.insights = insights;  // for your console (and the tests)

document.getElementById("switch").addEventListener("click", () => insights.setTeam(teams.value));
document.getElementById("refresh").addEventListener("click", () => insights.refresh());
document.getElementById("sign-out").addEventListener("click", () => insights.signOut());
