"""One computation for every array library: NumPy data is computed with torch, without a copy.

``torch.from_numpy`` shares the array's memory, so a NumPy caller pays no copy and gets torch's
vectorised, multi-threaded kernels; the result comes back as NumPy. Torch tensors stay tensors,
on their device, with autograd.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

# dtypes computed in float32, as their range and precision cannot hold a sum of logs.
_LOW_PRECISION = (torch.float16, torch.bfloat16)
_NUMERIC_KINDS = "biuf"  # bool, signed and unsigned integers, floats


def to_tensor(name: str, value: Any, device: torch.device | None = None) -> torch.Tensor:
    """``value`` as a tensor: torch tensors as they are, anything array-like through NumPy.

    Array-likes go to ``device`` (that of the other arguments' tensors) when one is given.
    """
    if isinstance(value, torch.Tensor):
        if value.is_complex():
            raise TypeError(f"`{name}` must be an array of real numbers; got dtype {value.dtype}")
        return value
    try:
        array = np.asarray(value)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(f"`{name}` must be an array of numbers; got {_describe(value)}") from error
    if array.dtype.kind not in _NUMERIC_KINDS:
        raise TypeError(f"`{name}` must be an array of numbers; got dtype {array.dtype}")
    if array.dtype.itemsize > 8:
        raise TypeError(f"`{name}` must hold numbers of 64 bits at most; got dtype {array.dtype}")
    if not (array.dtype.isnative and array.flags.aligned) or any(s < 0 for s in array.strides):
        array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("="))
    with warnings.catch_warnings():  # read-only arrays are fine: crossent never writes inputs
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensor = torch.from_numpy(array)
    return tensor if device is None else tensor.to(device)


def floating(tensor: torch.Tensor) -> torch.Tensor:
    """Integers and bools (a one-hot table, say) as float64; floats as they are."""
    return tensor if tensor.is_floating_point() else tensor.double()


def compute_precision(tensor: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 in float32, as sums of their logs need float32's precision and range."""
    return tensor.float() if tensor.dtype in _LOW_PRECISION else tensor


def wants_numpy(values: list[Any]) -> bool:
    """True when no input is a torch tensor, so that the caller gets NumPy back."""
    return not any(isinstance(value, torch.Tensor) for value in values)


def to_output(result: torch.Tensor, numpy: bool) -> Any:
    """The result in the caller's library: a NumPy array or scalar, or the tensor itself."""
    if not numpy:
        return result
    array = result.detach().cpu().numpy()
    return array[()] if array.ndim == 0 else array


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"a {type(value).__name__}"
