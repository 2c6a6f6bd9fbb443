import datetime as dt
import json

import pytest

from sidecar.engine.metadata import load_metadata
from sidecar.errors import ModelLoadError


def test_missing_file_gives_defaults(tmp_path):
    meta = load_metadata(tmp_path)
    assert meta.training_date is None and meta.offline_metrics == {} and meta.batching == {}


def test_json_and_toml(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "model.json").write_text(
        json.dumps(
            {
                "training_data_version": "td-7",
                "training_date": "2024-01-15",
                "hyperparameters": {"depth": 4},
                "offline_metrics": {"accuracy": 0.9},
                "warmup": {"batch_sizes": [1, 8], "runs": 3},
                "batching": {"max_batch_size": 16, "max_queue_delay_ms": 2},
            }
        )
    )
    meta = load_metadata(tmp_path / "a")
    assert meta.training_date == dt.date(2024, 1, 15)
    assert meta.warmup_batch_sizes == (1, 8) and meta.warmup_runs == 3
    assert meta.batching == {"max_batch_size": 16, "max_queue_delay_ms": 2}
    assert meta.as_parameters()["offline_metrics"] == '{"accuracy": 0.9}'
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "model.toml").write_text("training_date = 2023-05-01\n[offline_metrics]\nauc = 0.8\n")
    meta = load_metadata(tmp_path / "b")
    assert meta.training_date == dt.date(2023, 5, 1) and meta.offline_metrics == {"auc": 0.8}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"trainig_date": "2024-01-01"}, "unknown metadata key"),
        ({"training_date": "yesterday"}, "ISO date"),
        ({"offline_metrics": {"accuracy": "high"}}, "offline_metrics.accuracy must be a number"),
        ({"batching": {"max_batch": 3}}, "unknown batching key 'max_batch'"),
        ({"batching": {"max_batch_size": "8"}}, "batching.max_batch_size must be an integer"),
        ({"warmup": {"batch_sizes": [0]}}, "positive integers"),
        ([1, 2], "object/table"),
    ],
)
def test_bad_metadata_is_a_clear_error(tmp_path, content, message):
    (tmp_path / "model.json").write_text(json.dumps(content))
    with pytest.raises(ModelLoadError, match=message):
        load_metadata(tmp_path)


def test_unparsable(tmp_path):
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="cannot parse metadata"):
        load_metadata(tmp_path)
