"""Operator attributes in a description: the JSON type of each, checked before the operator's own
checks (a bool is not an int, a string is not a number, nothing is coerced). A new operator
lists its attributes in `ATTRIBUTE_TYPES` (tests/api/test_hostile_json.py holds the table to the
operators)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from convplan.kernels import operators
from convplan.kernels.operators import Operator

from .errors import quoted, shown

#: The JSON type of every attribute of every operator (`kernels.operators`' attribute_defaults;
#: the operator then checks the values). A kind ending in "?" may also be null.
_I, _IS, _I_IS, _N, _B, _S = "int", "ints", "int or ints", "number", "bool", "string"
_NS = "numbers"
_POOL = {"kernel": _I_IS, "stride": _I_IS, "padding": _I_IS, "ceil_mode": _B}
_CONSTANT = {"constant_shape": _IS + "?"}
_REDUCE = {"axes": _IS + "?", "keepdims": _B}
ATTRIBUTE_TYPES: dict[str, dict[str, str]] = {
    "conv": {"out_channels": _I, "kernel": _I_IS, "stride": _I_IS, "padding": _I_IS,
             "dilation": _I_IS, "groups": _I, "bias": _B},
    "convtranspose": {"out_channels": _I, "kernel": _I_IS, "stride": _I_IS, "padding": _I_IS,
                      "output_padding": _I_IS, "dilation": _I_IS, "groups": _I, "bias": _B,
                      "algorithm": _S},
    "relu": {}, "sigmoid": {}, "hardswish": {}, "identity": {}, "batchnorm": {},
    "globalavgpool": {},
    "clip": {"min": _N + "?", "max": _N + "?"},
    "hardsigmoid": {"alpha": _N, "beta": _N},
    "add": _CONSTANT, "mul": _CONSTANT, "sub": _CONSTANT, "div": _CONSTANT,
    "gemm": {"out_features": _I, "alpha": _N, "beta": _N, "trans_a": _B, "trans_b": _B,
             "bias": _B},
    "matmul": _CONSTANT,
    "lrn": {"size": _I, "alpha": _N, "beta": _N, "bias": _N},
    "maxpool": {**_POOL, "dilation": _I_IS},
    "avgpool": {**_POOL, "count_include_pad": _B},
    "softmax": {"axis": _I}, "concat": {"axis": _I}, "flatten": {"axis": _I},
    "split": {"axis": _I, "sizes": _IS},
    "reshape": {"shape": _IS}, "transpose": {"perm": _IS + "?"},
    "expand": {"shape": _IS}, "tile": {"repeats": _IS},
    "slice": {"starts": _IS, "ends": _IS, "axes": _IS + "?", "steps": _IS + "?"},
    "reducesum": _REDUCE, "reducemean": _REDUCE, "reducemax": _REDUCE, "reducel2": _REDUCE,
    "leakyrelu": {"alpha": _N}, "elu": {"alpha": _N}, "selu": {"alpha": _N, "gamma": _N},
    "erf": {}, "gelu": {"approximate": _S}, "prelu": {"slope_shape": _IS},
    "sqrt": {}, "pow": {"exponent": _N},
    "layernorm": {"axes": _IS, "epsilon": _N, "bias": _B}, "instancenorm": {"epsilon": _N},
    "pad": {"pads": _IS, "mode": _S, "value": _N},
    "resize": {"scales": _NS + "?", "sizes": _IS + "?", "mode": _S, "coordinates": _S,
               "nearest": _S},
}


_KIND_WORDS = {_I: "an int", _IS: "a list of ints", _I_IS: "an int or a list of ints",
               _N: "a finite number", _B: "true or false", _S: "a string",
               _NS: "a list of finite numbers"}


def _kind_of_default(default: Any) -> str:
    """The kind of an attribute an operator declares but the table above does not list."""
    if isinstance(default, bool):
        return _B
    if isinstance(default, int):
        return _I_IS
    if isinstance(default, float):
        return _N
    if isinstance(default, str):
        return _S
    return "number or ints?"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_ints(v: Any) -> bool:
    return isinstance(v, list) and all(_is_int(x) for x in v)


def _fits(kind: str, value: Any) -> bool:
    if kind.endswith("?"):
        if value is None:
            return True
        kind = kind[:-1]
    if kind == _B:
        return isinstance(value, bool)
    if kind == _S:
        return isinstance(value, str)
    if kind == _I:
        return _is_int(value)
    if kind == _IS:
        return _is_ints(value)
    if kind == _I_IS:
        return _is_int(value) or _is_ints(value)
    if kind == _N:
        return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)
    if kind == _NS:
        return isinstance(value, list) and all(_fits(_N, v) for v in value)
    return _fits(_N, value) or _is_ints(value)


def attribute_types(op: str) -> dict[str, str]:
    """Attribute name -> JSON kind for ``op`` (ValueError for an unknown operator)."""
    declared = operators.operator_class(op).attribute_defaults()
    table = ATTRIBUTE_TYPES.get(op, {})
    return {name: table.get(name) or _kind_of_default(default)
            for name, default in declared.items()}


def make_operator(op: str, attrs: Mapping[str, Any]) -> Operator:
    """The operator, its attributes checked first: known names, JSON types (a bool is not an
    int, a string is not a number, nothing is coerced), then the operator's own checks."""
    kinds = attribute_types(op)
    unknown = [k for k in attrs if k not in kinds]
    if unknown:
        listed = ", ".join(quoted(k) for k in sorted(unknown)[:5])
        raise ValueError(f"{op}: unknown attribute(s) {listed}; known: "
                         f"{', '.join(kinds) or 'none'}")
    for name, value in attrs.items():
        kind = kinds[name]
        if not _fits(kind, value):
            want = _KIND_WORDS.get(kind.removesuffix("?"), "a number or a list of ints")
            null = " or null" if kind.endswith("?") else ""
            raise ValueError(f"{op}: {name} must be {want}{null}, got {shown(value)}")
    return operators.make(op, **attrs)
