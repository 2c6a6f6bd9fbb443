"""Reference profiles: reading training data, building, validating at load (clear errors, never at request time)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sidecar.errors import InvalidArgument, ModelLoadError
from sidecar.monitoring.build import quantile_edges, top_categories
from sidecar.monitoring.datafile import read_training_data
from sidecar.monitoring.profile import check_against_signature, load_profile, parse_profile
from sidecar.types import TensorSpec

SPECS = (TensorSpec("x", "FP32", (-1, 2)), TensorSpec("kind", "BYTES", (-1,)), TensorSpec("n", "INT64", (-1, 1)))


def test_csv_columns_map_to_inputs_in_order_and_the_header_names_features(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("height,weight,colour,count\n1.5,60,red,3\n,72.5,blue,4\n1.8,nan,,5\n")
    arrays, names = read_training_data(path, SPECS, batched=True)
    assert names == {"x": ["height", "weight"], "kind": ["colour"], "n": ["count"]}
    assert arrays["x"].dtype == np.float32 and arrays["x"].shape == (3, 2)
    assert np.isnan(arrays["x"][1, 0]) and np.isnan(arrays["x"][2, 1])
    assert arrays["kind"][:, 0].tolist() == [b"red", b"blue", b""]
    assert arrays["n"].dtype == np.int64 and arrays["n"][:, 0].tolist() == [3, 4, 5]


def test_npy_and_npz(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(12, dtype=np.float64).reshape(6, 2))
    arrays, names = read_training_data(tmp_path / "a.npy", SPECS[:1], batched=True)
    assert arrays["x"].dtype == np.float32 and names["x"] == ["x[0]", "x[1]"]
    np.savez(tmp_path / "b.npz", x=np.zeros((4, 2), np.float32), n=np.arange(4))
    specs = (SPECS[0], SPECS[2])
    arrays, names = read_training_data(tmp_path / "b.npz", specs, batched=True)
    assert arrays["n"].shape == (4, 1) and names["n"] == ["n"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("few.csv", "a,b\n1,2\n", "has 2 columns, but the model's inputs take 4"),
        ("ragged.csv", "a,b,c,d\n1,2,x,3\n1,2\n", "line 3: 2 fields, the header has 4"),
        ("bad.csv", "a,b,c,d\n1,oops,x,3\n", "cannot read as FP32 for input 'x'"),
        ("data.parquet", "PAR1", "cannot read the Parquet file"),
        ("data.feather", "ARROW1", "unsupported training data format '.feather'"),
    ],
)
def test_bad_training_data_is_a_clear_error(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(InvalidArgument, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_training_data(path, SPECS, batched=True)


def test_parquet_columns_map_to_inputs_like_csv_and_nulls_are_missing(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "height": pa.array([1.5, None, 1.8], pa.float64()),
            "weight": pa.array([60.0, 72.5, float("nan")], pa.float32()),
            "colour": pa.array(["red", "blue", None]).dictionary_encode(),
            "count": pa.array([3, 4, 5], pa.int32()),
        }
    )
    pq.write_table(table, tmp_path / "train.parquet")
    arrays, names = read_training_data(tmp_path / "train.parquet", SPECS, batched=True)
    assert names == {"x": ["height", "weight"], "kind": ["colour"], "n": ["count"]}
    assert arrays["x"].dtype == np.float32 and arrays["x"].shape == (3, 2)
    assert np.isnan(arrays["x"][1, 0]) and np.isnan(arrays["x"][2, 1]) and arrays["x"][0].tolist() == [1.5, 60.0]
    assert arrays["kind"][:, 0].tolist() == [b"red", b"blue", b""]
    assert arrays["n"].dtype == np.int64 and arrays["n"][:, 0].tolist() == [3, 4, 5]

    pq.write_table(table.set_column(3, "count", pa.array([3, None, 5], pa.int64())), tmp_path / "null.parquet")
    with pytest.raises(InvalidArgument, match="cannot read as INT64 for input 'n': missing values"):
        read_training_data(tmp_path / "null.parquet", SPECS, batched=True)
    pq.write_table(pa.table({"v": pa.array([[1.0, 2.0]])}), tmp_path / "lists.parquet")
    with pytest.raises(InvalidArgument, match=r"column 'v' has type list<.*one column per feature"):
        read_training_data(tmp_path / "lists.parquet", SPECS[:1], batched=True)


def test_quantile_edges_and_categories():
    assert quantile_edges(np.array([np.nan, 3.0, 1.0, 2.0, np.inf]), 2) == (1.0, 2.0, 3.0)
    assert quantile_edges(np.array([np.nan]), 3) == (0.0, 0.0, 0.0, 0.0)
    assert top_categories(np.array([5, 1, 5, 2, 1, 5]), 2, as_text=False) == (5, 1)
    assert top_categories(np.array([b"b", b"a", b"", b"a"], dtype=object), 5, as_text=True) == ("a", "b")


def _valid() -> dict:
    return {
        "format": "sidecar.reference_profile/1",
        "model": "m",
        "version": "1.0.0",
        "rows": 4,
        "bins": 2,
        "sources": [
            {
                "side": "input",
                "tensor": "x",
                "derive": "columns",
                "datatype": "FP32",
                "width": 1,
                "features": [{"name": "x", "kind": "numeric", "edges": [0.0, 1.0, 2.0], "counts": [0, 2, 2, 0, 0, 0]}],
            },
            {
                "side": "output",
                "tensor": "p",
                "derive": "confidence",
                "datatype": "FP32",
                "width": 3,
                "features": [{"name": "p.conf", "kind": "numeric", "edges": [0.4, 0.8, 1.0], "counts": [0] * 6}],
            },
        ],
    }


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.update(format="other/9"), "'format' is 'other/9'"),
        (lambda r: r.pop("bins"), "'bins' is missing"),
        (lambda r: r["sources"][0]["features"][0].update(edges=[0.0, 2.0, 1.0]), "sorted in non-decreasing"),
        (lambda r: r["sources"][0]["features"][0].update(edges=[0.0, 1.0]), "expected bins \\+ 1 = 3"),
        (lambda r: r["sources"][0]["features"][0].update(counts=[0, -1, 0, 0, 0, 0]), "non-negative integers"),
        (lambda r: r["sources"][0]["features"][0].update(kind="ordinal"), "'kind' must be 'numeric' or"),
        (lambda r: r["sources"][0]["features"][0].update(edges=[0.0, 1.0, float("inf")]), "finite numbers"),
        (lambda r: r["sources"][1]["features"][0].update(name="x"), "'name' 'x' is used twice"),
        (lambda r: r["sources"][0].update(derive="confidence"), "floating-point outputs only"),
    ],
)
def test_malformed_profiles_name_the_field(mutate, message):
    raw = _valid()
    parse_profile(raw, "p.json")  # the valid one parses
    mutate(raw)
    with pytest.raises(ModelLoadError, match=f"p.json: malformed reference profile: .*{message}"):
        parse_profile(raw, "p.json")


def test_profile_must_match_the_models_signature(tmp_path):
    path = tmp_path / "reference_profile.json"
    path.write_text(json.dumps(_valid()))
    profile = load_profile(path)
    good = (TensorSpec("x", "FP32", (-1,)),), (TensorSpec("p", "FP32", (-1, 3)),)
    check_against_signature(profile, *good, batched=True, where="here")
    with pytest.raises(ModelLoadError, match="names input 'x', which the model lacks"):
        check_against_signature(profile, (TensorSpec("y", "FP32", (-1,)),), good[1], batched=True, where="here")
    with pytest.raises(ModelLoadError, match="is FP64 in the model, FP32 in the profile"):
        check_against_signature(profile, (TensorSpec("x", "FP64", (-1,)),), good[1], batched=True, where="here")
    with pytest.raises(ModelLoadError, match="rows have 4 values in the model, 3 in the profile"):
        check_against_signature(profile, good[0], (TensorSpec("p", "FP32", (-1, 4)),), batched=True, where="here")
    path.write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        load_profile(path)
