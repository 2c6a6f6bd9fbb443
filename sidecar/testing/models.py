"""Build small, real ONNX models and model repositories."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

ONNX_TYPES = {
    "BOOL": "BOOL",
    "UINT8": "UINT8",
    "UINT16": "UINT16",
    "UINT32": "UINT32",
    "UINT64": "UINT64",
    "INT8": "INT8",
    "INT16": "INT16",
    "INT32": "INT32",
    "INT64": "INT64",
    "FP16": "FLOAT16",
    "FP32": "FLOAT",
    "FP64": "DOUBLE",
    "BYTES": "STRING",
}
OPSET = 17


def _save(model, path: Path) -> Path:
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def identity_model(path: Path, datatype: str = "FP32", dims: tuple[int, ...] = (4,)) -> Path:
    """INPUT0 [batch, *dims] -> OUTPUT0 (copy) and OUTPUT1 (copy): every datatype ONNX Runtime takes."""
    from onnx import TensorProto, helper

    et = getattr(TensorProto, ONNX_TYPES[datatype])
    shape = ["batch", *dims]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"]), helper.make_node("Identity", ["INPUT0"], ["OUTPUT1"])],
        f"identity_{datatype.lower()}",
        [helper.make_tensor_value_info("INPUT0", et, shape)],
        [helper.make_tensor_value_info("OUTPUT0", et, shape), helper.make_tensor_value_info("OUTPUT1", et, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return _save(model, path)


def mlp_model(
    path: Path, features: int = 64, hidden: int = 256, classes: int = 10, seed: int = 0, sleep_free: bool = True
) -> Path:
    """A float32 MLP: features -> hidden -> hidden -> classes, softmax probabilities, dynamic batch."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def w(name: str, shape: tuple[int, ...]):
        return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32), name)

    inits = [
        w("W1", (features, hidden)),
        w("W2", (hidden, hidden)),
        w("W3", (hidden, classes)),
        numpy_helper.from_array(np.zeros(hidden, np.float32), "B1"),
        numpy_helper.from_array(np.zeros(hidden, np.float32), "B2"),
        numpy_helper.from_array(np.zeros(classes, np.float32), "B3"),
    ]
    nodes = [
        helper.make_node("Gemm", ["input", "W1", "B1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["a1"]),
        helper.make_node("Gemm", ["a1", "W2", "B2"], ["h2"]),
        helper.make_node("Relu", ["h2"], ["a2"]),
        helper.make_node("Gemm", ["a2", "W3", "B3"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", features])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", classes]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return _save(model, path)


def sklearn_classifier(
    path: Path,
    dataset: str = "breast_cancer",
    kind: str = "logistic",
    seed: int = 0,
) -> tuple[Path, dict[str, Any]]:
    """Train a scikit-learn classifier on a bundled dataset, convert it with skl2onnx.

    Returns the model path and metadata (offline accuracy, hyperparameters) for model.json.
    """
    from skl2onnx import to_onnx
    from sklearn import datasets
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    loader = {"breast_cancer": datasets.load_breast_cancer, "iris": datasets.load_iris, "wine": datasets.load_wine}[
        dataset
    ]
    x, y = loader(return_X_y=True)
    x = x.astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=seed, stratify=y)
    if kind == "logistic":
        params: dict[str, Any] = {"C": 1.0, "max_iter": 500}
        clf = make_pipeline(StandardScaler(), LogisticRegression(**params))
    else:
        params = {"n_estimators": 60, "max_depth": 3, "learning_rate": 0.1, "random_state": seed}
        clf = GradientBoostingClassifier(**params)
    clf.fit(x_train, y_train)
    accuracy = float(clf.score(x_test, y_test))
    onx = to_onnx(
        clf,
        x_train[:1],
        options={id(clf): {"zipmap": False}} if kind != "logistic" else {id(clf.steps[-1][1]): {"zipmap": False}},
        target_opset={"": OPSET, "ai.onnx.ml": 3},
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(onx.SerializeToString())
    meta = {
        "description": f"{kind} classifier on scikit-learn's {dataset} dataset",
        "hyperparameters": params,
        "offline_metrics": {"accuracy": round(accuracy, 4)},
    }
    return path, meta


def write_version(
    repo: Path, model: str, version: str, build, metadata: Mapping[str, Any] | None = None, **kwargs: Any
) -> Path:
    """Create ``repo/model/version/model.onnx`` with ``build(path, **kwargs)`` and an optional model.json."""
    vdir = repo / model / version
    vdir.mkdir(parents=True, exist_ok=True)
    build(vdir / "model.onnx", **kwargs)
    if metadata is not None:
        (vdir / "model.json").write_text(json.dumps(metadata, indent=2))
    return vdir
