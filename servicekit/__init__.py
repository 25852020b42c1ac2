"""Service scaffolding shared by every tenfold service (pod, gateway, and the coming
control plane and autoscaler): settings loading, logging, the uvloop run loop with
signal handling and ordered drain, a machine-readable ready file, the process launcher
that reads it, a worker supervisor, and the aiohttp / grpc.aio error adapters.

It knows nothing of any service: of ours it imports only ``inference.protocol`` (the
error hierarchy) and ``protos``; nothing here imports the CLI package.
"""
