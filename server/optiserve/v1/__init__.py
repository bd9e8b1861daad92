"""Generated protobuf and gRPC code for the optiserve.v1 contract (see proto/)."""
