"""Is a TorchScript archive what xlstm-export writes? Checked before ``torch.jit.load``, which runs the
archive's code (its ``__setstate__`` and every method validation calls: ``init_states`` can read and
write any file, e.g. through ``torch.from_file``).

The check needs no trust in the archive. Its records are read with torch's own zip reader (the one
``torch.jit.load`` uses, so both see the same records), nothing is unpickled or compiled:

1. its ``xlstm_export.io`` contract must be the checkpoint's (``check_contract``: same profile) and
   declare a precision this target writes;
2. the archive xlstm-export writes for that contract (profile, precision, batch size) is made in this
   process: the reference model scripted in isolation, saved to memory, canonicalised as the emitter does
   (``emit.canonical_records``). Exports are byte-reproducible, so it is what any export of this
   xlstm-export and torch wrote for that contract;
3. both archives must hold the same records, every record byte-identical (code, ``data.pkl`` with its
   tensor dtypes and shapes, constants, the contract itself) except the tensor storages ``data/N``,
   which must have the same sizes: their values are the weights, which validation measures.

So the declared precision and shapes are those of the archive's actual tensors (``data.pkl``). An
archive that fails is refused (ArtifactError, exit 2) naming the first record that differs, unless the
caller passes ``trust_artifact=True`` (``validate --trust-artifact``). The digests of what this process
wrote or built are kept per contract (``emit.remembered_records``), so validating right after an export
costs no second scripting.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Dict, Optional

from .. import __version__
from ..contract import check_contract, contract_batch_size, declared_precision, parse_contract
from ..errors import ArtifactError, first_line
from ..graphs import Graph
from ..graphs.io import IO_KEY, dumps
from ..runner import ABSENT, Holding, first_difference as _first_difference
from .emit import (DATA_RECORD, WRITER_RECORDS, Digest, TorchScriptOptions, canonical_records, contract_for,
                   record_digest, remember_records, remembered_records, script_model)
from .names import CONTRACT_RECORD, PRECISIONS, TARGET
from .runner import TorchScriptRunner

MAX_CONTRACT_BYTES = 16 << 20  # a contract is a few KB per block; more is not one
HOW = ("loading a TorchScript archive runs its code, so validation loads only archives it can check; "
       "re-export it with this xlstm-export, or pass --trust-artifact if you trust where it came from")


def open_reader(path: Path):
    """torch's zip reader over the archive (ArtifactError if it is not one)."""
    import torch

    try:
        return torch._C.PyTorchFileReader(str(path))
    except (RuntimeError, ValueError, OSError) as e:
        raise ArtifactError(f"{path}: not a loadable TorchScript archive ({first_line(e)})") from None


def read_contract(path: Path, reader=None) -> dict:
    """The archive's I/O contract, read without loading (running) the archive."""
    reader = reader or open_reader(path)
    text = None
    try:
        if reader.has_record(CONTRACT_RECORD):
            size = reader.get_record_size(CONTRACT_RECORD)
            if size > MAX_CONTRACT_BYTES:
                raise ArtifactError(f"{path}: its {IO_KEY!r} contract has {size} bytes, more than a contract "
                                    f"holds ({MAX_CONTRACT_BYTES}); it was not written by xlstm-export")
            text = reader.get_record(CONTRACT_RECORD)
    except RuntimeError as e:
        raise ArtifactError(f"{path}: not a loadable TorchScript archive ({first_line(e)})") from None
    return parse_contract(text, str(path))


def expected_records(graph: Graph, contract: dict, where: str = "the contract") -> Dict[str, Digest]:
    """Digests of the records of the archive xlstm-export writes for ``contract`` (from ``graph``, whose
    profile the contract holds): remembered from an export in this process, else scripted now."""
    import torch

    known = remembered_records(contract)
    if known is not None:
        return known
    options = TorchScriptOptions(precision=contract["precision"], batch_size=contract_batch_size(contract, where))
    ours = contract_for(graph, options)
    ours.pop("text", None)  # the text entry is the artifact's own (not judged: see check_contract_is)
    if "text" in contract:
        ours["text"] = contract["text"]
    scripted = script_model(graph, options.precision)
    raw = scripted.save_to_buffer(_extra_files={IO_KEY: dumps(ours)})
    del scripted
    reader = torch._C.PyTorchFileReader(io.BytesIO(raw))
    records = {name: record_digest(name, rec) for name, rec in canonical_records(reader)}
    for name in WRITER_RECORDS:  # as the writer writes them into every archive
        records[name] = record_digest(name, reader.get_record(name))
    del reader, raw
    remember_records(ours, records)
    return records


def first_difference(reader, names: list, expected: Dict[str, Digest]) -> Optional[str]:
    """What first tells the archive apart from ``expected`` (None if nothing does): the records it holds,
    then their sizes, then their bytes (``runner.Holding``). Sizes are compared before any record is read,
    so a huge planted record is never loaded."""
    if len(names) != len(set(names)):
        dup = sorted({n for n in names if names.count(n) > 1})
        return f"it holds record {dup[0]!r} more than once"
    ordered = lambda ns: sorted(ns, key=lambda n: (bool(DATA_RECORD.match(n)), n))  # code and pickles first

    def holdings():
        yield Holding(dict.fromkeys(names, True), dict.fromkeys(expected, True), lambda n, x, y, others: (
            f"it holds record {n!r}, which xlstm-export does not write" if y is ABSENT else
            f"it lacks record {n!r}"), first=("extra", "missing"))
        yield Holding({n: reader.get_record_size(n) for n in names}, {n: size for n, (size, _) in expected.items()},
                      lambda n, x, y, others: f"record {n!r} has {x} bytes, xlstm-export writes {y}", order=ordered)
        want = {n: digest for n, (_, digest) in expected.items() if digest is not None}
        yield Holding({n: record_digest(n, reader.get_record(n))[1] for n in ordered(want)}, want,
                      lambda n, x, y, others: f"record {n!r} differs from what xlstm-export writes", order=ordered)

    return _first_difference(holdings())


def check_archive(path: Path, graph: Graph) -> dict:
    """Raise ArtifactError unless the archive at ``path`` is, but for its weight values, the archive
    xlstm-export writes for its contract from ``graph``; returns the contract."""
    import torch

    where = str(path)
    reader = open_reader(path)
    contract = read_contract(path, reader)
    check_contract(contract, graph, where)  # "exported from a different model" comes first
    declared_precision(contract, where, TARGET, PRECISIONS)  # target and precision pick the tolerance
    try:
        names = list(reader.get_all_records())
        why = first_difference(reader, names, expected_records(graph, contract, where))
    except RuntimeError as e:  # torch's reader on a damaged record
        raise ArtifactError(f"{where}: not a loadable TorchScript archive ({first_line(e)})") from None
    if why is not None:
        raise ArtifactError(f"{where}: refused: not the archive xlstm-export {__version__} (torch "
                            f"{torch.__version__}) writes for its contract ({contract.get('precision')}, batch "
                            f"{contract_batch_size(contract, where)}): {why}; {HOW}")
    return contract


def open_runner(path: str | Path, graph: Graph, trust_artifact: bool = False, batch_size: Optional[int] = None,
                device: str = "cpu") -> TorchScriptRunner:
    """The registry's factory for TorchScript archives: unless ``trust_artifact``, the archive is checked
    (:func:`check_archive`) before ``torch.jit.load`` runs any of its code; then the runner checks its
    contract against ``graph``'s."""
    from ..reference import resolve_device

    device = resolve_device(device)  # UnsupportedError for a device torch lacks, before reading anything
    if not trust_artifact:
        check_archive(Path(path), graph)
    runner = TorchScriptRunner(path, graph, batch_size, device, checked=True)
    runner.trusted = bool(trust_artifact)
    return runner


__all__ = ["check_archive", "expected_records", "first_difference", "open_runner", "read_contract", "CONTRACT_RECORD"]
