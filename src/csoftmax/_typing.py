"""The type vocabulary of the public API's annotations (csoftmax._api, csoftmax.special).

Results follow the input's array type: a NumPy array of a float dtype gives an array of
the same dtype (FloatT), other NumPy input -- integer or bool arrays, Python scalars and
(nested) lists, NumPy scalars -- a NumPy float array, and an array of another library
the same type back (ArrayT: anything with a shape and a dtype, as the registry's
backends take).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, TypeVar, Union

import numpy as np
from numpy.typing import NDArray


class Array(Protocol):
    """An array of some library, as csoftmax takes it: it has a shape and a dtype."""

    @property
    def shape(self) -> Any: ...

    @property
    def dtype(self) -> Any: ...


ArrayT = TypeVar("ArrayT", bound=Array)
FloatT = TypeVar("FloatT", bound="np.floating[Any]")

# input that becomes a NumPy array: arrays, NumPy scalars, Python numbers, (nested) sequences
NumPyInput = Union[NDArray[Any], np.generic, float, complex, Sequence[Any]]
# what csoftmax returns for NumPyInput (the result dtype is a float dtype)
FloatArray = NDArray[np.floating[Any]]
# axis=: one axis, several (one softmax over their joint extent), or None (all)
Axis = Union[int, Sequence[int], None]
