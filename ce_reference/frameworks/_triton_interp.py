"""Run Triton kernels (Liger Kernel, cut-cross-entropy) on the CPU under Triton's interpreter.

``TRITON_INTERPRET=1`` makes ``@triton.jit`` return an ``InterpretedFunction``
that executes the kernel body in Python with NumPy arrays, one program
instance after another.  The interpreter is good enough to run the two
projects' cross-entropy kernels, except for the gaps below (measured with
triton 3.9.0, torch 2.13.0+cpu, liger-kernel 0.8.5, cut-cross-entropy 25.1.1;
see the ``liger`` and ``cce`` sections of ``docs/audit.md``).  :func:`enable`
closes them by patching the *interpreter* -- never the audited code -- so
that the kernels compute what the compiled kernels compute on a GPU:

1. **Python-float kernel arguments** (``softcap``, ``grad_scale``,
   ``filter_eps``...).  Compiled Triton specialises a Python ``float``
   argument as ``fp32`` (``triton.runtime.jit.mangle_type(1.5) == "fp32"``)
   and the kernel receives a float32 scalar.  The interpreter's
   ``_implicit_cvt`` wraps ``bool``, ``int`` and tensors but passes a
   ``float`` through raw, so ``softcap.to(tl.float32)`` in Liger's kernel
   raises ``AttributeError: 'float' object has no attribute 'to'`` and
   arithmetic with it is done in float64.  Patch: a ``float`` argument
   becomes a float32 scalar tensor, as in compiled Triton.

2. **libdevice functions** (``tanh`` for soft-capping in both projects,
   ``log1p`` in cut-cross-entropy's ``tl_logaddexp``).
   ``triton.language.extra.libdevice`` holds stubs (``def tanh(arg0): ...``)
   that the *compiler* replaces by the backend's libdevice
   (``get_module_map``); the interpreter does not, so ``tanh(x)`` returns
   ``None`` there (and the CUDA libdevice raises "extern_elementwise not
   supported in interpreter mode").  Patch: while a kernel is interpreted,
   the stubs -- as attributes of the libdevice module (cut-cross-entropy
   calls ``tl_libdevice.tanh``) and as names bound in the kernel's module
   (Liger does ``from triton.language.extra.libdevice import tanh``) -- are
   NumPy ``tanh`` / ``log1p`` evaluated in the argument's dtype (float32:
   NumPy's float32 routines, within 1-2 ulp as CUDA's ``__nv_tanhf``).

3. **Reductions with a kernel's own combine function** (``tl.reduce(x,
   axis, fn)``; cut-cross-entropy's gradient filter reduces each 128 x 128
   block with ``tl_and_reduce_fn``).  The interpreter's ``generic_reduce``
   folds element by element, one Python call of ``fn`` on scalar tensors per
   element (16,384 per block: 10 of the 11 seconds of one float16 backward
   at V = 37).  Patch: the same reduction as a pairwise tree of calls of the
   same ``fn`` on whole slices (adjacent pairs, so the order of the operands
   is kept; log2(n) calls).  Triton requires a combine function to be
   associative, and the compiled kernel reduces in a tree (within a thread,
   then across lanes and warps), so the result is the compiled one's; for
   cut-cross-entropy's ``a & b`` it is identical to the fold.  The built-in
   sum / max / min / argmax reductions are NumPy calls already and are not
   affected.

Not patched, and therefore not audited:

* **bfloat16**: the interpreter's bf16 arithmetic is wrong (bf16 values are
  held in float32 NumPy arrays and results are not rounded back to bf16, or
  are truncated instead of rounded, depending on the operation: see
  :func:`facts` for the measurement).  The audits run float32 and
  float16 only.

Not an interpreter matter but a fact of the audited code: Liger's cross
entropy writes the logits gradient into the logits buffer (also under the
interpreter, which copies the arguments back after the launch); the runners
pass a fresh copy of the caller's array.

:func:`enable` must run before ``triton`` (and anything that imports it) is
imported, since ``@triton.jit`` picks the interpreter at decoration time.
"""

from __future__ import annotations

import os
import sys

import numpy as np

__all__ = ["PATCHES", "UNPATCHED", "enable", "enabled", "versions", "facts"]

#: The interpreter patches of :func:`enable`: (what is patched, why), for the reports.
PATCHES = (
    ("Python-float kernel arguments become float32 scalars "
     "(triton.runtime.interpreter._implicit_cvt)",
     "compiled Triton specialises a Python float argument as fp32 and the kernel receives a "
     "float32 scalar; the bare interpreter passes the float through raw, so Liger's "
     "`softcap.to(tl.float32)` raises AttributeError and arithmetic with it runs in float64"),
    ("libdevice tanh / log1p are NumPy's while a kernel is interpreted "
     "(triton.runtime.interpreter._patch_lang)",
     "triton.language.extra.libdevice holds stubs that only the compiler maps to the "
     "backend's libdevice: under the interpreter tanh(x) returns None (soft-capping in Liger "
     "and cut-cross-entropy fails), and cut-cross-entropy's logaddexp needs log1p; NumPy's "
     "float32 tanh is within 1-2 ulp of CUDA's __nv_tanhf (max error 3e-8 against torch.tanh)"),
    ("tl.reduce with a kernel's own combine function runs as a pairwise tree of calls on "
     "whole slices (triton.runtime.interpreter.ReduceOps.generic_reduce)",
     "speed only: the interpreter folds element by element, one Python call per element "
     "(cut-cross-entropy's gradient filter: 16,384 calls per 128 x 128 block, most of the "
     "time of a backward); Triton requires an associative combine function and the compiled "
     "kernel reduces in a tree too, adjacent pairs keep the operands' order, and for "
     "cut-cross-entropy's a & b the result is identical"),
)
#: What is not patched, and therefore not audited or worked around in the runners.
UNPATCHED = (
    ("bfloat16", "the interpreter's bfloat16 arithmetic is wrong (on 4096 a*b+c triples "
     "99.5% differ from PyTorch's bfloat16 result and 0.5% are NaN; float16 is identical), "
     "so no bfloat16 case is audited under it"),
    ("Liger writes the logits gradient into the logits buffer", "a fact of the audited code, "
     "not of the interpreter: the runners hand Liger a fresh copy of the caller's array"),
)

_PATCHED = False

#: libdevice functions the two audited projects call, with their NumPy twins.
_LIBDEVICE = {"tanh": np.tanh, "log1p": np.log1p}


class InterpreterUnavailable(ImportError):
    """Triton is missing, or was imported before interpretation could be enabled."""


#: Modules whose @triton.jit functions must have been decorated in interpreter mode.
_AUDITED = ("liger_kernel", "cut_cross_entropy")


def _compiled_mode_triton() -> bool:
    """triton is imported and its own jit functions (``tl.max``...) are compiled-mode."""
    lang = sys.modules.get("triton.language.standard")
    if lang is None:
        return False
    from triton.runtime.interpreter import InterpretedFunction
    return not isinstance(getattr(lang, "max", None), InterpretedFunction)


def enable() -> str:
    """Turn on Triton's interpreter and apply the patches; returns triton's version.

    Idempotent.  ``@triton.jit`` picks the interpreter when a function is
    decorated, so triton's own library (``tl.max``, ``tl.sum``...) must be
    imported with ``TRITON_INTERPRET=1``.  When something imported triton
    before (PyTorch's chunked ``F.linear_cross_entropy`` does, to look for GPU
    kernels), its Python modules -- not the compiled extension
    ``triton._C`` -- are imported again in interpreter mode, provided no audited
    package was imported yet.  Raises :class:`InterpreterUnavailable` when
    triton is not installed or that is not possible.
    """
    global _PATCHED
    os.environ["TRITON_INTERPRET"] = "1"
    if _compiled_mode_triton():
        if any(m == p or m.startswith(p + ".") for m in sys.modules for p in _AUDITED):
            raise InterpreterUnavailable(
                "triton was imported without TRITON_INTERPRET=1 and the audited kernels are "
                "already compiled-mode JIT functions; call _triton_interp.enable() first")
        for name in [m for m in sys.modules
                     if (m == "triton" or m.startswith("triton.")) and not m.startswith("triton._C")]:
            del sys.modules[name]
    try:
        import triton
        from triton import knobs
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise InterpreterUnavailable(f"triton is not installed: {exc}") from exc
    if not knobs.runtime.interpret or _compiled_mode_triton():  # pragma: no cover
        raise InterpreterUnavailable("cannot switch triton to interpreter mode")
    if not _PATCHED:
        _patch_float_args()
        _patch_libdevice()
        _patch_generic_reduce()
        _PATCHED = True
    return triton.__version__


def enabled() -> bool:
    return _PATCHED


def versions() -> dict:
    """Versions of the packages the kernel audits depend on (None when missing)."""
    from importlib import metadata
    out = {}
    for name in ("torch", "triton", "liger-kernel", "cut-cross-entropy", "numpy", "ml_dtypes"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


# --------------------------------------------------------------------------- patch 1

def _patch_float_args() -> None:
    """Python ``float`` kernel arguments become float32 scalars (as compiled Triton's ``fp32``).

    Changes ``triton.runtime.interpreter._implicit_cvt``, which the
    interpreter's ``GridExecutor`` applies to every non-constexpr argument;
    constexpr arguments (Liger's ``label_smoothing``, ``lse_square_scale``)
    are left alone in both modes.
    """
    import triton.language as tl
    from triton.runtime import interpreter as I

    original = I._implicit_cvt

    def _implicit_cvt(arg):
        if isinstance(arg, float):  # bool is not a float; np.float64 is, and specialises as fp32 too
            handle = I.TensorHandle(np.array([arg], dtype=np.float32), tl.float32)
            return tl.tensor(handle, tl.float32)
        return original(arg)

    _implicit_cvt.__wrapped__ = original
    I._implicit_cvt = _implicit_cvt


# --------------------------------------------------------------------------- patch 2

def _numpy_libdevice(np_fn):
    import triton.language as tl
    from triton.runtime import interpreter as I

    def fn(arg0, _semantic=None):
        if not isinstance(arg0, tl.tensor):
            arg0 = tl.tensor(I.TensorHandle(np.array([arg0], dtype=np.float32), tl.float32), tl.float32)
        data = arg0.handle.data
        if arg0.handle.dtype.scalar == tl.bfloat16:
            raise NotImplementedError("bfloat16 is not supported by this interpreter patch")
        with np.errstate(over="ignore", invalid="ignore"):
            out = np_fn(data).astype(data.dtype, copy=False)
        return tl.tensor(I.TensorHandle(out, arg0.handle.dtype.scalar), arg0.type)

    fn.__name__ = np_fn.__name__
    fn.__doc__ = f"NumPy {np_fn.__name__} standing in for the libdevice stub under the interpreter."
    return fn


def _patch_libdevice() -> None:
    """While a kernel (or device function) is interpreted, libdevice stubs are NumPy functions.

    Wraps ``triton.runtime.interpreter._patch_lang`` (which the interpreter
    calls before running each kernel and each device function, and whose
    scope it restores after a kernel): in addition to remapping
    ``triton.language``, it now sets the libdevice module's ``tanh`` /
    ``log1p`` and any global of the function's module that *is* one of those
    stubs to the NumPy version.
    """
    from triton.language.extra import libdevice
    from triton.runtime import interpreter as I

    stubs = {name: getattr(libdevice, name) for name in _LIBDEVICE}
    impls = {name: _numpy_libdevice(f) for name, f in _LIBDEVICE.items()}
    by_stub = {id(stub): impls[name] for name, stub in stubs.items()}
    original = I._patch_lang

    def _patch_lang(fn):
        scope = original(fn)
        for name, impl in impls.items():
            scope.set_attr(libdevice, name, impl)
        g = fn.__globals__
        for key, val in list(g.items()):
            impl = by_stub.get(id(val))
            if impl is not None:
                g[key] = impl
                scope._changes.append((_DictSetter(g), key, val))
        return scope

    _patch_lang.__wrapped__ = original
    I._patch_lang = _patch_lang


class _DictSetter:
    """Lets the interpreter's patch scope restore a module-global name (it restores with setattr)."""

    def __init__(self, d):
        self.__dict__["_d"] = d

    def __setattr__(self, name, value):
        self._d[name] = value

    def __delattr__(self, name):
        self._d.pop(name, None)


# --------------------------------------------------------------------------- patch 3

def _patch_generic_reduce() -> None:
    """``tl.reduce`` with a user combine function: a pairwise tree on whole slices.

    Replaces ``ReduceOps.generic_reduce`` (the interpreter's fallback for a
    combine function that is not one of ``tl.standard``'s): the reduced axis
    is halved repeatedly by calling the combine function once on the even and
    the odd positions (adjacent pairs, an odd last element carried over), as
    block tensors; the output is packed as the original packs it.
    """
    from triton.runtime import interpreter as I

    original = I.ReduceOps.generic_reduce

    def generic_reduce(self, input):
        original_axis = self.axis
        input, axis = self.unravel(input, self.axis)
        dtypes = [arg.dtype for arg in input]
        cur = [np.moveaxis(arg.handle.data, axis, 0) for arg in input]
        input_shape = input[0].handle.data.shape
        while cur[0].shape[0] > 1:
            m = cur[0].shape[0]
            even = [self.to_tensor(c[0:m - 1:2], dt) for c, dt in zip(cur, dtypes)]
            odd = [self.to_tensor(c[1:m:2], dt) for c, dt in zip(cur, dtypes)]
            ret = self.combine_fn.fn(*even, *odd)
            ret = ret if isinstance(ret, tuple) else (ret,)
            nxt = []
            for j, (r, c) in enumerate(zip(ret, cur)):
                data = r.handle.data if isinstance(r, I.tl.core.tensor) else np.asarray(r)
                data = np.broadcast_to(data, c[0:m - 1:2].shape).astype(c.dtype, copy=False)
                if m % 2:
                    data = np.concatenate([data, c[m - 1:m]], axis=0)
                nxt.append(data)
            cur = nxt
        ret = []
        for i, c in enumerate(cur):
            data = c[0]
            if self.keep_dims:
                if original_axis is not None:
                    data = np.expand_dims(data, axis)
                else:
                    for _ in range(len(input_shape)):
                        data = np.expand_dims(data, 0)
            elif original_axis is None:
                data = data.item()
            ret.append(self.to_tensor(data, dtypes[i]))
        return ret

    generic_reduce.__wrapped__ = original
    I.ReduceOps.generic_reduce = generic_reduce


# --------------------------------------------------------------------------- the measured facts

def facts() -> dict:
    """Measure the interpreter facts above, in this process (patched or not, see :func:`enabled`).

    Run ``python -m ce_reference.frameworks._triton_interp [--raw]`` to see
    them with and without the patches (``--raw``: interpreter only).
    """
    import triton
    import triton.language as tl
    import torch
    global libdevice                 # the interpreted kernel below resolves it as a module global
    from triton.language.extra import libdevice

    out = {"patched": _PATCHED, "versions": versions()}

    @triton.jit
    def _float_arg(out_ptr, s):
        tl.store(out_ptr, s.to(tl.float32))

    @triton.jit
    def _float_mul(out_ptr, s):
        tl.store(out_ptr, s * 1.0)

    r = torch.zeros(1, dtype=torch.float64)
    try:
        _float_arg[(1,)](r, 0.1)
        out["float_arg .to()"] = f"ok, stored {float(r[0])!r}"
    except Exception as exc:
        out["float_arg .to()"] = f"{type(exc).__name__}: {exc}"
    _float_mul[(1,)](r, 0.1)
    out["float_arg * 1.0 stored in float64"] = float(r[0])
    out["float32(0.1)"] = float(np.float32(0.1))

    @triton.jit
    def _tanh(x_ptr, out_ptr, BLOCK: tl.constexpr):
        o = tl.arange(0, BLOCK)
        tl.store(out_ptr + o, libdevice.tanh(tl.load(x_ptr + o)))

    x = torch.tensor([-40.0, -1.0, 0.5, 3.0], dtype=torch.float32)
    y = torch.full_like(x, float("nan"))
    try:
        _tanh[(1,)](x, y, BLOCK=4)
        out["libdevice.tanh"] = f"max |err| vs torch.tanh {float((y - torch.tanh(x)).abs().max())!r}"
    except Exception as exc:
        out["libdevice.tanh"] = f"{type(exc).__name__}: {str(exc)[:200]}"

    @triton.jit
    def _fma(a_ptr, b_ptr, c_ptr, out_ptr, BLOCK: tl.constexpr):
        o = tl.arange(0, BLOCK)
        tl.store(out_ptr + o, tl.load(a_ptr + o) * tl.load(b_ptr + o) + tl.load(c_ptr + o))

    global _fact_and, _fact_max      # combine functions resolve as module globals

    @triton.jit
    def _fact_and(a, b):
        return a & b

    @triton.jit
    def _fact_max(a, b):
        return tl.maximum(a, b)

    @triton.jit
    def _reduce(x_ptr, all_ptr, max_ptr, BLOCK: tl.constexpr):
        r = tl.arange(0, BLOCK)[:, None]
        c = tl.arange(0, BLOCK)[None, :]
        v = tl.load(x_ptr + r * BLOCK + c)
        tl.store(all_ptr, tl.reduce(v < 0.999, None, _fact_and).to(tl.int32))
        tl.store(max_ptr + tl.arange(0, BLOCK), tl.reduce(v, 1, _fact_max))

    import time
    xr = torch.rand((64, 64), generator=torch.Generator().manual_seed(1))
    a_out, m_out = torch.zeros(1, dtype=torch.int32), torch.zeros(64)
    t0 = time.perf_counter()
    _reduce[(1,)](xr, a_out, m_out, BLOCK=64)
    out["tl.reduce with own combine fn (64 x 64)"] = {
        "and over the block == numpy": bool(a_out[0]) == bool((xr < 0.999).all()),
        "row max == numpy": bool(torch.equal(m_out, xr.max(dim=1).values)),
        "seconds": round(time.perf_counter() - t0, 3)}

    g = torch.Generator().manual_seed(0)
    for dt in (torch.bfloat16, torch.float16):
        a, b, c = (torch.randn(4096, generator=g).to(dt) for _ in range(3))
        o = torch.empty_like(a)
        _fma[(1,)](a, b, c, o, BLOCK=4096)
        expect = a * b + c          # PyTorch: each operation rounded to the dtype
        d = (o.float() - expect.float()).abs()
        i = int(torch.argmax(torch.where(d.isnan(), torch.inf, d)))
        out[f"{dt} a*b+c vs torch"] = {
            "differing_fraction": float((d > 0).float().mean()),
            "nan_fraction": float(o.float().isnan().float().mean()),
            "example (a, b, c, interpreter, torch)": [float(a[i]), float(b[i]), float(c[i]),
                                                      float(o[i]), float(expect[i])]}
    return out


if __name__ == "__main__":  # pragma: no cover
    import json
    if "--raw" in sys.argv:
        os.environ["TRITON_INTERPRET"] = "1"
    else:
        enable()
    print(json.dumps(facts(), indent=1, default=str))
