"""One module per algorithm family; importing this package registers them all."""

from . import depthwise, direct, kn2row, mec, patch, pointwise, winograd

__all__ = ["depthwise", "direct", "kn2row", "mec", "patch", "pointwise", "winograd"]
