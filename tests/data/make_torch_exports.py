"""Regenerate the PyTorch-exported test models in this folder (needs torch; not run by tests).

Small classification CNNs in the shapes PyTorch users export today: a MobileNetV3-style net
(Conv-BN-Hardswish, depthwise, squeeze-excite with Hardsigmoid, residual Add, Dropout, Linear),
a ResNet-style net (BN, MaxPool with ceil_mode, AvgPool, GlobalAveragePool, flatten, Gemm),
and a ShuffleNet-style net (channel split via Split/Slice, channel shuffle via Reshape/Transpose,
Concat, ReLU6 as Clip, Softmax). Weights random (seeded).

    python tests/data/make_torch_exports.py
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).parent


class SqueezeExcite(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, max(c // 4, 1), 1)
        self.fc2 = nn.Conv2d(max(c // 4, 1), c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = nn.functional.adaptive_avg_pool2d(x, 1)
        s = nn.functional.hardsigmoid(self.fc2(nn.functional.relu(self.fc1(s))))
        return x * s


class InvertedResidual(nn.Module):
    def __init__(self, c: int, expand: int, stride: int) -> None:
        super().__init__()
        e = c * expand
        self.block = nn.Sequential(
            nn.Conv2d(c, e, 1, bias=False), nn.BatchNorm2d(e), nn.Hardswish(),
            nn.Conv2d(e, e, 3, stride, 1, groups=e, bias=False), nn.BatchNorm2d(e),
            nn.Hardswish(), SqueezeExcite(e),
            nn.Conv2d(e, c, 1, bias=False), nn.BatchNorm2d(c))
        self.residual = stride == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class MobileNetish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16),
                                  nn.Hardswish())
        self.blocks = nn.Sequential(InvertedResidual(16, 2, 1), InvertedResidual(16, 3, 2),
                                    InvertedResidual(16, 2, 1))
        self.head = nn.Sequential(nn.Linear(16, 32), nn.Hardswish(), nn.Dropout(0.2),
                                  nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.head(x)


class ResNetish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 7, 2, 3, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1, ceil_mode=True))
        self.body = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU(), nn.Conv2d(16, 16, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(16))
        self.down = nn.Sequential(nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False),
                                  nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32))
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = nn.functional.relu(x + self.body(x))
        x = nn.functional.relu(self.down(x))
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
        return self.fc(x.reshape(x.shape[0], -1))


class ShuffleBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        h = c // 2
        self.branch = nn.Sequential(nn.Conv2d(h, h, 1), nn.ReLU6(),
                                    nn.Conv2d(h, h, 3, 1, 1, groups=h), nn.Conv2d(h, h, 1),
                                    nn.ReLU6())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        y = torch.cat([a, self.branch(b)], dim=1)
        n, c, hh, ww = y.shape
        return y.view(n, 2, c // 2, hh, ww).transpose(1, 2).reshape(n, c, hh, ww)


class ShuffleNetish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 24, 3, 2, 1)
        self.blocks = nn.Sequential(ShuffleBlock(24), ShuffleBlock(24))
        self.fc = nn.Linear(24 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(nn.functional.relu(self.stem(x)))
        x = x[:, :, 2:6, 1::2]                         # Slice with steps
        x = nn.functional.adaptive_avg_pool2d(x, (2, 2))
        return torch.softmax(self.fc(torch.flatten(x, 1)), dim=-1)


def main() -> None:
    torch.manual_seed(0)
    for model, name, opset in ((MobileNetish(), "mobilenetish", 17),
                               (ResNetish(), "resnetish", 13),
                               (ShuffleNetish(), "shufflenetish", 15)):
        model.eval()
        for m in model.modules():               # non-trivial batch-norm statistics
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
        x = torch.randn(1, 3, 32, 32)
        torch.onnx.export(model, (x,), str(HERE / f"torch_{name}.onnx"), opset_version=opset,
                          input_names=["input"], output_names=["output"], dynamo=False,
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})


if __name__ == "__main__":
    main()
