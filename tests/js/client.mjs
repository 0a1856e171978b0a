// The official @microsoft/signalr client against the relaybus sandbox hub (tests and benchmark).
// usage: node client.mjs <hub url> <access token>
// Prints one JSON line per event: {"event":"started"}, then on stdin EOF {"event":"stats",...} and exits.
// Every Activity invocation is answered with a client result (the completion the shipped contract wants).
import * as signalR from "@microsoft/signalr";

const [url, token] = process.argv.slice(2);
const connection = new signalR.HubConnectionBuilder()
  .withUrl(url, { accessTokenFactory: () => token, transport: signalR.HttpTransportType.WebSockets })
  .configureLogging(signalR.LogLevel.Warning)
  .build();

let received = 0;
let ready = null;
connection.on("SocketReady", (info) => {
  ready = info.connectionId;
});
connection.on("Activity", (envelope) => {
  received += 1;
  const now = Date.now();
  return {
    protocolVersion: 1,
    envelopeId: envelope.envelopeId,
    botKey: envelope.botKey,
    status: 200,
    recvAt: now,
    ts: now,
  };
});

await connection.start();
console.log(JSON.stringify({ event: "started", connectionId: connection.connectionId }));
process.stdin.resume();
process.stdin.on("end", async () => {
  await connection.stop();
  console.log(JSON.stringify({ event: "stats", received, ready }));
  process.exit(0);
});
