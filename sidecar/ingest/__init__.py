"""Ingest workers: extra processes taking gRPC calls on the sidecar's port (``server.ingest_workers``)."""
