"""The validation report: ``report.json`` (machines), ``report.md`` (people), ``report.html`` (people, with
an inline SVG plot of the max relative error per step and prompt; no plotting dependency).

Non-finite figures are written to JSON as the strings "inf", "-inf", "nan" (a PSNR of "inf" means the
logits are identical). Each file is written atomically. Like an artifact, an existing report is not
replaced without ``force`` (:func:`check_report_dir` says so before a validation spends its time).
"""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path
from typing import Any, List

from ..errors import OutputError
from ..outputs import atomic_outputs, foreign_reason, head
from .compare import fmt, where_line

REPORT_FORMAT = "xlstm-export-validation/1"
FILES = ("report.json", "report.md", "report.html")
# how each file of ours begins (what --force may replace)
_MARKS = {"report.json": b'"format": "xlstm-export-validation/', "report.md": b"# Validation ",
          "report.html": b"<title>Validation "}


def ours(path: Path, is_dir: bool) -> str | None:
    """None if ``path`` is a report file this tool wrote (the recogniser of ``outputs.atomic_outputs``)."""
    if is_dir:
        return "a directory"
    mark = _MARKS.get(path.name)
    return None if mark is None or mark in head(path, 4096) else f"not a {path.name} written by xlstm-export"


def _jsonable(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def to_json(report: dict) -> str:
    return json.dumps(_jsonable(report), indent=1, sort_keys=False, allow_nan=False) + "\n"


def _short(path: Path, n: int = 200) -> str:
    s = str(path)
    return s if len(s) <= n else s[: n - 3] + "..."


def _lexists(p: Path, where: Path) -> bool:
    try:
        os.lstat(p)
        return True
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as e:  # no permission to look, a name too long for the file system, a loop of links...
        raise OutputError(f"{_short(where)}: cannot be the report folder: {e.strerror or e}") from None


def _missing_ancestors(out: Path) -> List[Path]:
    """``out`` and its parents that do not exist yet, nearest first (what :func:`write_report` creates)."""
    missing = []
    p = out
    while not _lexists(p, out):
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    return missing


def check_report_dir(out_dir: str | os.PathLike, force: bool = False) -> None:
    """The report folder may be written (OutputError otherwise, one line): it is a folder or can be made
    one in a writable place, and holds no report unless ``force``; with ``force`` the report files there
    must be recognisably this tool's (a folder or another file at ``report.json``'s place is never
    replaced)."""
    out = Path(out_dir)
    missing = _missing_ancestors(out)
    if not missing:
        try:
            is_dir = out.is_dir()
        except OSError as e:
            raise OutputError(f"{_short(out)}: cannot be the report folder: {e.strerror or e}") from None
        if not is_dir:
            raise OutputError(f"{out}: cannot be the report folder: a file is in the way")
        taken = [n for n in FILES if _lexists(out / n, out)]
        if taken and not force:
            raise OutputError(f"{out}: already holds a report ({', '.join(taken)}); pass --force to replace it")
        for n in taken:
            why = foreign_reason(out / n, ours)
            if why is not None:
                raise OutputError(f"{out / n}: exists and is not a report of xlstm-export ({why}); --force "
                                  f"replaces only those: remove it or choose another report folder")
        where = out
    else:
        where = missing[-1].parent  # the nearest existing folder
        if not where.is_dir():
            raise OutputError(f"{out}: cannot be the report folder: {where} is not a directory")
    if not os.access(where, os.W_OK | os.X_OK):
        raise OutputError(f"{out}: cannot write the report: {where} is not writable")


def write_report(report: dict, out_dir: str | os.PathLike, force: bool = False) -> List[Path]:
    """report.json, report.md, report.html in ``out_dir`` (made if missing): all three or none, each
    complete; on failure the folders made here are removed again."""
    out = Path(out_dir)
    check_report_dir(out, force)
    texts = {"report.json": to_json(report), "report.md": to_markdown(report), "report.html": to_html(report)}
    made: List[Path] = []  # the folders this call created, outermost first
    ok = False
    try:
        for d in reversed(_missing_ancestors(out)):
            try:
                d.mkdir()
                made.append(d)
            except FileExistsError:
                if not d.is_dir():
                    raise OutputError(f"{_short(out)}: cannot create the report folder: {d} is a file") from None
            except OSError as e:  # no permission, read-only file system...
                raise OutputError(f"{_short(out)}: cannot create the report folder: {e.strerror or e}") from None
        with atomic_outputs([out / n for n in FILES], force, ours) as tmps:
            for name, tmp in zip(FILES, tmps):
                tmp.write_text(texts[name], encoding="utf-8")
        ok = True
    finally:
        if not ok:
            for d in reversed(made):
                try:
                    d.rmdir()
                except OSError:
                    break
    return [out / n for n in FILES]


# -- shared pieces -------------------------------------------------------------------------------
def _title(r: dict) -> str:
    a = r["artifact"]
    return f"Validation {'PASS' if r['passed'] else 'FAIL'}: {a['kind']} {a['precision']} vs reference"


def _header_lines(r: dict) -> List[str]:
    a, s, t = r["artifact"], r["settings"], r["tolerance"]
    lengths = sorted({len(p["ids"]) for p in r["prompts"]})
    return [
        f"artifact: {a['path']} (kind {a['kind']}, precision {a['precision']}, batch {a['batch_size']}, "
        f"tokens per call {a['max_tokens_per_call'] or 'any'})",
        f"run by: {a.get('runtime', 'unknown')}; reference: {r.get('reference', {}).get('runtime', 'unknown')}",
        f"checkpoint: {r['checkpoint']}",
        f"prompts: {len(r['prompts'])} of {'/'.join(map(str, lengths))} tokens (seed {s['seed']}), prefill + "
        f"{s['steps']} greedy decode steps fed the reference's tokens",
        f"tolerance ({t['target']}, {t['precision']}): max rel <= {t['max_rel']:g}, cosine >= {t['min_cosine']}, "
        f"greedy agreement >= {t['min_greedy_agreement']:g} per prompt -- {t['why']}",
    ]


def _per_step(r: dict) -> List[dict]:
    n = max(len(p["steps"]) for p in r["prompts"])
    rows = []
    for i in range(n):
        ss = [p["steps"][i] for p in r["prompts"] if i < len(p["steps"])]
        rows.append({"step": i, "kind": ss[0]["kind"], "max_abs": max(s["max_abs"] for s in ss),
                     "max_rel": max(s["max_rel"] for s in ss), "psnr": min(s["psnr"] for s in ss),
                     "cosine": min(s["cosine"] for s in ss),
                     "argmax": sum(s["argmax_agreement"] for s in ss) / len(ss)})
    return rows


def _summary_rows(r: dict) -> List[List[str]]:
    s, t = r["summary"], r["tolerance"]
    return [
        ["max abs error", fmt(s["max_abs"]), ""],
        ["max rel error", fmt(s["max_rel"]), f"<= {t['max_rel']:g}"],
        ["min PSNR (dB)", f"{s['min_psnr']:.1f}" if math.isfinite(s["min_psnr"]) else str(s["min_psnr"]), ""],
        ["min cosine", f"{s['min_cosine']:.8f}", f">= {t['min_cosine']}"],
        ["greedy agreement", f"{s['greedy_agreeing']}/{s['greedy_picks']} ({_near_ties(r)} flips on near-ties)",
         f">= {t['min_greedy_agreement']:g} per prompt, near-ties (margin <= {t['tie_margin']:g}) not counted"],
    ]


def _near_ties(r: dict) -> int:
    tie = r["tolerance"]["tie_margin"]
    return sum(1 for p in r["prompts"] for mg in p["pick_margins"] if 0 < mg <= tie)


def _md_table(head: List[str], rows: List[List[str]]) -> List[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def _tables(r: dict) -> List[tuple]:
    """(title, head, rows) of every table, shared by Markdown and HTML."""
    tables = [("Summary", ["figure", "value", "limit"], _summary_rows(r))]
    if r["failures"]:
        rows = [[f["prompt"], f["step"], f["kind"], f["metric"], fmt(f["value"]), fmt(f["limit"]),
                 f.get("position", "")] for f in r["failures"][:25]]
        title = f"Failures ({len(r['failures'])}{', first 25' if len(r['failures']) > 25 else ''})"
        tables.append((title, ["prompt", "step", "kind", "metric", "value", "limit", "position"], rows))
    tables.append(("Per step (worst over prompts)", ["step", "kind", "max abs", "max rel", "PSNR dB", "cosine",
                                                     "argmax agreement"],
                   [[x["step"], x["kind"], fmt(x["max_abs"]), fmt(x["max_rel"]),
                     f"{x['psnr']:.1f}" if math.isfinite(x["psnr"]) else str(x["psnr"]),
                     f"{x['cosine']:.8f}", f"{x['argmax']:.2f}"] for x in _per_step(r)]))
    calls = [(p["index"], k, c) for p in r["prompts"] for k, c in enumerate(p["steps"][0].get("calls", []))]
    if calls:
        tables.append(("Prompt calls (prefill chunks, then step calls for the remainder)",
                       ["prompt", "call", "positions", "via", "max rel", "argmax agreement"],
                       [[i, k, f"{c['start']}..{c['stop'] - 1}", c["via"], fmt(c["max_rel"]),
                         f"{c['argmax_agreement']:.2f}"] for i, k, c in calls]))
    tables.append(("Per prompt", ["prompt", "ids", "max rel", "greedy agreement", "reference tokens",
                                  "artifact tokens"],
                   [[p["index"], " ".join(map(str, p["ids"])), fmt(max(s["max_rel"] for s in p["steps"])),
                     f"{p['greedy_agreement']:.2f}", " ".join(map(str, p["reference_tokens"])),
                     " ".join(map(str, p["artifact_tokens"]))] for p in r["prompts"]]))
    tables.append(("States (max over prompts; contract order)", ["state", "block", "rel after prefill",
                                                                 "rel at end", "abs at end"],
                   [[s["name"], s["block"], fmt(s["after_prefill"]["max_rel"]), fmt(s["final"]["max_rel"]),
                     fmt(s["final"]["max_abs"])] for s in r["states"]]))
    params = r.get("parameters")
    if params is not None:
        worst = params["tensors"][:10]
        tables.append((f"Weights ({params['compared']} compared; worst 10)", ["tensor", "max abs", "max rel"],
                       [[t["name"], fmt(t["max_abs"]), fmt(t["max_rel"])] for t in worst]))
    return tables


# -- Markdown ------------------------------------------------------------------------------------
def to_markdown(r: dict) -> str:
    lines = [f"# {_title(r)}", ""]
    lines += [f"- {x}" for x in _header_lines(r)]
    if not r["passed"]:
        lines += ["", "## Where", "", where_line(r["localisation"])]
    for title, head, rows in _tables(r):
        lines += ["", f"## {title}", ""] + _md_table(head, rows)
    return "\n".join(lines) + "\n"


# -- HTML ----------------------------------------------------------------------------------------
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
          "#bcbd22", "#17becf")
FLOOR = 1e-12  # exact zeros are drawn here on the log axis


def svg_plot(r: dict, width: int = 720, height: int = 320) -> str:
    """Max rel error (log scale) against step, one line per prompt, the tolerance dashed."""
    tol = r["tolerance"]["max_rel"]
    series = [[max(FLOOR, s["max_rel"]) if math.isfinite(s["max_rel"]) else 1e6 for s in p["steps"]]
              for p in r["prompts"]]
    n = max(len(s) for s in series)
    lo = math.floor(math.log10(min(min(min(s) for s in series), tol)))
    hi = max(math.ceil(math.log10(2 * max(max(max(s) for s in series), tol))), lo + 1)  # headroom
    L, R, T, B = 60, 150, 20, 40
    pw, ph = width - L - R, height - T - B

    def x(i: int) -> float:
        return L + (pw * i / max(1, n - 1))

    def y(v: float) -> float:
        return T + ph * (hi - math.log10(v)) / (hi - lo)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect x="{L}" y="{T}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>']
    for e in range(lo, hi + 1):
        yy = y(10.0 ** e)
        out.append(f'<line x1="{L}" y1="{yy:.1f}" x2="{L + pw}" y2="{yy:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{L - 6}" y="{yy + 4:.1f}" text-anchor="end">1e{e}</text>')
    for i in range(n):
        label = "prefill" if i == 0 else str(i)
        if n <= 25 or i % max(1, n // 20) == 0:
            out.append(f'<text x="{x(i):.1f}" y="{T + ph + 15}" text-anchor="middle">{label}</text>')
    out.append(f'<text x="{L + pw / 2}" y="{height - 5}" text-anchor="middle">step</text>')
    out.append(f'<text x="14" y="{T + ph / 2}" transform="rotate(-90 14 {T + ph / 2})" '
               f'text-anchor="middle">max rel error</text>')
    yt = y(tol)
    out.append(f'<line x1="{L}" y1="{yt:.1f}" x2="{L + pw}" y2="{yt:.1f}" stroke="#d62728" '
               f'stroke-dasharray="6,4"/>')
    out.append(f'<text x="{L + pw + 6}" y="{yt + 4:.1f}" fill="#d62728">tolerance {tol:g}</text>')
    for k, (p, s) in enumerate(zip(r["prompts"], series)):
        c = COLORS[k % len(COLORS)]
        pts = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(s))
        out.append(f'<polyline fill="none" stroke="{c}" stroke-width="1.5" points="{pts}"/>')
        for i, v in enumerate(s):
            out.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="2" fill="{c}"/>')
        if k < 12:
            ly = T + 30 + 14 * k
            out.append(f'<line x1="{L + pw + 6}" y1="{ly - 4}" x2="{L + pw + 22}" y2="{ly - 4}" stroke="{c}"/>')
            out.append(f'<text x="{L + pw + 26}" y="{ly}">prompt {p["index"]}</text>')
    out.append("</svg>")
    return "\n".join(out)


def to_html(r: dict) -> str:
    e = html.escape
    parts = ["<!doctype html>", '<html><head><meta charset="utf-8">', f"<title>{e(_title(r))}</title>",
             "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}"
             "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;"
             "font-size:13px;text-align:left}.pass{color:#2ca02c}.fail{color:#d62728}</style>",
             "</head><body>",
             f'<h1 class="{"pass" if r["passed"] else "fail"}">{e(_title(r))}</h1>',
             "<ul>" + "".join(f"<li>{e(x)}</li>" for x in _header_lines(r)) + "</ul>"]
    if not r["passed"]:
        parts += ["<h2>Where</h2>", f"<p>{e(where_line(r['localisation']))}</p>"]
    parts += ["<h2>Max relative error per step</h2>", svg_plot(r)]
    for title, head, rows in _tables(r):
        parts.append(f"<h2>{e(title)}</h2><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in rows]
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
