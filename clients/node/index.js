// optiserve client for Node.js: promise-based Generate / ListModels and an async-iterable
// StreamGenerate over @grpc/grpc-js. The contract is read from proto/optiserve/v1 at run
// time, so there is no generated code to keep in step.
"use strict";

const path = require("path");
const grpc = require("@grpc/grpc-js");
const loader = require("@grpc/proto-loader");

const PROTO = path.join(__dirname, "..", "..", "proto", "optiserve", "v1", "optiserve.proto");

class OptiserveError extends Error {
  constructor(err) {
    super(`${grpc.status[err.code]}: ${err.details}`);
    this.code = grpc.status[err.code];
    this.details = err.details;
  }
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
    this.apiKey = apiKey;
    this.timeoutMs = timeoutMs;
  }

  _meta() {
    const md = new grpc.Metadata();
    if (this.apiKey) md.set("x-api-key", this.apiKey);
    return md;
  }

  _opts() {
    return this.timeoutMs ? { deadline: Date.now() + this.timeoutMs } : {};
  }

  _unary(method, request) {
    return new Promise((resolve, reject) => {
      this.stub[method](request, this._meta(), this._opts(), (err, res) =>
        err ? reject(new OptiserveError(err)) : resolve(res));
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
      throw err.code !== undefined ? new OptiserveError(err) : err;
    } finally {
      call.cancel();
    }
  }

  close() {
    this.stub.close();
  }
}

module.exports = { Client, OptiserveError };
