"""One module per algorithm family; importing this package registers them all, in the order the
paper presents them (the order `convplan algorithms` lists them)."""

# isort: skip_file
from . import direct, patch, kn2row, mec, pointwise, winograd, depthwise

__all__ = ["depthwise", "direct", "kn2row", "mec", "patch", "pointwise", "winograd"]
