"""Which version answers a request: explicit pinning, the default version, traffic policies, shadows."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sidecar.config import SidecarConfig
    from sidecar.engine.repository import Repository
    from sidecar.routing.control import RoutingController
    from sidecar.routing.router import Router

log = logging.getLogger(__name__)

STATE_FILE_DEFAULT = Path(".sidecar") / "routing-state.json"


def state_file_path(config: SidecarConfig) -> Path | None:
    """``routing.state_file``, its default under the repository, or None ('none' or no repository)."""
    value = config.routing.state_file.strip()
    if value.lower() == "none":
        return None
    if value:
        return Path(value)
    if config.repository.path:
        return Path(config.repository.path) / STATE_FILE_DEFAULT
    return None


def build_routing(config: SidecarConfig, repository: Repository) -> tuple[Router, RoutingController]:
    """The router (request path) and its controller (control API), configured from ``config.routing``."""
    from sidecar.routing.control import RoutingController
    from sidecar.routing.gate import ShadowGate
    from sidecar.routing.router import Router
    from sidecar.routing.shadow import ShadowMirror
    from sidecar.routing.state import StateFile

    rc = config.routing
    mirror = ShadowMirror(
        repository.get,
        queue_size=rc.shadow_queue_size,
        workers=rc.shadow_workers,
        timeout_s=rc.shadow_timeout_s,
        window_s=rc.shadow_window_s,
        windows=rc.shadow_windows,
        max_loop_lag_ms=rc.shadow_max_loop_lag_ms,
        collect_ms=rc.shadow_collect_ms,
        max_primary_inflight=rc.shadow_max_primary_inflight,
        gate=ShadowGate(
            max_slowdown=rc.shadow_max_primary_slowdown,
            min_share=rc.shadow_min_share,
            max_loop_busy=rc.shadow_max_loop_busy,
        ),
    )
    router = Router(repository, mirror)
    path = state_file_path(config)
    if path is None:
        log.warning("routing: no state file (routing.state_file); run-time policy changes end with the process")
    controller = RoutingController(router, repository, rc.policies, StateFile(path) if path is not None else None)
    return router, controller
