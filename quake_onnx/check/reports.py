"""What `check` and `zoo` print and write: rich tables, JSON, Markdown, JUnit XML."""

from __future__ import annotations

import html
import json
import math
import platform
import re
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from rich.markup import escape
from rich.table import Table

SCHEMA_ID = "quake-onnx/zoo-report/2"
SCHEMA_PATH = Path(__file__).resolve().parent / "zoo-report.schema.json"


def environment(threads: int) -> dict:
    import onnxruntime as ort

    import quake_onnx

    try:
        isa = quake_onnx.selected_isa()
    except Exception:  # the library is missing: every model reports why
        isa = None
    return {
        "quake_onnx": quake_onnx.__version__,
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": _cpu_count(),
        "isa": isa,
        "threads": threads,
    }


def _cpu_count() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


STATUSES = ("pass", "fail", "error", "timeout", "skipped")


def zoo_report(
    root: Path | str,
    results: list[dict],
    score: Optional[dict],
    *,
    shard: tuple[int, int],
    jobs: int,
    timeout: Optional[float],
    settings: dict,
    seconds: float,
    env: Optional[dict] = None,
    merged: Optional[list[dict]] = None,
) -> dict:
    """The zoo report; `env` is this machine's unless given (a merge keeps the shards'),
    `merged` lists the shard reports a merge combined."""
    counts = {s: sum(r["status"] == s for r in results) for s in STATUSES}
    report = {
        "schema": SCHEMA_ID,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "root": str(root),
        "shard": {"index": shard[0], "count": shard[1]},
        "jobs": jobs,
        "timeout": timeout,
        "settings": settings,
        "environment": env if env is not None else environment(settings["threads"]),
        "score": score,
        "counts": counts,
        "passed": counts["pass"] + counts["skipped"] == len(results),
        "seconds": round(seconds, 3),
        "models": results,
    }
    if merged is not None:
        report["merged"] = merged
    return report


def _clean(value: Any) -> Any:
    """JSON has no inf or NaN: they are written as the strings "inf", "-inf", "nan"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def to_json(report: dict) -> str:
    return json.dumps(_clean(report), indent=2, allow_nan=False) + "\n"


def _num(v: Any, fmt: str) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):  # "inf" / "nan"
        return v
    return format(v, fmt)


def _speedup(r: dict) -> str:
    return f"{r['timing']['speedup']:.2f}x" if r.get("timing") else "-"


def _ms(r: dict, key: str) -> str:
    return f"{r['timing'][key]:.3f}" if r.get("timing") else "-"


def tolerance_text(tolerance: dict) -> str:
    parts = []
    if tolerance.get("max_abs_error") is not None:
        parts.append(f"max abs error <= {tolerance['max_abs_error']:g}")
    if tolerance.get("min_cosine") is not None:
        parts.append(f"cosine >= {tolerance['min_cosine']:g}")
    if tolerance.get("min_top1_agreement") is not None:
        parts.append(f"top-1 agreement >= {tolerance['min_top1_agreement']:g}")
    return ", ".join(parts) or "outputs finite where the original's are"


def score_line(score: Optional[dict]) -> str:
    if score is None:
        return "S(t): no models"
    return (
        f"S(t) = {score['value']:.3f} over {score['models']} model(s), {score['within']} within tolerance "
        f"(t: {tolerance_text(score['tolerance'])}; penalty {score['penalty']:g})"
    )


def _row(r: dict) -> list[str]:
    s = r.get("summary") or {}
    replaced = (r.get("optimized") or {}).get("replaced")
    return [
        r["name"],
        r["status"],
        _num(s.get("max_abs_error"), ".2e"),
        _num(s.get("min_cosine"), ".6f"),
        _num(s.get("min_top1_agreement"), ".3f"),
        _ms(r, "original_ms"),
        _ms(r, "optimized_ms"),
        _speedup(r),
        "-" if replaced is None else str(replaced),
        r["reason"] or "",
    ]


_COLUMNS = ("model", "status", "max abs err", "cosine", "top-1", "ORT ms", "quake ms", "speedup", "replaced", "reason")
# The terminal table's headers: short, so a model name and eight figures fit 100 columns.
_SHORT = {"max abs err": "max abs", "replaced": "repl"}
_STYLE = {"pass": "green", "fail": "red", "error": "red", "timeout": "red", "skipped": "yellow"}


def summary_table(report: dict) -> Table:
    env = report["environment"]
    table = Table(
        title=f"quake-onnx zoo {escape(report['root'])}: shard {report['shard']['index']}/"
        f"{report['shard']['count']}, {env['threads']} thread(s), kernels {env['isa']}"
    )
    columns = _COLUMNS[:-1]  # reasons are long: failure_lines prints them under the table
    longest = max((len(r["name"]) for r in report["models"]), default=5)
    for c in columns:
        # Names and figures stay whole on a narrow terminal; only the reason folds.
        table.add_column(
            _SHORT.get(c, c),
            justify="right" if c not in ("model", "status", "reason") else "left",
            no_wrap=True,
            overflow="ellipsis",
            min_width=min(longest, 32) if c == "model" else None,
        )
    for r in report["models"]:
        row = [escape(x) for x in _row(r)][: len(columns)]
        row[1] = f"[{_STYLE[r['status']]}]{row[1]}[/]"
        table.add_row(*row)
    return table


def failure_lines(report: dict) -> list[str]:
    """One line per model that did not pass: name, status (and stage), reason."""
    lines = []
    for r in report["models"]:
        if r["status"] != "pass":
            stage = f" ({r['stage']})" if r.get("stage") and r["status"] == "error" else ""
            lines.append(f"{r['name']}: {r['status']}{stage}: {r['reason']}")
    return lines


def check_table(result: dict) -> Table:
    t = result["timing"]
    table = Table(
        title=f"{escape(result['model'])}: {result['inputs']['source']} inputs, "
        f"{t['threads']} thread(s), kernels {result['isa']}"
    )
    for c in ("output", "shape", "max abs err", "max rel err", "cosine", "top-1", "top-k"):
        table.add_column(c, justify="left" if c in ("output", "shape") else "right")
    for o in result["outputs"]:
        topk = "-" if o["topk_agreement"] is None else f"{o['topk_agreement']:.3f} (k={o['k']})"
        table.add_row(
            escape(o["name"]),
            escape(str(o["shape"])),
            _num(o["max_abs_error"], ".2e"),
            _num(o["max_rel_error"], ".2e"),
            _num(o["cosine"], ".6f"),
            _num(o["top1_agreement"], ".3f"),
            topk,
        )
    return table


def timing_line(result: dict) -> str:
    t = result["timing"]
    return (
        f"latency (median of {t['runs']} runs after {t['warmup']} warm-up, {t['threads']} thread(s)): "
        f"ONNX Runtime {t['original_ms']:.3f} ms, com.quake {t['optimized_ms']:.3f} ms, speedup {t['speedup']:.2f}x"
    )


def md_cell(text: str) -> str:
    """A table cell: `|` escaped, one line, and &, <, > as entities, so a name
    like a<b> is shown, not taken for an HTML tag (GitHub's renderer)."""
    return html.escape(text, quote=False).replace("|", "\\|").replace("\n", " ")


def to_markdown(report: dict) -> str:
    score, env = report["score"], report["environment"]
    counts = report["counts"]
    head = "passed" if report["passed"] else "FAILED"
    value = "-" if score is None else f"{score['value']:.3f}"
    skipped = f", {counts['skipped']} skipped" if counts.get("skipped") else ""
    merged = report.get("merged")
    origin = (
        f"Merged from {len(merged)} shard reports"
        if merged
        else f"Shard {report['shard']['index']}/{report['shard']['count']}"
    )
    lines = [
        f"## quake-onnx zoo: S(t) = {value} ({head})",
        "",
        f"{score_line(score)}. {counts['pass']} passed, {counts['fail']} failed a threshold, "
        f"{counts['error']} errors, {counts['timeout']} timed out{skipped}. {origin}, "
        f"{env['threads']} thread(s), {report['settings']['runs']} timed runs, kernels "
        f"{env['isa']}, ONNX Runtime {env['onnxruntime']}, {env['cpu_count']} CPU(s).",
        "",
        "| " + " | ".join(_COLUMNS) + " |",
        "|" + "|".join("---" if c in ("model", "status", "reason") else "---:" for c in _COLUMNS) + "|",
    ]
    marks = {"pass": "✅ pass", "fail": "❌ fail", "error": "❌ error", "timeout": "⏱️ timeout", "skipped": "⏭️ skipped"}
    for r in report["models"]:
        row = _row(r)
        row[1] = marks[r["status"]]
        lines.append("| " + " | ".join(md_cell(x) for x in row) + " |")
    if score is not None:
        lines += [
            "",
            "| t (max abs error) | " + " | ".join(f"{c['max_abs_error']:g}" for c in score["curve"]) + " |",
            "|---|" + "---:|" * len(score["curve"]),
            "| S(t) | " + " | ".join(f"{c['value']:.3f}" for c in score["curve"]) + " |",
        ]
    lines += [
        "",
        "S(t): geometric mean over the N models (skipped ones aside) of the speedup of each model within "
        "tolerance t, a model outside it (or that failed to load, optimize, run or finish) counting as the "
        "penalty (docs/zoo.md).",
        "",
    ]
    return "\n".join(lines)


_BAD_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")


def _x(text: str) -> str:
    return _BAD_XML.sub("?", text)


def to_junit(report: dict) -> str:
    """One testcase per model; a model that failed a threshold, errored or
    timed out carries a <failure> whose message is the reason."""
    models = report["models"]
    failed = sum(r["status"] not in ("pass", "skipped") for r in models)
    skipped = sum(r["status"] == "skipped" for r in models)
    total_time = f"{sum(r['seconds'] for r in models):.3f}"
    suites = ET.Element(
        "testsuites",
        name="quake-onnx zoo",
        tests=str(len(models)),
        failures=str(failed),
        errors="0",
        skipped=str(skipped),
        time=total_time,
    )
    suite = ET.SubElement(
        suites,
        "testsuite",
        name=f"quake-onnx zoo {_x(report['root'])} (shard {report['shard']['index']}/{report['shard']['count']})",
        tests=str(len(models)),
        failures=str(failed),
        errors="0",
        skipped=str(skipped),
        time=total_time,
        timestamp=report["created"],
    )
    props = ET.SubElement(suite, "properties")
    score = report["score"]
    for key, value in (
        ("score", "-" if score is None else f"{score['value']:.4f}"),
        ("tolerance", tolerance_text(score["tolerance"]) if score else "-"),
        ("isa", str(report["environment"]["isa"])),
        ("threads", str(report["environment"]["threads"])),
    ):
        ET.SubElement(props, "property", name=key, value=value)
    for r in models:
        case = ET.SubElement(
            suite,
            "testcase",
            classname="quake-onnx.zoo",
            name=_x(r["name"]),
            file=_x(r["model"]),
            time=f"{r['seconds']:.3f}",
        )
        if r["status"] == "skipped":
            ET.SubElement(case, "skipped", message=_x(r["reason"] or "skipped"))
        elif r["status"] != "pass":
            kind = {"fail": "threshold"}.get(r["status"], r["status"])
            failure = ET.SubElement(case, "failure", message=_x(r["reason"] or r["status"]), type=kind)
            failure.text = _x("\n".join(r["failures"]) + (f"\nstage: {r['stage']}" if r.get("stage") else ""))
        out = ET.SubElement(case, "system-out")
        out.text = _x(_case_text(r))
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def _case_text(r: dict) -> str:
    lines = []
    for o in r["outputs"]:
        lines.append(
            f"{o['name']}: max abs {_num(o['max_abs_error'], '.3e')}, max rel {_num(o['max_rel_error'], '.3e')}, "
            f"cosine {_num(o['cosine'], '.6f')}"
            + (
                f", top-1 {_num(o['top1_agreement'], '.3f')}, top-{o['k']} {_num(o['topk_agreement'], '.3f')}"
                if o["scores"]
                else ""
            )
        )
    if r.get("timing"):
        lines.append(timing_line(r))
    lines += [f"note: {n}" for n in (r.get("inputs") or {}).get("notes", [])]
    lines += [f"warning: {w}" for w in r.get("warnings", [])]
    return "\n".join(lines)
