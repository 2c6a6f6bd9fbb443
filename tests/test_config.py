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
