"""GPU benchmarks: ResNet-50 and a transformer encoder exported from PyTorch, raw ONNX Runtime vs the sidecar."""
