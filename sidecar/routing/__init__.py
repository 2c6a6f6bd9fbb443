"""Which version answers a request: explicit pinning, the default version, traffic policies."""
