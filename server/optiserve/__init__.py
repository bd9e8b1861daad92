"""optiserve: a gRPC inference-optimization server.

Layers, top to bottom (each imports only the ones below it; import-linter contracts in
pyproject.toml are checked by ``make test``)::

    cli        the ``optiserve`` command
    app        composition root: config -> models -> cache -> service -> gRPC server
    config     the typed configuration loader (TOML + environment)
    rpc        transport only: servicer, protobuf <-> domain, interceptors (the only grpc user)
    service    the one object rpc calls: generate, stream, list_models, usage, drain
    cache      exact + semantic response cache
    routing    which model answers (the router)
    models     Backend protocol, catalogue, local/ (Hugging Face with continuous batching)
    accounting usage counters
    domain     request/response types, errors, validation

``tools`` holds build-time helpers and is never imported when serving.
"""

__version__ = "0.1.0"
