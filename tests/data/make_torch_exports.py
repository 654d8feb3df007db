"""Regenerate the PyTorch-exported test models in this folder (needs torch; not run by tests).

Small classification CNNs in the shapes PyTorch users export today: a MobileNetV3-style net
(Conv-BN-Hardswish, depthwise, squeeze-excite with Hardsigmoid, residual Add, Dropout, Linear),
a ResNet-style net (BN, MaxPool with ceil_mode, AvgPool, GlobalAveragePool, flatten, Gemm),
a ShuffleNet-style net (channel split via Split/Slice, channel shuffle via Reshape/Transpose,
Concat, ReLU6 as Clip, Softmax), a ConvNeXt-style net as timm writes it (LayerNorm2d as
permute / layer_norm / permute, blocks with Linear layers and GELU in channels-last, layer
scale), at opset 17 and at opset 13 (the layer norm written out), a net with TF-style "same"
padding computed from the input's shape (timm's Conv2dSame), and a dense-prediction net
(reflection and replication padding, instance norm, nearest and bilinear upsampling, the
logits resized to the input's size). Weights random (seeded).

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


class LayerNorm2d(nn.LayerNorm):
    """timm's: the channels normalised in channels-last."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = nn.functional.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, 1, 3, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.fc1, self.fc2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.rand(c) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.fc2(nn.functional.gelu(self.fc1(self.norm(y)))).permute(0, 3, 1, 2)
        return x + y * self.gamma.reshape(1, -1, 1, 1)


class ConvNeXtish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 4, 4), LayerNorm2d(16, eps=1e-6))
        self.stage = nn.Sequential(ConvNeXtBlock(16), LayerNorm2d(16, eps=1e-6),
                                   nn.Conv2d(16, 24, 2, 2), ConvNeXtBlock(24))
        self.head = nn.Sequential(nn.LayerNorm(24), nn.Linear(24, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage(self.stem(x))
        return self.head(x.mean((2, 3)))


class Conv2dSame(nn.Conv2d):
    """timm's: TensorFlow's "same" padding, computed from the input's shape at run time."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.size()[-2:]      # traced: tensors, so the pads become ONNX arithmetic
        pads = []
        for size, k, s in ((iw, self.kernel_size[1], self.stride[1]),
                           (ih, self.kernel_size[0], self.stride[0])):
            if isinstance(size, torch.Tensor):
                total = torch.clamp(((size / s).ceil() - 1) * s + k - size, min=0)
            else:
                total = max((-(-size // s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        x = nn.functional.pad(x, pads)
        return nn.functional.conv2d(x, self.weight, self.bias, self.stride)


class TFSameish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(Conv2dSame(3, 8, 3, 2), nn.SiLU(), Conv2dSame(8, 8, 5, 1),
                                  nn.SiLU(), Conv2dSame(8, 16, 3, 2), nn.ReLU())
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.body(x), 1), 1))


class Denseish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.ReflectionPad2d(2), nn.Conv2d(3, 8, 5),
                                  nn.InstanceNorm2d(8, affine=True), nn.ReLU(),
                                  nn.Conv2d(8, 16, 3, 2, 1), nn.InstanceNorm2d(16, affine=True),
                                  nn.ReLU())
        self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                nn.ReplicationPad2d(1), nn.Conv2d(16, 8, 3), nn.ReLU())
        self.side = nn.Conv2d(16, 4, 1)
        self.out = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.down(x)
        side = nn.functional.interpolate(self.side(f), scale_factor=2, mode="bilinear",
                                         align_corners=True)
        y = self.out(self.up(f)) + side
        return nn.functional.interpolate(y, size=x.shape[-2:], mode="bilinear",
                                         align_corners=False)


def main() -> None:
    """Only the models added last are written (the others as they are in the repository were
    exported by an earlier PyTorch: MobileNetish at opset 17, ResNetish at 13, ShuffleNetish at
    15)."""
    torch.manual_seed(0)
    for model, name, opset in ((ConvNeXtish(), "convnextish", 17),
                               (ConvNeXtish(), "convnextish_opset13", 13),
                               (TFSameish(), "tfsameish", 17),
                               (Denseish(), "denseish", 17)):
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
