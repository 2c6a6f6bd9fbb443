"""sidecar: an inference sidecar proxy speaking the Open Inference Protocol (KServe v2 / Triton gRPC).

The public API is small on purpose:

- ``sidecar.app.Sidecar``: build from a ``sidecar.config.SidecarConfig``, ``await start()``,
  ``await drain()``, ``await stop()``.
- ``sidecar.config.SidecarConfig.load(...)``: the whole configuration as frozen data.
- ``sidecar.errors``: the documented error tree.
"""

__version__ = "0.1.0"
