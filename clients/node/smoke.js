// Calls a running server and prints one JSON line: used by tests/test_node_client.py,
// tests/test_tls.py and tests/test_node_auth.py. Usage: node smoke.js TARGET [OPTIONS],
// where OPTIONS is JSON with any of caFile, certFile, keyFile (PEM files) and serverName
// (any of them turns TLS on), and apiKey. The key may come from OPTISERVE_API_KEY instead.
//
// It calls ListModels, Generate and StreamGenerate, then Generate for a model that does not
// exist (its status name is `error`). A call that fails is put under `failures` by name
// ({code, grpcCode, details}) and on stderr, and the exit status is then 1.
"use strict";
const fs = require("fs");
const { Client, OptiserveError } = require("./index.js");

function clientOptions(text) {
  const { caFile, certFile, keyFile, serverName, apiKey } = text ? JSON.parse(text) : {};
  const read = (file) => (file ? fs.readFileSync(file) : undefined);
  const tls = Boolean(caFile || certFile || keyFile || serverName);
  return {
    apiKey: apiKey || process.env.OPTISERVE_API_KEY || undefined,
    ...(tls ? { tls, ca: read(caFile), cert: read(certFile), key: read(keyFile), serverName } : {}),
  };
}

async function main() {
  const client = new Client(process.argv[2], { timeoutMs: 30000, ...clientOptions(process.argv[3]) });
  const result = { failures: {} };
  const step = async (name, call) => {
    try {
      await call();
    } catch (err) {
      if (!(err instanceof OptiserveError)) throw err;
      result.failures[name] = { code: err.code, grpcCode: err.grpcCode, details: err.details };
      console.error(`${name}: ${err.message}`);
    }
  };
  const request = { prompt: "Hello from Node", sampling: { max_new_tokens: 6 } };
  await step("listModels", async () => {
    result.models = (await client.listModels()).map((m) => m.name);
  });
  await step("generate", async () => {
    const unary = await client.generate(request);
    result.text = unary.text;
    result.usage = unary.summary && unary.summary.usage;
  });
  await step("stream", async () => {
    result.streamed = "";
    for await (const chunk of client.stream(request)) {
      result.streamed += chunk.text_delta;
      if (chunk.summary) result.stream_usage = chunk.summary.usage;
    }
    result.completion_tokens = result.stream_usage && result.stream_usage.completion_tokens;
  });
  result.error = null;
  try {
    await client.generate({ prompt: "x", model: "no-such-model" });
  } catch (err) {
    if (!(err instanceof OptiserveError)) throw err;
    result.error = err.code;
  }
  client.close();
  console.log(JSON.stringify(result));
  process.exitCode = Object.keys(result.failures).length ? 1 : 0;
}

main().catch((err) => { console.error(err); process.exit(1); });
