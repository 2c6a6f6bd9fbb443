"""The router: picks the model version that answers a request and dispatches to it.

Today: a request that names a version is pinned to it; otherwise the newest ready version (in
semantic-version order) answers. Traffic policies (canary weights, sticky keys, shadows) extend this.
"""

from __future__ import annotations

from sidecar.engine.repository import Repository
from sidecar.types import InferenceRequest, InferenceResponse


class Router:
    def __init__(self, repository: Repository) -> None:
        self._repository = repository

    async def dispatch(self, request: InferenceRequest) -> InferenceResponse:
        version = self._repository.get(request.model_name, request.model_version)
        return await version.infer(request)
