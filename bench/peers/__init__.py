"""Peer servers for the comparison: a minimal MLServer runtime and a PyTriton server, both over ONNX Runtime.

Each runs in its own virtualenv under bench/.venvs/ (see bench/peers/setup_venvs.sh): MLServer 1.7.1
needs protobuf < 7, the sidecar protobuf >= 7.35.
"""
