"""A Linux executor for a SAVED Core ML package: validation without a Mac.

    .mlpackage on disk --MLModel(skip_model_load)--> spec + weights dir
                      --milproto.load.load--> MIL Program (coremltools' own reader; weights from weight.bin)
                      --op by op, in program order--> logits, updated states

Each op runs through coremltools' own numpy semantics, the ``value_inference`` its op class defines
(what coremltools uses for constant folding). Written here by hand, because coremltools has no
``value_inference`` for them:

* ``read_state``            returns a copy of the state's current value (fp16);
* ``coreml_update_state``   (on disk: ``write_state`` + ``read_state``; the reader merges them back)
                            stores its value as the state's new value and returns it;
* ``silu``                  ``x * sigmoid(x)``.

Any other op without a ``value_inference`` is reported by name (``ExecutorError``), never skipped.

Dtype discipline: every op's result is rounded to the dtype the program declares for its output, so an
op the program runs in fp16 produces fp16 values (numpy computes fp16 elementwise ops in fp16 and
accumulates fp16 matmuls/reductions in fp32, as Core ML's GPU/ANE kernels do); states are fp16 buffers.
Where coremltools' numpy code computes wider (``layer_norm``, ``gelu`` go through float64) the value is
rounded at the op boundary.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np

from ._ct import ct as _ct
from ..errors import ArtifactError, XlstmExportError, first_line


class ExecutorError(XlstmExportError):
    """The saved program cannot be executed op by op (an op type without numpy semantics, a shape or
    dtype that differs from what the program declares)."""

    exit_code = 1


class _Val:
    """Stands in for a builtin value on a Var (``Var.val`` reads ``_sym_val.val``)."""

    __slots__ = ("val",)

    def __init__(self, val):
        self.val = val


def _np_dtype(var) -> Optional[np.dtype]:
    from coremltools.converters.mil.mil import types

    if types.is_tensor(var.sym_type) or types.is_scalar(var.sym_type) or types.is_state(var.sym_type):
        return np.dtype(types.nptype_from_builtin(var.dtype))
    return None


MAX_PACKAGE_ENTRIES = 10_000  # ours hold 5 (manifest, 2 folders, spec, weights); a package is a small tree


def check_package_tree(path: str | os.PathLike) -> None:
    """Every entry of the package is a plain directory or a regular file: a FIFO (``weight.bin``) would
    block the reader, a device never end, and a symbolic link would have it read outside the package."""
    import stat

    path = Path(path)
    try:
        st = os.lstat(path)
    except OSError as e:
        raise ArtifactError(f"{path}: cannot be read ({e.strerror or e})") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ArtifactError(f"{path}: a Core ML package is a directory; this is "
                            + ("a symbolic link" if stat.S_ISLNK(st.st_mode) else "not one"))
    def unreadable(e: OSError) -> None:
        raise ArtifactError(f"{e.filename or path}: cannot be read ({e.strerror or e})")

    seen = 0
    for root, dirs, files in os.walk(path, onerror=unreadable):
        for name in dirs + files:
            seen += 1
            if seen > MAX_PACKAGE_ENTRIES:
                raise ArtifactError(f"{path}: more than {MAX_PACKAGE_ENTRIES} entries; not a package xlstm-export "
                                    f"writes")
            p = Path(root) / name
            try:
                mode = os.lstat(p).st_mode
            except OSError as e:
                unreadable(e)
            if stat.S_ISLNK(mode):
                raise ArtifactError(f"{p}: a symbolic link inside the package (it could point outside it)")
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                raise ArtifactError(f"{p}: not a regular file (a FIFO, socket or device) inside the package")


def open_package(path: str | os.PathLike):
    """``MLModel(path, skip_model_load=True)`` (no Core ML framework needed); one line if unreadable."""
    ct = _ct()
    check_package_tree(path)
    try:
        return ct.models.MLModel(str(path), skip_model_load=True)
    except Exception as e:  # coremltools raises bare Exceptions for unreadable packages
        first = first_line(e)
        raise ArtifactError(f"{path}: not a readable Core ML package ({first})") from None


def load_program(path: str | os.PathLike):
    """The MIL program of the package at ``path``, read back from disk with coremltools' reader."""
    from coremltools.converters.mil.frontend.milproto.load import load

    path = Path(path)
    model = open_package(path)
    spec = model.get_spec()
    if spec.WhichOneof("Type") != "mlProgram":
        raise ArtifactError(f"{path}: not an ML Program package (model type {spec.WhichOneof('Type')!r})")
    try:
        prog = load(spec, spec.specificationVersion, file_weights_dir=model.weights_dir)
    except Exception as e:  # coremltools' reader raises what it meets (a corrupt weight.bin, an unknown op...)
        raise ArtifactError(f"{path}: coremltools cannot read its program ({first_line(e)})") from None
    if "main" not in prog.functions:
        raise ArtifactError(f"{path}: the program has no 'main' function (has {sorted(prog.functions)})")
    return prog, spec


class ProgramExecutor:
    """Runs the functions of a saved package's program (``main``, and ``prefill`` when the package has
    one); owns the state buffers, which every function reads and updates (as an ``MLState`` shared by
    the functions of one model)."""

    def __init__(self, path: str | os.PathLike):
        from coremltools.converters.mil.mil import types

        self.path = Path(path)
        self.prog, self.spec = load_program(self.path)
        self.functions: Dict[str, tuple] = {}
        for fname, func in self.prog.functions.items():
            ops = list(func.operations)
            inputs = {n: v for n, v in func.inputs.items() if not types.is_state(v.sym_type)}
            states = {n: v for n, v in func.inputs.items() if types.is_state(v.sym_type)}
            self.functions[fname] = (ops, inputs, states, list(func.outputs))
            for op in ops:
                if op.op_type == "const":
                    _python_bool(op.outputs[0])
                if op.blocks:
                    raise ExecutorError(f"{self.path}: op {op.name} ({op.op_type}) has nested blocks; control "
                                        f"flow is not supported by this executor")
                if op.op_type != "const" and op.op_type not in HANDWRITTEN and not _has_value_inference(op):
                    raise ExecutorError(f"{self.path}: op {op.name}: type {op.op_type!r} has no numpy semantics "
                                        f"in coremltools (no value_inference) and none is written here; add one "
                                        f"to xlstm_export/coreml/executor.py HANDWRITTEN")
        self.ops, self.input_vars, self.state_vars, self.output_vars = self.functions["main"]
        for fname, (_, _, states, _) in self.functions.items():
            shapes = {n: (tuple(v.shape), v.dtype) for n, v in states.items()}
            if shapes != {n: (tuple(v.shape), v.dtype) for n, v in self.state_vars.items()}:
                raise ArtifactError(f"{self.path}: function {fname!r} declares other states than 'main'")
        self.states: Dict[str, np.ndarray] = {}
        self.decompressed: Dict[str, np.ndarray] = {}  # compression op name -> its dense weight
        self.reset_states()

    # -- states ------------------------------------------------------------------------------
    def state_spec(self, name: str):
        if name not in self.state_vars:
            raise ExecutorError(f"{self.path}: the program has no state {name!r} (states: {sorted(self.state_vars)})")
        v = self.state_vars[name]
        return tuple(int(d) for d in v.shape), _np_dtype(v)

    def get_state(self, name: str) -> np.ndarray:
        """The current value of state ``name`` (as stored: fp16)."""
        self.state_spec(name)  # names the program's states if it has no such one
        return self.states[name]

    def reset_states(self) -> None:
        """All zeros: what ``makeState()`` gives on a device (the empty context)."""
        self.states = {n: np.zeros(*self.state_spec(n)) for n in self.state_vars}

    def set_state(self, name: str, value: np.ndarray) -> None:
        shape, dtype = self.state_spec(name)
        value = np.asarray(value)
        if tuple(value.shape) != shape:
            raise ExecutorError(f"{self.path}: state {name}: expected shape {shape}, got {tuple(value.shape)}")
        self.states[name] = value.astype(dtype)

    # -- running -----------------------------------------------------------------------------
    def predict(self, feeds: Dict[str, np.ndarray], function: str = "main") -> Dict[str, np.ndarray]:
        """One call of a function of the program: ``feeds`` are its tensor inputs; states are read and
        updated in place."""
        if function not in self.functions:
            raise ExecutorError(f"{self.path}: the program has no function {function!r} (has {sorted(self.functions)})")
        ops, input_vars, _, output_vars = self.functions[function]
        env: Dict[int, object] = {}
        for name, var in input_vars.items():
            if name not in feeds:
                raise ExecutorError(f"{self.path}: input {name!r} is missing")
            env[id(var)] = self._coerce(np.asarray(feeds[name]), var, f"input {name}")
        with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
            for op in ops:
                if op.op_type == "const":
                    continue  # consts carry their value (read from weight.bin by the loader)
                fn = HANDWRITTEN.get(op.op_type)
                vals = fn(self, op, env) if fn is not None else self._value_inference(op, env)
                if not isinstance(vals, (tuple, list)):
                    vals = (vals,)
                for out, v in zip(op.outputs, vals):
                    env[id(out)] = self._coerce(v, out, f"op {op.name} ({op.op_type})")
        return {v.name: np.asarray(self._get(env, v)) for v in output_vars}

    def _get(self, env: Dict[int, object], var):
        if id(var) in env:
            return env[id(var)]
        if var.val is not None:
            return var.val
        raise ExecutorError(f"{self.path}: value of {var.name} is not computed before its use")

    def _value_inference(self, op, env):
        """Run coremltools' numpy semantics of ``op`` with our values bound to its input vars."""
        bound = []
        try:
            for v in op.get_flattened_inputs():
                if v.op is not None and v.op.op_type == "const":
                    continue
                val = self._get(env, v)
                if isinstance(val, np.ndarray) and val.ndim == 0 and val.dtype == np.bool_:
                    val = bool(val)  # numpy 2 0-d bools trip coremltools' scalar checks
                bound.append((v, v._sym_val))
                v._sym_val = _Val(val)
            try:
                out = op.value_inference()
            except Exception as e:  # coremltools' numpy code on values the program does not declare
                raise ExecutorError(f"{self.path}: op {op.name} ({op.op_type}): coremltools' numpy semantics "
                                    f"failed ({type(e).__name__}: {first_line(e)})") from None
        finally:
            for v, old in bound:
                v._sym_val = old
        if out is None or (isinstance(out, (tuple, list)) and any(o is None for o in out)):
            raise ExecutorError(f"{self.path}: op {op.name} ({op.op_type}): value_inference gave no value")
        return out

    def _coerce(self, value, var, where: str) -> np.ndarray:
        dtype = _np_dtype(var)
        arr = np.asarray(value)
        if dtype is not None and arr.dtype != dtype:
            arr = arr.astype(dtype)
        want = tuple(int(d) for d in var.shape)
        if tuple(arr.shape) != want:
            raise ExecutorError(f"{self.path}: {where}: shape {tuple(arr.shape)}, the program declares {want}")
        return arr


def _has_value_inference(op) -> bool:
    from coremltools.converters.mil.mil.operation import Operation

    return type(op).value_inference is not Operation.value_inference


def _python_bool(var) -> None:
    """A 0-d numpy bool const (``keep_dims``...) as a Python bool: numpy 2 rejects np.bool where
    coremltools' numpy code passes it as an int-like flag."""
    val = var.val
    if isinstance(val, (np.bool_, np.ndarray)) and np.ndim(val) == 0 and np.asarray(val).dtype == np.bool_:
        var._sym_val = _Val(bool(val))


def _read_state(ex: ProgramExecutor, op, env):
    return ex.states[op.input.name].copy()


def _update_state(ex: ProgramExecutor, op, env):
    name = op.state.name
    shape, dtype = ex.state_spec(name)
    value = np.asarray(ex._get(env, op.value))
    if value.dtype != dtype or tuple(value.shape) != shape:
        raise ExecutorError(f"{ex.path}: op {op.name}: writes {value.dtype} {tuple(value.shape)} into state "
                            f"{name} declared {dtype} {shape}")
    ex.states[name] = value.copy()
    return value


def _decompress(ex: ProgramExecutor, op, env):
    """A compression op (``constexpr_*``: codes + scales, or indices + palette, all consts): coremltools'
    own decompression (``materialized_val_inference``), computed once per op and kept (the dense weight,
    as the runtime holds it after loading)."""
    val = ex.decompressed.get(op.name)
    if val is None:
        try:
            val = ex.decompressed[op.name] = np.asarray(op.materialized_val_inference())
        except Exception as e:  # noqa: BLE001 - coremltools' numpy code on the package's data
            raise ExecutorError(f"{ex.path}: op {op.name} ({op.op_type}): coremltools' decompression failed "
                                f"({type(e).__name__}: {first_line(e)})") from None
    return val


def _silu(ex: ProgramExecutor, op, env):
    x = np.asarray(ex._get(env, op.x))
    return x * (1 / (1 + np.exp(-x)))


HANDWRITTEN: Dict[str, Callable] = {
    "read_state": _read_state,
    "coreml_update_state": _update_state,
    "silu": _silu,
    "constexpr_blockwise_shift_scale": _decompress,
    "constexpr_lut_to_dense": _decompress,
}


__all__ = ["ExecutorError", "HANDWRITTEN", "ProgramExecutor", "load_program"]
