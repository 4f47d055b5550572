"""Is a ``.pte`` what xlstm-export writes for what its contract declares? (``open_runner``: the registry's
factory, which opens a runner and checks it unless the caller trusts the artifact.)

The options the contract declares (backend, batch size, prefill chunk, quantization) are read back and the
contract xlstm-export writes for them is compared with the program's by the runner's skeleton
(``runner.verify_written``). The program's tensors sit inside the backend's payload (XNNPACK, Core ML)
and are not compared; a ``.pte`` holds operators, not Python, so running it runs no code of the file's own.
"""

from __future__ import annotations

from pathlib import Path

from ..contract import declared_precision
from ..errors import ArtifactError, UnsupportedError, first_line
from ..graphs import Graph
from ..runner import open_verified, verify_written
from .names import BACKENDS, PRECISION, TARGET
from .runner import ExecuTorchRunner


def verify(runner: ExecuTorchRunner, graph: Graph) -> None:
    """Raise ArtifactError unless the program's contract is what xlstm-export writes for the options it
    declares (backend, batch size, prefill chunk, quantization): the declared precision, which picks the
    tolerance, must be the backend's or, on XNNPACK, a quantization scheme whose declaration (group size,
    kept patterns, quantized weight names) is what those options give for this checkpoint."""
    from .emit import ExecuTorchOptions, contract_for
    from .quantize import DEFAULT_KEEP, SCHEMES

    c, where = runner.contract, str(runner.path)
    backend = c.get("backend")
    if backend not in BACKENDS:
        raise ArtifactError(f"{where}: its contract declares backend {str(backend)[:40]!r}; xlstm-export writes "
                            f"{', '.join(BACKENDS)}")
    offered = (PRECISION[backend],) + (tuple(s for s in SCHEMES if s != "none") if backend == "xnnpack" else ())
    precision = declared_precision(c, where, TARGET, offered)
    quant = {}
    if precision != PRECISION[backend]:
        q = c.get("quantization")
        if not isinstance(q, dict) or not isinstance(q.get("keep"), list) or not all(isinstance(p, str) for p in q["keep"]):
            raise ArtifactError(f"{where}: its contract declares precision {precision} without the quantization "
                                f"record xlstm-export writes with it (re-export it)")
        keep = None if q["keep"] == list(DEFAULT_KEEP) else (",".join(q["keep"]) or "none")
        quant = {"quantize": precision, "group_size": q.get("group_size"), "keep": keep}
    plan = runner.prefill
    options = ExecuTorchOptions(backend=backend, batch_size=runner.batch_size,
                                prefill_chunk=plan.chunk if plan else None, **quant)
    try:
        expected = contract_for(graph, options)
    except UnsupportedError as e:  # a declared group size / keep list xlstm-export would refuse
        raise ArtifactError(f"{where}: its contract declares quantization options xlstm-export refuses for this "
                            f"checkpoint ({first_line(e)[:200]})") from None
    what = (f"its declaration ({backend}, batch {runner.batch_size}" + (f", prefill chunk {plan.chunk}" if plan else "")
            + (f", {precision}" if quant else "") + ")")
    verify_written(where, what, runner.noun, c, expected)


def open_runner(path: str | Path, graph: Graph, trust_artifact: bool = False, **opts) -> ExecuTorchRunner:
    """The registry's factory for ``.pte`` artifacts: checked against ``graph``'s contract and, unless
    ``trust_artifact``, against what xlstm-export writes for what the contract declares (:func:`verify`)."""
    return open_verified(ExecuTorchRunner, verify, path, graph, trust_artifact, **opts)


__all__ = ["open_runner", "verify"]
