// The official @microsoft/signalr client against a relaybus live hub: negotiate through the function app
// (which validates the token and answers with the SignalR Service's URL and an access token), then the
// service's WebSocket. Used by the live tests (installed with devstack/live.py into .relaybus/node/signalr).
// usage: node live-client.mjs <hub base url, e.g. http://127.0.0.1:7071/api/live> <bearer token> <user id>
// Prints one JSON line per event: {"event":"started"}, {"event":"activity","data":…} for every push,
// {"event":"error","message":…} when start fails; on stdin EOF {"event":"stats",…} and exits.
import * as signalR from "@microsoft/signalr";

const [url, token, userId] = process.argv.slice(2);
const say = (data) => process.stdout.write(JSON.stringify(data) + "\n");
const connection = new signalR.HubConnectionBuilder()
  .withUrl(url, {
    accessTokenFactory: () => token,
    headers: { "x-ms-signalr-userid": userId },
    transport: signalR.HttpTransportType.WebSockets,
  })
  .configureLogging(signalR.LogLevel.Warning)
  .build();

let received = 0;
connection.on("activity", (data) => {
  received += 1;
  say({ event: "activity", data });
});

try {
  await connection.start();
  say({ event: "started", connectionId: connection.connectionId });
} catch (err) {
  say({ event: "error", message: String(err && err.message ? err.message : err) });
  process.exit(3);
}
process.stdin.resume();
process.stdin.on("end", async () => {
  await connection.stop();
  say({ event: "stats", received });
  process.exit(0);
});
