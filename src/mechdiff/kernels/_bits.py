"""Bit reinterpretation helpers for numba CPU kernels.

bf16 and fp16 reach numba as uint16 bits (numba has no bf16 type and no CPU fp16
arrays). A bf16 value is the high half of a float32, so `u32 << 16` reinterpreted as
float32 decodes it exactly; numba has no scalar bitcast, hence these intrinsics.
"""

from __future__ import annotations

import numpy as np
import torch
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload


@intrinsic
def u32_as_f32(typingctx, bits):
    """Reinterpret uint32 bits as a float32 (inside @njit code only)."""
    sig = types.float32(types.uint32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@intrinsic
def f64_as_i64(typingctx, value):
    """Reinterpret float64 bits as an int64 (inside @njit code only)."""
    sig = types.int64(types.float64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return sig, codegen


def half_table(dtype: torch.dtype) -> np.ndarray:
    """float32[65536] holding the value of every 16-bit pattern of `dtype` (fp16 or bf16)."""
    bits = torch.arange(65536, dtype=torch.int32).to(torch.int16)
    return bits.view(dtype).float().numpy()


def as_bits_or_float(t: torch.Tensor) -> tuple[np.ndarray, int]:
    """Flat numpy view of a CPU tensor for numba, plus its decode kind.

    Args:
        t: CPU tensor of any dtype.

    Returns:
        (array, kind): kind 0 = array is float32/float64 values, 1 = bf16 bits,
        2 = fp16 bits (both as uint16). Other dtypes are upcast to float32 (a copy).
    """
    flat = t.detach().reshape(-1)
    if flat.dtype == torch.bfloat16:
        return flat.contiguous().view(torch.int16).numpy().view(np.uint16), 1
    if flat.dtype == torch.float16:
        return flat.contiguous().view(torch.int16).numpy().view(np.uint16), 2
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.float()
    return flat.contiguous().numpy(), 0


@intrinsic
def f32_as_i32(typingctx, value):
    """Reinterpret float32 bits as an int32 (inside @njit code only)."""
    sig = types.int32(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return sig, codegen


def as_f64(a, i):
    """a[i] as a float64 inside @njit code; a uint16 array holds bf16 bits.

    Dispatched on the array's type when numba compiles the caller, so a loop over bf16
    bits decodes in place (no buffer pass) and still vectorizes.
    """
    raise NotImplementedError("as_f64 is only callable from @njit code")


@overload(as_f64, inline="always")
def _as_f64_impl(a, i):
    if a.dtype == types.uint16:
        return lambda a, i: np.float64(u32_as_f32(np.uint32(a[i]) << 16))
    return lambda a, i: np.float64(a[i])
