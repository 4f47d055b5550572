"""Shared pieces of the benchmarks: timing, the machine, measured subprocesses, benchmark checkpoints.

Timing: ``warmup`` untimed calls, then ``repeats`` calls timed one by one (``time.perf_counter``);
figures are the median and the 90th percentile in milliseconds.

Memory: an export runs in its own process (:func:`run_measured`). Its peak RSS is the kernel's high-water
mark of that process (``VmHWM``, which the process prints when it finishes; everything it touched,
memory-mapped checkpoint pages included). ``ru_maxrss`` is not used: Linux carries it over from the
forking parent, so a child of a process holding torch never reports less than that parent. A sampler
thread records the peak RSS and the peak *anonymous* RSS (``RssAnon``: what cannot be paged back to a
file) every 0.2 s, and stops the process before the machine runs out of memory.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
PY = sys.executable
GiB = 1 << 30


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- timing -----------------------------------------------------------------------------------------
def percentile(xs: List[float], q: float) -> float:
    s = sorted(xs)
    k = (len(s) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def time_calls(fn: Callable[[], object], warmup: int, repeats: int, max_seconds: Optional[float] = None
               ) -> Dict[str, float]:
    """Median / p90 / min of ``repeats`` timed calls of ``fn`` (ms), after ``warmup`` untimed ones.

    ``max_seconds`` bounds a slow measurement: the warm-up stops after one call that took longer than a
    tenth of it (warm-up effects are then negligible), and the timed calls stop once they have used it
    (at least 2 are made); ``warmup`` / ``repeats`` in the result say how many were made.
    """
    done_warmup = 0
    for _ in range(warmup):
        t0 = time.perf_counter()
        fn()
        done_warmup += 1
        if max_seconds is not None and time.perf_counter() - t0 > max_seconds / 10:
            break
    ts: List[float] = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
        if max_seconds is not None and len(ts) >= 2 and sum(ts) / 1e3 > max_seconds:
            break
    return {"median_ms": statistics.median(ts), "p90_ms": percentile(ts, 0.9), "min_ms": min(ts),
            "warmup": done_warmup, "repeats": len(ts)}


def wait_quiet(max_wait_s: float, threshold: float = 0.7) -> tuple:
    """Wait (up to ``max_wait_s``) until the 1-minute load average is under ``threshold``: other processes on
    the machine distort timings, multi-threaded torch most of all. Returns the load averages at the end."""
    t0 = time.perf_counter()
    while os.getloadavg()[0] >= threshold and time.perf_counter() - t0 < max_wait_s:
        time.sleep(15)
    return os.getloadavg()


# -- the machine ------------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _meminfo(key: str) -> Optional[int]:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _version(mod: str) -> str:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:
        return "not installed"


def machine_info() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "unknown", ""
    return {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_bytes": _meminfo("MemTotal"),
        "os": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "python": platform.python_version(),
        "versions": {m: _version(m) for m in ("torch", "onnx", "onnxruntime", "coremltools", "transformers",
                                              "xlstm", "mlstm_kernels", "numpy")},
        "commit": commit + ("+local changes" if dirty else ""),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


# -- measured subprocesses --------------------------------------------------------------------------
def _proc_status(pid: int) -> Dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[k] = int(v.split()[0]) * 1024
    except (OSError, ValueError):
        pass
    return out


def run_measured(cmd: List[str], *, anon_cap: Optional[int] = None, min_available: int = 2 * GiB,
                 timeout: Optional[float] = None, env: Optional[dict] = None, cwd: Optional[Path] = None) -> dict:
    """Run ``cmd``; return its wall time, peak RSS, sampled peak anonymous RSS, exit status, the last JSON
    line it printed on stdout (``result``) and the tail of its stderr. Peak RSS is the ``vmhwm_bytes`` the
    process reports in that JSON line, else (killed, crashed) the sampled peak, a lower bound.

    The process is killed (SIGKILL; ``killed`` says why, with the figure at that moment) when its anonymous
    RSS passes ``anon_cap``, when the machine's available memory drops under ``min_available``, or after
    ``timeout`` seconds: a too-large export fails with a figure instead of taking the machine down.
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=cwd)
    peak = {"anon": 0, "rss": 0}
    killed: List[str] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            st = _proc_status(proc.pid)
            if st:
                peak["anon"] = max(peak["anon"], st.get("RssAnon", 0))
                peak["rss"] = max(peak["rss"], st.get("VmRSS", 0))
                avail = _meminfo("MemAvailable") or 0
                why = None
                if anon_cap is not None and st.get("RssAnon", 0) > anon_cap:
                    why = f"anonymous RSS {st['RssAnon'] / GiB:.2f} GiB passed the cap of {anon_cap / GiB:.1f} GiB"
                elif avail and avail < min_available:
                    why = (f"machine's available memory fell to {avail / GiB:.2f} GiB (process anonymous RSS "
                           f"{st.get('RssAnon', 0) / GiB:.2f} GiB, RSS {st.get('VmRSS', 0) / GiB:.2f} GiB)")
                elif timeout is not None and time.perf_counter() - t0 > timeout:
                    why = f"still running after {timeout:.0f}s"
                if why and not killed:
                    killed.append(why)
                    proc.kill()
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out_chunks: List[str] = []
    err_tail: List[str] = []

    def drain_err() -> None:
        for line in proc.stderr:
            err_tail.append(line.rstrip())
            del err_tail[:-40]
            if line.startswith("[child]"):
                print("    " + line.rstrip(), file=sys.stderr, flush=True)

    t_err = threading.Thread(target=drain_err, daemon=True)
    t_err.start()
    for line in proc.stdout:
        out_chunks.append(line)
    proc.wait()
    done.set()
    sampler.join()
    t_err.join(timeout=5)
    wall = time.perf_counter() - t0
    result = None
    for line in reversed("".join(out_chunks).splitlines()):
        if line.startswith("{"):
            try:
                result = json.loads(line)
                break
            except json.JSONDecodeError:
                pass
    reported = (result or {}).get("vmhwm_bytes")
    return {"rc": proc.returncode, "wall_s": round(wall, 2), "peak_rss_bytes": reported or peak["rss"],
            "peak_rss_source": "VmHWM" if reported else "sampled (lower bound)",
            "peak_anon_bytes_sampled": peak["anon"], "killed": killed[0] if killed else None,
            "result": result, "stderr_tail": err_tail[-12:]}


# -- benchmark checkpoints --------------------------------------------------------------------------
# The upstream kernels that run on CPU, in fp32 (transformers' default autocasts the kernels to bf16)
HF_CPU_SETTINGS = dict(chunkwise_kernel="chunkwise--native_autograd", sequence_kernel="native_sequence__native",
                       step_kernel="native", mode="inference", return_last_states=True,
                       autocast_kernel_dtype="float32", inference_state_dtype="float32")

CONFIGS = {
    # the `hf` test fixture's scale (tests/fixtures.py)
    "tiny": dict(vocab_size=97, hidden_size=128, num_heads=2, num_hidden_layers=2),
    # ~100M parameters (counted from the graph in the results): GPT-2-small width and depth
    "100m": dict(vocab_size=8192, hidden_size=768, num_heads=4, num_hidden_layers=12),
}


def fixtures_module():
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    import fixtures

    return fixtures


def build_hf_checkpoint(name: str, root: Path) -> Path:
    """``CONFIGS[name]`` as a transformers checkpoint (random weights: upstream's init + seeded noise, as
    the test fixtures make them); built once per ``root``."""
    d = root / name
    if (d / "config.json").exists():
        return d
    fx = fixtures_module()
    d.mkdir(parents=True, exist_ok=True)
    fx._hf_model(**{**CONFIGS[name], **HF_CPU_SETTINGS}).save_pretrained(d)
    return d


def build_hybrid_checkpoint(root: Path) -> Path:
    """The ``hybrid`` test fixture (xLSTMLMModel, mLSTM + sLSTM blocks)."""
    d = root / "hybrid"
    if not (d / "config.yaml").exists():
        fixtures_module()._build_hybrid("hybrid", d)
    return d


def load_upstream(kind: str, path: Path):
    """The upstream model of a benchmark checkpoint, as users load it (fp32, eval)."""
    return fixtures_module().load_upstream("hf" if kind == "hf" else "hybrid", path)
