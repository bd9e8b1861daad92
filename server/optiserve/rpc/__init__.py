"""Transport: the gRPC server, its interceptors and the protobuf <-> domain conversion."""
