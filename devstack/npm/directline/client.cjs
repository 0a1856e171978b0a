// The official botframework-directlinejs client in node, driven over stdin/stdout with JSON lines.
//   node client.cjs <base_url> <secret-or-token> <mode: websocket|polling> [conversationId] [watermark]
// stdout: {"status": "<ConnectionStatus name>"}, {"activity": {...}}, {"posted": "<id>"}, {"error": "..."}
// stdin:  {"post": {activity}} | {"end": true}
"use strict";
global.XMLHttpRequest = require("xhr2");
global.WebSocket = require("ws");
const readline = require("readline");
const { DirectLine, ConnectionStatus } = require("botframework-directlinejs");

const [baseUrl, credential, mode, conversationId, watermark] = process.argv.slice(2);
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const options = { domain: baseUrl, webSocket: mode !== "polling", pollingInterval: 200, timeout: 5000 };
if (credential.startsWith("token:")) options.token = credential.slice(6);
else options.secret = credential;
if (conversationId) options.conversationId = conversationId;
if (watermark) options.watermark = watermark;
const dl = new DirectLine(options);
dl.connectionStatus$.subscribe((s) => out({ status: ConnectionStatus[s] }));
dl.activity$.subscribe(
  (a) => out({ activity: a }),
  (e) => out({ error: String(e && e.message ? e.message : e) }),
);
readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const command = JSON.parse(line);
  if (command.post) {
    dl.postActivity(command.post).subscribe(
      (id) => out({ posted: id }),
      (e) => out({ error: "post: " + String(e && e.status ? e.status : e) }),
    );
  } else if (command.end) {
    dl.end();
    setTimeout(() => process.exit(0), 100);
  }
});
