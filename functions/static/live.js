// The relaybus live page: signs in with a bearer token, negotiates through the function app
// (/api/live/negotiate: the token is validated there and the user joins their tenant's group) and shows
// the bot's activity pushed to that group. Everything shown is set with textContent (never as HTML).
"use strict";

(() => {
  const TOKEN_KEY = "relaybus.live.token";
  const MAX_EVENTS = 200;
  const body = document.body;
  const statusEl = document.getElementById("status");
  const whoEl = document.getElementById("who");
  const eventsEl = document.getElementById("events");
  const countEl = document.getElementById("count");
  let connection = null;
  let count = 0;

  function setState(state, text) {
    body.dataset.state = state;
    statusEl.textContent = text;
  }

  function claimsOf(token) {
    try {
      const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      const padded = part + "===".slice((part.length + 3) % 4);
      const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
      return JSON.parse(new TextDecoder().decode(bytes));
    } catch (err) {
      return null;
    }
  }

  function tokenFromUrl() {
    const params = new URLSearchParams(window.location.hash.slice(1));
    const token = params.get("access_token");
    if (token) {
      sessionStorage.setItem(TOKEN_KEY, token);
      history.replaceState(null, "", window.location.pathname + window.location.search);
    }
    return sessionStorage.getItem(TOKEN_KEY);
  }

  function span(cls, text) {
    const el = document.createElement("span");
    el.className = cls;
    el.textContent = text;
    return el;
  }

  function describe(event) {
    if (event.event === "received") {
      return event.text ? `“${event.text}”` : "(no text)";
    }
    if (event.event === "reply") {
      return `bot (${event.via}): ${event.reply || ""}`;
    }
    if (event.event === "outcome") {
      const took = typeof event.ms === "number" ? ` in ${event.ms} ms` : "";
      if (event.outcome === "error") {
        return `failed${took}: ${event.error}`;
      }
      return `handled${took}` + (event.answer ? ` (answered: ${event.answer})` : "");
    }
    return JSON.stringify(event).slice(0, 200);
  }

  function add(event) {
    if (!event || typeof event !== "object") {
      return;
    }
    const li = document.createElement("li");
    const kind = String(event.event || "event");
    li.className = `event ${kind}` + (event.outcome === "error" ? " error" : "");
    li.dataset.event = kind;
    li.dataset.platform = String(event.platform || "");
    li.dataset.id = String(event.id || "");
    const at = typeof event.at === "string" ? event.at.slice(11, 23) : "";
    li.append(span("time", at), span("what", kind), span("detail", describe(event)));
    const meta = [event.platform, event.type, event.conversation, event.user].filter(Boolean).join(" · ");
    li.append(span("meta", meta));
    eventsEl.prepend(li);
    while (eventsEl.children.length > MAX_EVENTS) {
      eventsEl.lastElementChild.remove();
    }
    count += 1;
    countEl.textContent = String(count);
  }

  async function whyRefused(token, userId) {
    try {
      const response = await fetch("/api/live/negotiate?negotiateVersion=1", {
        method: "POST",
        headers: { Authorization: `Bearer ${token}`, "x-ms-signalr-userid": userId },
      });
      if (!response.ok) {
        const data = await response.json().catch(() => ({}));
        return data.error || `negotiate answered ${response.status}`;
      }
      return "the SignalR Service could not be reached";
    } catch (err) {
      return "the function app could not be reached";
    }
  }

  async function connect(token) {
    const claims = claimsOf(token);
    const user = claims && (claims.oid || claims.sub);
    if (!claims || !claims.tid || !user) {
      setState("refused", "refused: the token names no tenant (tid) and user (oid)");
      return;
    }
    if (typeof signalR === "undefined") {
      setState("refused", "the SignalR client library (signalr.min.js) is missing");
      return;
    }
    const userId = `${claims.tid}:${user}`;
    whoEl.textContent = `${claims.name || claims.preferred_username || user} · tenant ${claims.tid}`;
    setState("connecting", "connecting…");
    connection = new signalR.HubConnectionBuilder()
      .withUrl("/api/live", { accessTokenFactory: () => token, headers: { "x-ms-signalr-userid": userId } })
      .withAutomaticReconnect()
      .configureLogging(signalR.LogLevel.Warning)
      .build();
    connection.on("activity", add);
    connection.onreconnecting(() => setState("connecting", "reconnecting…"));
    connection.onreconnected(() => setState("connected", "live"));
    connection.onclose(() => setState("closed", "disconnected"));
    try {
      await connection.start();
      setState("connected", "live");
    } catch (err) {
      connection = null;
      setState("refused", `refused: ${await whyRefused(token, userId)}`);
    }
  }

  document.getElementById("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const token = document.getElementById("token").value.trim();
    if (token) {
      sessionStorage.setItem(TOKEN_KEY, token);
      connect(token);
    }
  });
  document.getElementById("sign-out").addEventListener("click", async () => {
    sessionStorage.removeItem(TOKEN_KEY);
    if (connection) {
      await connection.stop();
      connection = null;
    }
    whoEl.textContent = "";
    setState("signed-out", "signed out");
  });

  const token = tokenFromUrl();
  if (token) {
    connect(token);
  }
})();
