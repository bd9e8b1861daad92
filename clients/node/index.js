// optiserve client for Node.js: promise-based Generate / ListModels and an async-iterable
// StreamGenerate over @grpc/grpc-js. The contract is read from proto/optiserve/v1 at run
// time, so there is no generated code to keep in step.
//
//   const { Client, OptiserveError } = require("./index.js");
//   const client = new Client("10.0.0.5:50051", {
//     apiKey: process.env.OPTISERVE_API_KEY,  // sent as `authorization: Bearer <key>`
//     ca: fs.readFileSync("ca.crt"),          // TLS (see security() below)
//     timeoutMs: 30000,
//   });
//   const { text } = await client.generate({ prompt: "Hello", sampling: { max_new_tokens: 16 } });
//   for await (const chunk of client.stream({ prompt: "Hello" })) {
//     process.stdout.write(chunk.text_delta);
//     if (chunk.summary) console.log(chunk.summary.usage);  // on the last chunk
//   }
//
// A failed call rejects (or, for stream(), throws) an OptiserveError: `code` is the status
// name ("UNAUTHENTICATED": no key, an unknown or a revoked one; "PERMISSION_DENIED": a key
// without the scope the call needs), `grpcCode` its number (16, 7), `details` the server's
// message (it says what to do, and names a key by its id only).
"use strict";

const path = require("path");
const grpc = require("@grpc/grpc-js");
const loader = require("@grpc/proto-loader");

const PROTO = path.join(__dirname, "..", "..", "proto", "optiserve", "v1", "optiserve.proto");

class OptiserveError extends Error {
  constructor(err) {
    super(`${grpc.status[err.code]}: ${err.details}`);
    this.name = "OptiserveError";
    this.code = grpc.status[err.code]; // the status name, e.g. "UNAUTHENTICATED"
    this.grpcCode = err.code; // its number, e.g. 16
    this.details = err.details; // the server's message
    this.metadata = err.metadata; // the trailing metadata the server sent
  }
}

// grpc-js's errors carry a numeric status code; Node's own (ECONNRESET...) a string one.
const isStatusError = (err) => err !== null && typeof err === "object" && typeof err.code === "number";

// The key goes out as `authorization: Bearer <key>` (the server also reads `x-api-key`),
// as the Python client sends it. Checked when the client is made, so that a stray newline
// read from a key file fails there, once, with a plain message.
function checkApiKey(apiKey) {
  if (apiKey === undefined || apiKey === null || apiKey === "") return undefined;
  if (typeof apiKey !== "string" || !/^[\x21-\x7e]+$/.test(apiKey)) {
    throw new TypeError("apiKey must be a string of printable ASCII characters without spaces");
  }
  return apiKey;
}

// Channel credentials and options. TLS is on with `tls: true` or any of `ca` (PEM the
// server's certificate must chain to; default: Node's root certificates), `cert` and `key`
// (a client certificate and its key, for mutual TLS) and `serverName` (the name the
// server's certificate carries, when it is not the target's host). `ca`, `cert` and `key`
// are PEM text (a Buffer or a string), as in Node's `tls.connect`.
function security({ tls, ca, cert, key, serverName } = {}) {
  if (!(tls || ca || cert || key || serverName)) {
    return { credentials: grpc.credentials.createInsecure(), options: {} };
  }
  if (!cert !== !key) throw new Error("cert and key go together: a client certificate needs both");
  const pem = (x) => (x === undefined || x === null ? null : Buffer.from(x));
  return {
    credentials: grpc.credentials.createSsl(pem(ca), pem(key), pem(cert)),
    options: serverName ? { "grpc.ssl_target_name_override": serverName } : {},
  };
}

class Client {
  constructor(target = "127.0.0.1:50051", { apiKey, timeoutMs, tls, ca, cert, key, serverName } = {}) {
    const def = loader.loadSync(PROTO, { keepCase: true, defaults: true, enums: String, longs: Number });
    const { OptiServe } = grpc.loadPackageDefinition(def).optiserve.v1;
    const { credentials, options } = security({ tls, ca, cert, key, serverName });
    this.stub = new OptiServe(target, credentials, options);
    this.apiKey = checkApiKey(apiKey);
    this.timeoutMs = timeoutMs;
  }

  _meta() {
    const md = new grpc.Metadata();
    if (this.apiKey) md.set("authorization", `Bearer ${this.apiKey}`);
    return md;
  }

  _opts() {
    return this.timeoutMs ? { deadline: Date.now() + this.timeoutMs } : {};
  }

  _unary(method, request) {
    return new Promise((resolve, reject) => {
      this.stub[method](request, this._meta(), this._opts(), (err, res) =>
        err ? reject(isStatusError(err) ? new OptiserveError(err) : err) : resolve(res));
    });
  }

  generate(request) {
    return this._unary("Generate", request);
  }

  listModels() {
    return this._unary("ListModels", {}).then((res) => res.models);
  }

  async *stream(request) {
    const call = this.stub.StreamGenerate(request, this._meta(), this._opts());
    try {
      for await (const chunk of call) yield chunk;
    } catch (err) {
      throw isStatusError(err) ? new OptiserveError(err) : err;
    } finally {
      call.cancel();
    }
  }

  close() {
    this.stub.close();
  }
}

module.exports = { Client, OptiserveError };
