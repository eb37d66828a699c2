"""Two LLVM operations numba does not expose, for its CPU kernels.

- `prefetch(arr, i)` asks the CPU to start loading the cache line of flat element i of
  a C-contiguous array, so a loop can overlap the cache misses of rows it will touch a
  few iterations later. A hint only: it never faults and changes no value.
- `fetch_add(arr, i, v)` atomically adds v to arr[i] and returns the old value, so
  threads can hand out work items one at a time. It is a full barrier (sequentially
  consistent): what a thread wrote before it is seen by a thread that reads its result,
  so counters of finished work items can order phases (`fetch_add(arr, i, 0)` reads).
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


def _element_pointer(context, builder, array_type, array, index):
    data = context.make_array(array_type)(context, builder, array).data
    return builder.gep(data, [index])


@intrinsic
def prefetch(typingctx, arr, index):
    """Prefetch flat element `index` of the C-contiguous array `arr` (inside @njit only)."""
    sig = types.void(arr, types.intp)

    def codegen(context, builder, signature, args):
        byte_ptr = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [byte_ptr, i32, i32, i32]),
            "llvm.prefetch.p0i8")
        ptr = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        # read, keep in all cache levels, data cache
        builder.call(fn, [builder.bitcast(ptr, byte_ptr), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def fetch_add(typingctx, arr, index, value):
    """Atomically arr[index] += value (int64 array), returning the value before (in @njit only)."""
    sig = types.int64(arr, types.intp, types.int64)

    def codegen(context, builder, signature, args):
        ptr = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        return builder.atomic_rmw("add", ptr, args[2], "seq_cst")

    return sig, codegen
