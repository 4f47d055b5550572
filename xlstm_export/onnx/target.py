"""The ONNX target's declaration: options, artifact kinds (step graph, Scan graph, step + prefill graph) and
their tolerances, the files an export writes (``model.onnx``, ``model.onnx.data``, ``model.prefill.onnx``)
and how to recognise them. Imports no heavy library; the emitter and runner load when used."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..outputs import head
from ..target import BATCH, DEMO_PREFILL_CHUNK, Option, Target, kind, prefill_options, quant_options
from ..tolerances import FP16, FP32

NAME = "onnx"
SUFFIX = ".onnx"
DATA_SUFFIX = ".data"  # model.onnx -> model.onnx.data (external initializers)
PREFILL_STEM = ".prefill"  # model.onnx -> model.prefill.onnx
PRODUCER = b"xlstm-export"  # ModelProto.producer_name of what we write
QUANT_SCHEMES = ("int8", "int4")


def prefill_path_for(out_path: Path) -> Path:
    """``model.onnx`` -> ``model.prefill.onnx``."""
    return out_path.with_name(out_path.stem + PREFILL_STEM + SUFFIX)


def step_path_for(path: Path) -> Path:
    """The step graph of a prefill graph's path (``model.prefill.onnx`` -> ``model.onnx``); else ``path``."""
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    return path.with_name(stem[: -len(PREFILL_STEM)] + path.suffix) if stem.endswith(PREFILL_STEM) else path


def producer_name(head_bytes: bytes) -> Optional[bytes]:
    """ModelProto.producer_name (field 2) from the first bytes of a serialised model (fields come in number
    order: ir_version, producer_name, ...); read by hand so that recognising a file parses no more of it."""
    i = 0

    def varint() -> int:
        nonlocal i
        v = shift = 0
        while True:
            b = head_bytes[i]
            i += 1
            v |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return v

    try:
        while i < len(head_bytes):
            key = varint()
            num, wire = key >> 3, key & 7
            if wire == 0:
                varint()
            elif wire == 2:
                n = varint()
                if num == 2:
                    return head_bytes[i:i + n]
                i += n
            else:
                return None
            if num > 2:
                return None
    except IndexError:
        return None
    return None


class OnnxTarget(Target):
    def claims_output(self, path: Path) -> bool:
        return self.claims(path) or path.name.endswith(SUFFIX + DATA_SUFFIX)

    def recognise(self, path: Path, is_dir: bool) -> Optional[str]:
        if is_dir:
            return "a directory"
        if path.name.endswith(SUFFIX + DATA_SUFFIX):
            from ..outputs import foreign_reason

            model = path.with_name(path.name[: -len(DATA_SUFFIX)])
            if foreign_reason(model, self.recognise) is None:
                return None
            return f"external data whose model {model.name} is missing or not written by xlstm-export"
        return None if producer_name(head(path, 4096)) == PRODUCER else "not an ONNX model written by xlstm-export"

    def files_of(self, path: Path) -> List[Path]:
        """The graph, its step or prefill companion, and their external data files."""
        step = step_path_for(Path(path))
        files = [Path(path)]
        for g in (step, prefill_path_for(step)):
            files += [q for q in (g, g.with_name(g.name + DATA_SUFFIX)) if q not in files]
        return files

    def text_paths(self, artifact: Path, names: Sequence[str]) -> Dict[str, Path]:
        return super().text_paths(step_path_for(Path(artifact)), names)  # a prefill graph shares its step graph's

    def planned_files(self, out: Path, options) -> Tuple[Path, ...]:
        return (out,) if options.prefill_chunk is None else (out, prefill_path_for(out))


TARGET = OnnxTarget(
    NAME, "Export an ONNX graph for ONNX Runtime: the decode step (Core ML EP: one partition) or --scan.",
    (SUFFIX,),
    (Option("--scan", "scan", "The Scan sequence graph (input_ids (B, T), T dynamic) instead of the one-token decode "
            "step.", False, is_flag=True),
     BATCH,
     Option("--precision", "precision", "Weights and activations; norms, recurrent cells and states stay fp32.", "fp32",
            choices=("fp32", "fp16")),
     Option("--opset", "opset", "ONNX opset (17..26; GELU FFNs need 20; ORT 1.31 loads <= 26).", 20, min=17, max=26),
     *prefill_options("write <stem>.prefill.onnx, a static graph (weights in one data file with the step's)"),
     *quant_options(QUANT_SCHEMES, "int8/int4 per block"),
     Option("--quantize-format", "quantize_format", "matmulnbits: com.microsoft MatMulNBits (ORT CPU and mobile, "
            "fast int4); qdq: blocked DequantizeLinear -> MatMul (opset 21). ORT's Core ML EP takes neither "
            "(docs/COMPRESSION.md): on Apple devices use the coreml target.", "matmulnbits",
            choices=("matmulnbits", "qdq"))),
    (kind(NAME, NAME, {"fp32": FP32, "fp16": FP16}, ("step",), "fp32", "model.onnx", scan=False),
     kind(f"{NAME}-scan", NAME, {"fp32": FP32, "fp16": FP16}, ("step",), "fp32", "model.onnx", scan=True),
     kind(f"{NAME}-prefill", NAME, {"fp32": FP32, "fp16": FP16}, ("step", "prefill"), "fp32", "model.onnx",
          prefill_chunk=DEMO_PREFILL_CHUNK)),
    "xlstm_export.onnx.emit:OnnxOptions", builder="xlstm_export.onnx.emit:build_artifact",
    runner="xlstm_export.onnx.verify:open_runner", contract_reader="xlstm_export.onnx.runner:contract_of",
    requires=("onnx", "onnxruntime"), extra="onnx", quant_schemes=QUANT_SCHEMES,
    policies="xlstm_export.onnx.policy:POLICIES")
