"""optiserve: a gRPC inference-optimization server.

The import package is layered (see DESIGN.md): ``rpc`` is the only layer that imports
grpc; ``engine``, ``cache``, ``backends`` and ``routing`` speak domain dataclasses.
"""

__version__ = "0.1.0"
