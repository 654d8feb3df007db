"""convplan.kernels: convolution algorithms, the BLAS wrapper, layouts. Depends on NumPy only."""

from . import algorithms, blas, operators, registry
from .base import ConvAlgorithm, Prepared
from .conv import conv2d, default_algorithm
from .spec import LAYOUTS, ConvSpec, Layout

__all__ = [
    "LAYOUTS",
    "ConvAlgorithm",
    "ConvSpec",
    "Layout",
    "Prepared",
    "algorithms",
    "blas",
    "conv2d",
    "default_algorithm",
    "operators",
    "registry",
]
