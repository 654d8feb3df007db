"""The CNN zoo the benchmarks run: torchvision's and timm's convolutional networks, exported to
ONNX with random seeded weights (needs the bench extras: torch, torchvision, timm).

    python bench/zoo.py [--only NAME,...] [--zoo DIR] [--list]

Exports every network of `CATALOGUE` that is not in DIR yet (default
/tmp/convplan-bench/zoo), each in a fresh process with a time limit, and prints one line per
network: written, or why not. `bench/coverage.py` runs them; `bench/memory.py` and
`bench/network.py` take single ones. Names are ``source/model`` (``torchvision/resnet50``,
``timm/ghostnet_100``); the input is 1x3x224x224 unless the catalogue says otherwise (299 for
the Inception v3 family, 512x512 for dense prediction). Every export is opset 17 through the
TorchScript exporter (``dynamo=False``), as most deployed ONNX files are made today.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import itertools
import json
import subprocess
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ZOO = Path("/tmp/convplan-bench/zoo")
OPSET = 17


@dataclass(frozen=True)
class Entry:
    """One network of the zoo: where it comes from, how it is built and its input."""

    name: str                              # "torchvision/resnet50"
    size: int = 224                        # input height and width
    kwargs: tuple[tuple[str, Any], ...] = ()
    kind: str = "classification"           # or "segmentation"

    @property
    def source(self) -> str:
        return self.name.split("/", 1)[0]

    @property
    def model(self) -> str:
        return self.name.split("/", 1)[1]

    @property
    def file_name(self) -> str:
        return self.name.replace("/", "--") + ".onnx"


def _tv(model: str, size: int = 224, **kwargs: Any) -> Entry:
    return Entry(f"torchvision/{model}", size, tuple(sorted(kwargs.items())))


def _timm(model: str, size: int = 224) -> Entry:
    return Entry(f"timm/{model}", size)


#: Every convolutional classification network of torchvision (its transformers, ViT, Swin and
#: MaxViT, are not CNNs; RegNet-Y 32/128 GF are left out for their size: 145M and 645M
#: parameters), torchvision's segmentation networks at 512x512, a U-Net, and timm CNN families
#: (one or two members each).
CATALOGUE: tuple[Entry, ...] = (
    _tv("alexnet"), *(_tv(f"vgg{d}{bn}") for d in (11, 13, 16, 19) for bn in ("", "_bn")),
    *(_tv(f"resnet{d}") for d in (18, 34, 50, 101, 152)),
    _tv("resnext50_32x4d"), _tv("resnext101_32x8d"), _tv("resnext101_64x4d"),
    _tv("wide_resnet50_2"), _tv("wide_resnet101_2"),
    _tv("squeezenet1_0"), _tv("squeezenet1_1"),
    *(_tv(f"densenet{d}") for d in (121, 161, 169, 201)),
    _tv("googlenet", aux_logits=False, init_weights=False),
    _tv("inception_v3", 299, aux_logits=False, init_weights=False),
    *(_tv(f"shufflenet_v2_x{w}") for w in ("0_5", "1_0", "1_5", "2_0")),
    _tv("mobilenet_v2"), _tv("mobilenet_v3_small"), _tv("mobilenet_v3_large"),
    *(_tv(f"mnasnet{w}") for w in ("0_5", "0_75", "1_0", "1_3")),
    *(_tv(f"efficientnet_b{i}") for i in range(8)),
    _tv("efficientnet_v2_s"), _tv("efficientnet_v2_m"), _tv("efficientnet_v2_l"),
    *(_tv(f"regnet_x_{s}") for s in ("400mf", "800mf", "1_6gf", "3_2gf", "8gf", "16gf",
                                       "32gf")),
    *(_tv(f"regnet_y_{s}") for s in ("400mf", "800mf", "1_6gf", "3_2gf", "8gf", "16gf")),
    *(_tv(f"convnext_{s}") for s in ("tiny", "small", "base", "large")),
    *(Entry(f"torchvision/{m}", 512, kind="segmentation") for m in (
        "fcn_resnet50", "fcn_resnet101", "deeplabv3_resnet50", "deeplabv3_resnet101",
        "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large")),
    Entry("convplan/unet", 512, kind="segmentation"),
    *(_timm(m) for m in (
        "resnet18d", "resnet50d", "resnetv2_50", "resnext26ts", "seresnext26d_32x4d",
        "ecaresnet26t", "skresnet18", "res2net50_26w_4s", "resnest14d", "resnetrs50",
        "gcresnet33ts", "regnetx_002", "regnety_002", "regnetz_b16", "rexnet_100",
        "mixnet_s", "mnasnet_100", "semnasnet_050", "spnasnet_100", "fbnetc_100",
        "hardcorenas_a", "tinynet_a", "lcnet_050", "mobilenetv2_100",
        "mobilenetv3_large_100", "mobilenetv4_conv_small", "efficientnet_b0",
        "tf_efficientnet_b0", "efficientnetv2_rw_t", "ghostnet_100", "ghostnetv2_100",
        "repghostnet_050", "cspresnet50", "cspdarknet53", "cs3darknet_s", "darknet53",
        "dla34", "dpn68", "densenet121", "hrnet_w18_small", "selecsls42b",
        "ese_vovnet19b_dw", "gernet_s", "repvgg_a0", "mobileone_s0", "hgnetv2_b0",
        "nf_resnet26", "vgg11", "convnext_atto", "convnextv2_atto", "xception41",
        "inception_v4", "inception_resnet_v2")),
    _timm("inception_v3", 299),
)
BY_NAME = {e.name: e for e in CATALOGUE}


def import_torchvision() -> types.ModuleType:
    """torchvision, with its models and segmentation models imported.

    A torchvision wheel built for another torch (PyPI's, which links CUDA, beside a CPU-only
    torch) fails in its package init, where it registers its compiled detection operators;
    the models need none of them, so then the package is imported as a plain namespace."""
    try:
        import torchvision
    except (RuntimeError, OSError):
        for name in [m for m in sys.modules if m == "torchvision" or
                     m.startswith("torchvision.")]:
            del sys.modules[name]
        spec = importlib.util.find_spec("torchvision")
        if spec is None or spec.submodule_search_locations is None:
            raise
        shell = types.ModuleType("torchvision")
        shell.__path__ = list(spec.submodule_search_locations)
        shell.__spec__ = spec
        sys.modules["torchvision"] = shell
        import torchvision
    import torchvision.models
    import torchvision.models.segmentation
    return torchvision


def _unet() -> Any:
    """A small U-Net (Ronneberger et al. 2015, channels / 4): convolutions, max pooling,
    transposed-convolution upsampling and skip concatenations; the dense-prediction pattern
    where the activations, not the weights, set the peak."""
    import torch
    from torch import nn

    def block(i: int, o: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(),
                             nn.Conv2d(o, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU())

    class UNet(nn.Module):
        def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 128, 256)) -> None:
            super().__init__()
            self.down = nn.ModuleList(block(i, o) for i, o in
                                      zip((3, *widths[:-1]), widths, strict=True))
            self.up = nn.ModuleList(nn.ConvTranspose2d(o, i, 2, 2) for i, o in
                                    itertools.pairwise(widths))
            self.merge = nn.ModuleList(block(2 * w, w) for w in widths[:-1])
            self.head = nn.Conv2d(widths[0], 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            skips = []
            for i, down in enumerate(self.down):
                x = down(x if i == 0 else nn.functional.max_pool2d(x, 2))
                skips.append(x)
            for up, merge, skip in zip(reversed(self.up), reversed(self.merge),
                                       reversed(skips[:-1]), strict=True):
                x = merge(torch.cat([up(x), skip], 1))
            return self.head(x)

    return UNet()


def build(entry: Entry) -> Any:
    """The entry's PyTorch module in eval mode, random weights, batch-norm statistics set."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    if entry.source == "timm":
        with contextlib.suppress(ImportError):
            import_torchvision()        # timm imports it: the same fallback first
        import timm

        model = timm.create_model(entry.model, pretrained=False)
    elif entry.source == "convplan":
        model = {"unet": _unet}[entry.model]()
    elif entry.kind == "segmentation":
        net = getattr(import_torchvision().models.segmentation, entry.model)(
            weights=None, weights_backbone=None, aux_loss=False)

        class Out(nn.Module):           # the "out" head of the dict the model returns
            def __init__(self) -> None:
                super().__init__()
                self.net = net

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.net(x)["out"]

        model = Out()
    else:
        model = getattr(import_torchvision().models, entry.model)(weights=None,
                                                                  **dict(entry.kwargs))
    model.eval()
    for m in model.modules():           # statistics that do not make every layer the identity
        if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None:
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model


def export_one(entry: Entry, path: Path) -> None:
    """Write ``entry`` as an ONNX file at ``path`` (in this process)."""
    import torch

    model = build(entry)
    x = torch.randn(1, 3, entry.size, entry.size)
    partial = path.with_suffix(".partial")
    with torch.inference_mode():
        torch.onnx.export(model, (x,), str(partial), opset_version=OPSET, dynamo=False,
                          input_names=["input"], output_names=["output"])
    partial.replace(path)


def export(entry: Entry, zoo: Path = ZOO, timeout_s: float = 600) -> Path | str:
    """The entry's ONNX file in ``zoo``, exported in a fresh process if it is not there yet;
    or why it could not be (the exporter's last line)."""
    path = zoo / entry.file_name
    if path.exists():
        return path
    zoo.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run([sys.executable, __file__, "--export-one", entry.name,
                               "--zoo", str(zoo)], capture_output=True, text=True,
                              timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return f"export timed out after {timeout_s:.0f} s"
    if done.returncode != 0 or not path.exists():
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        return "export failed: " + (lines[-1] if lines else f"exit {done.returncode}")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated names (default: the whole catalogue)")
    parser.add_argument("--zoo", type=Path, default=ZOO)
    parser.add_argument("--list", action="store_true", help="print the names and stop")
    parser.add_argument("--export-one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.export_one:
        export_one(BY_NAME[args.export_one], args.zoo / BY_NAME[args.export_one].file_name)
        return
    entries = [BY_NAME[n] for n in args.only.split(",")] if args.only else list(CATALOGUE)
    if args.list:
        print("\n".join(e.name for e in entries))
        return
    for entry in entries:
        start = time.perf_counter()
        got = export(entry, args.zoo)
        print(json.dumps({"name": entry.name, "result": str(got),
                          "seconds": round(time.perf_counter() - start, 1)}), flush=True)


if __name__ == "__main__":
    main()
