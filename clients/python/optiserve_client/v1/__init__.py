"""Generated protobuf and gRPC code for the optiserve.v1 contract (see proto/).

Built from ``proto/optiserve/v1/*.proto`` when this distribution is built (setup.py),
never edited by hand. The server imports these modules too: one copy per process.
"""
