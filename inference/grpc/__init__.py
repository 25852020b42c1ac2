"""KServe v2 over gRPC (grpc.aio)."""
