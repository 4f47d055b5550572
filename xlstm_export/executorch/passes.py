"""Edge-dialect rewrites that keep the step in fewer, larger XNNPACK partitions.

The reference's step, exported as is, leaves view-like ops and norm means to ExecuTorch's portable kernels:
XNNPACK takes ``view_copy`` but not ``select_copy`` / ``squeeze_copy`` / ``unsqueeze_copy`` (but on the
trailing dim) / a broadcasting ``expand_copy``, and ``mean.dim`` only over the two inner dims of a 4-D
tensor. Every such op between two delegated ops splits the graph: the 2-block ``hf`` fixture's step was 18
XNNPACK partitions around 34 portable ops, and lowering spends ~0.8 s per partition. This pass rewrites,
same values, same order of operations per element:

* ``select_copy(x, d, 0)`` on a size-1 dim, ``squeeze_copy``, ``unsqueeze_copy``, and an ``expand_copy``
  that adds no elements -> ``view_copy`` to the output shape; ``select_copy(x, d, i)`` on a longer dim ->
  ``slice_copy(x, d, i, i + 1)`` + ``view_copy`` (the sLSTM's gate rows and state rows);
* ``mean.dim(x, [-1], keepdim=True)`` -> ``view_copy`` to ``(N, 1, D, 1)``, ``mean.dim([2, 3], keepdim)``
  (XNNPACK's global average pooling), ``view_copy`` back.
"""

from __future__ import annotations

import math


def xnnpack_friendly_pass():
    """A fresh ``ExportPass`` instance (imported lazily: executorch is an optional extra)."""
    from executorch.exir.dialects._ops import ops as exir_ops
    from executorch.exir.pass_base import ExportPass

    A = exir_ops.edge.aten

    class XnnpackFriendly(ExportPass):
        def _view(self, x, shape, meta):
            return super().call_operator(A.view_copy.default, (x, list(shape)), {}, meta)

        def call_operator(self, op, args, kwargs, meta):
            val = meta.data.get("val") if hasattr(meta, "data") else None
            if val is None or not hasattr(val, "shape"):
                return super().call_operator(op, args, kwargs, meta)
            out_shape = tuple(val.shape)
            if op == A.select_copy.int:
                x, dim, index = args[0], args[1], args[2]
                shape = tuple(x.to_tensor().shape)
                if shape[dim] == 1:
                    return self._view(x, out_shape, meta)
                if isinstance(index, int):  # slice_copy (which XNNPACK takes) of one row, then drop the dim
                    i = index % shape[dim]
                    row = super().call_operator(A.slice_copy.Tensor, (x, dim, i, i + 1, 1), {}, meta)
                    return self._view(row, out_shape, meta)
            elif op in (A.squeeze_copy.dims, A.squeeze_copy.dim, A.squeeze_copy.default, A.unsqueeze_copy.default):
                return self._view(args[0], out_shape, meta)
            elif op == A.expand_copy.default:
                if math.prod(args[0].to_tensor().shape) == math.prod(out_shape):
                    return self._view(args[0], out_shape, meta)
            elif op == A.mean.dim and not kwargs.get("dtype"):
                x, dims = args[0], args[1]
                keep = len(args) > 2 and bool(args[2])
                shape = tuple(x.to_tensor().shape)
                if keep and len(shape) >= 1 and list(dims) in ([-1], [len(shape) - 1]):
                    d = shape[-1]
                    n = math.prod(shape[:-1])
                    x4 = self._view(x, (n, 1, d, 1), meta)
                    m4 = super().call_operator(A.mean.dim, (x4, [2, 3], True), {}, meta)
                    return self._view(m4, out_shape, meta)
            return super().call_operator(op, args, kwargs, meta)

    return XnnpackFriendly()


def delegation(data: bytes, method: str = "forward") -> dict:
    """How a program's ``method`` runs: XNNPACK delegate calls per call of it, and the operators it runs
    outside them (ExecuTorch's portable kernels) with their counts, read from the program's bytes."""
    import collections

    from executorch.exir._serialize import _deserialize_pte_binary

    prog = _deserialize_pte_binary(data)
    prog = getattr(prog, "program", prog)
    plan = next(p for p in prog.execution_plan if p.name == method)
    names = [op.name + (f".{op.overload}" if op.overload else "") for op in plan.operators]
    counts: collections.Counter = collections.Counter()
    calls = 0
    for chain in plan.chains:
        for ins in chain.instructions:
            kind = type(ins.instr_args).__name__
            if kind == "DelegateCall":
                calls += 1
            elif kind == "KernelCall":
                counts[names[ins.instr_args.op_index]] += 1
    return {"delegate_calls": calls, "portable_ops": dict(counts.most_common())}


__all__ = ["xnnpack_friendly_pass", "delegation"]
