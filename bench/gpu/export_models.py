"""Export ResNet-50 and a transformer encoder from PyTorch (random weights) to ONNX, as a sidecar repository.

PyTorch is needed here only, never by the sidecar at run time. Both graphs have a dynamic batch
dimension; the encoder's sequence length is fixed.

    python -m bench.gpu.export_models --out bench/.models/gpu-repository [--tiny]

writes ``<out>/resnet50/1.0.0/model.onnx`` (input "input" FP32 [batch, 3, 224, 224] -> "logits" FP32
[batch, 1000]) and ``<out>/encoder/1.0.0/model.onnx`` (input "input_ids" INT64 [batch, seq] ->
"embedding" FP32 [batch, d_model], mean-pooled), each with a model.json. ``--tiny`` exports narrow,
shallow versions of both (same names and signatures) to check the pipeline quickly on a CPU.

The networks are written out here (no torchvision): ResNet-50 is the standard bottleneck ResNet
(3-4-6-3 blocks, widths 64-512, expansion 4); the encoder defaults to BERT-base's shape (12 layers,
d_model 768, 12 heads, feed-forward 3072, vocabulary 30522, sequence 128), post-norm, GELU.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

OPSET = 17


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        out = width * 4
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = (
            nn.Identity()
            if stride == 1 and cin == out
            else nn.Sequential(nn.Conv2d(cin, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + self.shortcut(x))


class ResNet(nn.Module):
    """Bottleneck ResNet; ``blocks=(3, 4, 6, 3)`` and ``base=64`` is ResNet-50."""

    def __init__(self, blocks: Sequence[int] = (3, 4, 6, 3), base: int = 64, classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, base, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(base),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        layers = []
        cin = base
        for stage, count in enumerate(blocks):
            width = base * 2**stage
            for k in range(count):
                layers.append(Bottleneck(cin, width, 2 if (k == 0 and stage > 0) else 1))
                cin = width * 4
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.body(self.stem(x))), 1))


class EncoderLayer(nn.Module):
    """Post-norm transformer encoder layer from plain operators (exports the same with every ONNX exporter)."""

    def __init__(self, d_model: int, heads: int, ff: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = d_model // heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.ff1 = nn.Linear(d_model, ff)
        self.ff2 = nn.Linear(ff, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        scores = torch.matmul(q, k.transpose(-1, -2)) * (self.head_dim**-0.5)
        attended = torch.matmul(torch.softmax(scores, dim=-1), v).transpose(1, 2).reshape(b, t, d)
        x = self.norm1(x + self.proj(attended))
        return self.norm2(x + self.ff2(self.act(self.ff1(x))))


class Encoder(nn.Module):
    """Token + position embeddings, post-norm transformer encoder layers, mean pooling."""

    def __init__(self, vocab: int, d_model: int, heads: int, layers: int, ff: int, seq: int) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, d_model)
        self.positions = nn.Parameter(torch.randn(1, seq, d_model) * 0.02)
        self.layers = nn.Sequential(*(EncoderLayer(d_model, heads, ff) for _ in range(layers)))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.layers(self.tokens(input_ids) + self.positions).mean(dim=1)


def _export(model: nn.Module, example: torch.Tensor, path: Path, input_name: str, output_name: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    with torch.no_grad():
        kwargs = dict(
            input_names=[input_name],
            output_names=[output_name],
            dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
            opset_version=OPSET,
        )
        try:  # the TorchScript exporter needs no onnxscript; newer PyTorch wants it chosen explicitly
            torch.onnx.export(model, (example,), str(path), dynamo=False, **kwargs)
        except TypeError:  # PyTorch without the ``dynamo`` argument
            torch.onnx.export(model, (example,), str(path), **kwargs)


def export_resnet50(out: Path, tiny: bool = False, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = ResNet(blocks=(1, 1, 1, 1), base=8) if tiny else ResNet()
    vdir = out / "resnet50" / "1.0.0"
    _export(model, torch.randn(1, 3, 224, 224), vdir / "model.onnx", "input", "logits")
    meta = {
        "description": ("tiny " if tiny else "") + "ResNet-50 (random weights), FP32 NCHW 224x224 -> 1000 logits",
        "hyperparameters": {"blocks": [1, 1, 1, 1] if tiny else [3, 4, 6, 3], "base_width": 8 if tiny else 64},
    }
    (vdir / "model.json").write_text(json.dumps(meta, indent=2))
    return vdir / "model.onnx"


def export_encoder(
    out: Path,
    tiny: bool = False,
    seed: int = 0,
    layers: int = 12,
    d_model: int = 768,
    heads: int = 12,
    ff: int = 3072,
    vocab: int = 30522,
    seq: int = 128,
) -> Path:
    torch.manual_seed(seed)
    if tiny:
        layers, d_model, heads, ff, vocab = 2, 64, 4, 128, 1000
    model = Encoder(vocab, d_model, heads, layers, ff, seq)
    vdir = out / "encoder" / "1.0.0"
    _export(model, torch.randint(0, vocab, (1, seq), dtype=torch.int64), vdir / "model.onnx", "input_ids", "embedding")
    meta = {
        "description": f"transformer encoder (random weights), {layers} layers, d_model {d_model}, seq {seq}",
        "hyperparameters": {"layers": layers, "d_model": d_model, "heads": heads, "ff": ff, "vocab": vocab, "seq": seq},
    }
    (vdir / "model.json").write_text(json.dumps(meta, indent=2))
    return vdir / "model.onnx"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu.export_models", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/.models/gpu-repository", help="repository folder to write")
    parser.add_argument("--tiny", action="store_true", help="small variants, for a quick check on a CPU")
    parser.add_argument("--only", choices=("resnet50", "encoder"), help="export just one model")
    parser.add_argument("--encoder-layers", type=int, default=12)
    parser.add_argument("--encoder-d-model", type=int, default=768)
    parser.add_argument("--encoder-heads", type=int, default=12)
    parser.add_argument("--encoder-ff", type=int, default=3072)
    parser.add_argument("--encoder-seq", type=int, default=128)
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.only in (None, "resnet50"):
        print(export_resnet50(out, args.tiny), flush=True)
    if args.only in (None, "encoder"):
        path = export_encoder(
            out,
            args.tiny,
            layers=args.encoder_layers,
            d_model=args.encoder_d_model,
            heads=args.encoder_heads,
            ff=args.encoder_ff,
            seq=args.encoder_seq,
        )
        print(path, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
