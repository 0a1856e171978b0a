// The official Node Socket Mode client (@slack/socket-mode), acking every envelope at once: bench.efficiency's
// reference. Usage: node client.mjs API_URL APP_TOKEN. Prints "ready" once connected; answers each "cpu" line on
// stdin with this process's CPU seconds (process.cpuUsage: user + system); exits when stdin ends.
import { createRequire } from "node:module";
import readline from "node:readline";

const require = createRequire(process.env.RELAYBUS_NODE_MODULES + "/");
const { SocketModeClient, LogLevel } = require("@slack/socket-mode");

const [apiUrl, appToken] = process.argv.slice(2);
const client = new SocketModeClient({ appToken, logLevel: LogLevel.ERROR, clientOptions: { slackApiUrl: apiUrl } });
client.on("slack_event", async ({ ack }) => {
  await ack();
});
await client.start();
console.log("ready");
const lines = readline.createInterface({ input: process.stdin });
lines.on("line", (line) => {
  if (line.trim() === "cpu") {
    const usage = process.cpuUsage();
    console.log(((usage.user + usage.system) / 1e6).toFixed(6));
  }
});
lines.on("close", async () => {
  await client.disconnect();
  process.exit(0);
});
