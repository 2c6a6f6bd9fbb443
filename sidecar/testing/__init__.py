"""Helpers shipped for tests, benchmarks and the demo: model builders and a fake engine.

Models are made here, never downloaded (needs the ``demo`` extra: onnx, scikit-learn, skl2onnx).
"""
