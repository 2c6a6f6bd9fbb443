import pytest

from sidecar.cli import build_parser
from sidecar.config import SidecarConfig, describe
from sidecar.errors import ConfigError


def test_sources_in_order(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[server]\ngrpc_port = 9001\n[batching]\nmax_queue_delay_ms = 3.5\nmax_batch_size = 8\n")
    cfg = SidecarConfig.load(
        f, overrides={"batching.max_batch_size": 16}, environ={"SIDECAR_SERVER__GRPC_PORT": "9002"}
    )
    assert cfg.server.grpc_port == 9002  # env beats file
    assert cfg.batching.max_batch_size == 16  # flag beats file
    assert cfg.batching.max_queue_delay_ms == 3.5


def test_yaml(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("engine:\n  providers: [CPUExecutionProvider]\n")
    assert SidecarConfig.load(f, environ={}).engine.providers == ("CPUExecutionProvider",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[server]\ngrpc_prt = 1\n", "unknown configuration key.*server.grpc_prt"),
        ("[server]\ngrpc_port = 'x'\n", "server.grpc_port must be an integer"),
        ("[batching]\nenabled = 'maybe'\n", "batching.enabled must be true or false"),
        ("not toml [", "not valid"),
    ],
)
def test_errors_name_the_key(tmp_path, text, message):
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message):
        SidecarConfig.load(f, environ={})


def test_help_documents_every_key(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    out = capsys.readouterr().out
    for key, _default, doc in describe():
        assert key in out
        assert doc.split()[0] in out


def test_cudnn_conv_algo_search_is_checked_and_reaches_the_cuda_provider(tmp_path, monkeypatch):
    """engine.cudnn_conv_algo_search names one of cuDNN's three modes; the engine hands it to the CUDA
    provider only (a session on a machine without CUDA gets plain provider names)."""
    from sidecar.engine import onnx_session

    with pytest.raises(ConfigError, match=r"engine\.cudnn_conv_algo_search must be one of EXHAUSTIVE"):
        SidecarConfig.load(environ={"SIDECAR_ENGINE__CUDNN_CONV_ALGO_SEARCH": "FAST"})
    config = SidecarConfig.load(environ={"SIDECAR_ENGINE__CUDNN_CONV_ALGO_SEARCH": "EXHAUSTIVE"})
    assert config.engine.cudnn_conv_algo_search == "EXHAUSTIVE"
    assert SidecarConfig.load(environ={}).engine.cudnn_conv_algo_search == "HEURISTIC"

    seen = {}

    class FakeSession:
        def __init__(self, path, sess_options, providers):
            seen["providers"] = providers

        def get_providers(self):
            return [p[0] if isinstance(p, tuple) else p for p in seen["providers"]]

        def get_inputs(self):
            return []

        def get_outputs(self):
            return []

    import onnxruntime as ort

    monkeypatch.setattr(ort, "InferenceSession", FakeSession)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "preload_dlls", lambda: seen.setdefault("preloaded", True), raising=False)
    monkeypatch.setattr(onnx_session, "_preloaded", False)
    engine = onnx_session.OnnxEngine(
        tmp_path / "m.onnx",
        providers=["CUDAExecutionProvider"],
        executor=None,
        max_batch_size=8,
        cudnn_conv_algo_search="DEFAULT",
    )
    assert seen["providers"] == [
        ("CUDAExecutionProvider", {"cudnn_conv_algo_search": "DEFAULT"}),
        "CPUExecutionProvider",
    ]
    assert seen["preloaded"] is True and engine.provider == "CUDAExecutionProvider"
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    onnx_session.OnnxEngine(tmp_path / "m.onnx", providers=["CUDAExecutionProvider"], executor=None, max_batch_size=8)
    assert seen["providers"] == ["CPUExecutionProvider"]


def test_serving_settles_the_heap_with_the_configured_collector_threshold():
    """``server.gc_gen0_threshold``: 10,000 by default, set after start-up (the start-up heap frozen);
    0 leaves Python's threshold; a negative one is refused, naming the key."""
    import gc

    from sidecar.cli import settle_heap

    assert SidecarConfig.load(None, environ={}).server.gc_gen0_threshold == 10_000
    with pytest.raises(ConfigError, match="gc_gen0_threshold must be 0 or more"):
        SidecarConfig.load(None, environ={"SIDECAR_SERVER__GC_GEN0_THRESHOLD": "-1"})
    before = gc.get_threshold()
    try:
        settle_heap(12_345)
        assert gc.get_threshold() == (12_345, *before[1:]) and gc.get_freeze_count() > 0
        settle_heap(0)
        assert gc.get_threshold()[0] == 12_345
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
