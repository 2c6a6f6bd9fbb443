"""A minimal MLServer runtime that serves an ONNX model with ONNX Runtime (MLServer ships none).

Loaded by MLServer from a model-settings.json such as::

    {"name": "mlp", "implementation": "mlserver_onnx.OnnxRuntimeModel",
     "parameters": {"uri": "/path/model.onnx", "extra": {"intra_op_threads": 1}},
     "max_batch_size": 64, "max_batch_time": 0.001}

with bench/peers on PYTHONPATH. Like MLServer's own runtimes (mlserver-sklearn, mlserver-xgboost) it
runs the model inside ``predict`` on the event loop; decoding and encoding use MLServer's NumpyCodec.
With adaptive batching MLServer concatenates requests along the first dimension before ``predict``
and splits the outputs after it, so the model sees batches.

``write_repository`` writes MLServer's settings.json and one folder per model for a benchmark run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

try:  # only importable inside MLServer's virtualenv; write_repository works anywhere
    from mlserver import MLModel
    from mlserver.codecs import NumpyCodec
    from mlserver.types import InferenceRequest, InferenceResponse
except ImportError:  # pragma: no cover - the orchestrator imports this module for write_repository
    MLModel = object  # type: ignore[misc,assignment]


class OnnxRuntimeModel(MLModel):  # type: ignore[misc,valid-type]
    async def load(self) -> bool:
        import onnxruntime as ort

        params = self.settings.parameters
        extra = dict(params.extra or {}) if params is not None else {}
        options = ort.SessionOptions()
        threads = int(extra.get("intra_op_threads", 0))
        if threads:
            options.intra_op_num_threads = threads
        providers = extra.get("providers") or ["CPUExecutionProvider"]
        self._session = ort.InferenceSession(str(params.uri), sess_options=options, providers=providers)
        self._input_names = [i.name for i in self._session.get_inputs()]
        self._output_names = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feed = {inp.name: NumpyCodec.decode_input(inp) for inp in payload.inputs}
        wanted = [o.name for o in payload.outputs] if payload.outputs else self._output_names
        results = self._session.run(wanted, feed)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[NumpyCodec.encode_output(name, array) for name, array in zip(wanted, results, strict=True)],
        )


def write_repository(
    root: Path,
    models: Mapping[str, Path],
    *,
    grpc_port: int,
    http_port: int,
    parallel_workers: int,
    max_batch_size: int,
    max_batch_time_s: float,
    intra_op_threads: int,
    providers: tuple[str, ...] = ("CPUExecutionProvider",),
    declare_signature: bool = False,
) -> Path:
    """MLServer's settings.json plus ``<root>/<model>/model-settings.json`` for each model; returns root.

    ``declare_signature``: list each model's inputs and outputs (read from the ONNX file) in its settings,
    so that MLServer's ModelMetadata reports them (a sidecar in front of it needs them)."""
    root.mkdir(parents=True, exist_ok=True)
    settings: dict[str, Any] = {
        "debug": False,
        "host": "127.0.0.1",
        "grpc_port": grpc_port,
        "http_port": http_port,
        "parallel_workers": parallel_workers,
        "metrics_endpoint": None,
        "metrics_dir": str(root / ".metrics"),
        "environments_dir": str(root / ".envs"),
        "grpc_max_message_length": 256 * 1024 * 1024,
    }
    (root / "settings.json").write_text(json.dumps(settings, indent=2))
    for name, path in models.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        model_settings: dict[str, Any] = {
            "name": name,
            "implementation": "mlserver_onnx.OnnxRuntimeModel",
            "parameters": {
                "uri": str(Path(path).resolve()),
                "extra": {"intra_op_threads": intra_op_threads, "providers": list(providers)},
            },
        }
        if declare_signature:
            model_settings.update(_signature(Path(path)))
        if max_batch_size > 1:
            model_settings["max_batch_size"] = max_batch_size
            model_settings["max_batch_time"] = max_batch_time_s
        (folder / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    return root


_ONNX_DATATYPES = {1: "FP32", 6: "INT32", 7: "INT64", 9: "BOOL", 10: "FP16", 11: "FP64"}  # onnx.TensorProto


def _signature(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Open Inference Protocol tensor metadata of an ONNX model's graph inputs and outputs (-1: dynamic)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph

    def spec(value: Any) -> dict[str, Any]:
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        return {"name": value.name, "datatype": _ONNX_DATATYPES[tensor.elem_type], "shape": dims}

    return {"inputs": [spec(v) for v in graph.input], "outputs": [spec(v) for v in graph.output]}
