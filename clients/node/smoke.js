// Calls a running server and prints one JSON line: used by tests/test_node_client.py and
// tests/test_tls.py. Usage: node smoke.js TARGET [TLS], where TLS is JSON with any of
// caFile, certFile, keyFile (PEM files) and serverName.
"use strict";
const fs = require("fs");
const { Client } = require("./index.js");

function tlsOptions(text) {
  if (!text) return {};
  const { caFile, certFile, keyFile, serverName } = JSON.parse(text);
  const read = (file) => (file ? fs.readFileSync(file) : undefined);
  return { tls: true, ca: read(caFile), cert: read(certFile), key: read(keyFile), serverName };
}

async function main() {
  const client = new Client(process.argv[2], { timeoutMs: 30000, ...tlsOptions(process.argv[3]) });
  const models = await client.listModels();
  const request = { prompt: "Hello from Node", sampling: { max_new_tokens: 6 } };
  const unary = await client.generate(request);
  let streamed = "";
  let summary = null;
  for await (const chunk of client.stream(request)) {
    streamed += chunk.text_delta;
    if (chunk.summary) summary = chunk.summary;
  }
  let error = null;
  try {
    await client.generate({ prompt: "x", model: "no-such-model" });
  } catch (err) {
    error = err.code;
  }
  client.close();
  console.log(JSON.stringify({
    models: models.map((m) => m.name),
    text: unary.text,
    streamed,
    completion_tokens: summary && summary.usage.completion_tokens,
    error,
  }));
}

main().catch((err) => { console.error(err); process.exit(1); });
