"""The report of `quake-onnx tune`: a dict (its JSON schema is
quake_onnx/check/tune-report.schema.json), a Markdown rendering and the
terminal table."""

from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from rich.markup import escape
from rich.table import Table

from ..check.reports import md_cell
from ..check.runner import Thresholds
from .prepare import Prepared
from .search import GroupResult, Outcome
from .space import Choice, Config, error_summary, within

SCHEMA_ID = "quake-onnx/tune-report/2"
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "check" / "tune-report.schema.json"
TUNED_ON = "quake_onnx.tuned_on"  # metadata_props key of a tuned model: the CPU it was measured on


def machine() -> dict:
    from ..bench.machine import caches, cpu_model

    c = caches()
    return {"cpu": cpu_model(), "l1d": c.l1d, "l2": c.l2, "l3": c.l3, "logical_cores": os.cpu_count() or 1}


def environment() -> dict:
    import onnxruntime as ort

    import quake_onnx

    try:
        isa = quake_onnx.selected_isa()
    except Exception:
        isa = None
    return {
        "quake_onnx": quake_onnx.__version__,
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
        "isa": isa,
    }


def _choice(c: Optional[Choice]) -> Optional[dict]:
    return None if c is None else {"order": c.order, "method": c.method, "bits": c.bits}


def _stat(p) -> Optional[dict]:
    return None if p is None else p.to_dict()


def _precision(r: GroupResult, config: Optional[Config]) -> Optional[str]:
    """A replaced fused attention group's precision in the result (the configuration's), else None."""
    return config.precision if config is not None and r.choice is not None and r.group.attention else None


def _group_error(r: GroupResult, precision: Optional[str] = None) -> Optional[dict]:
    """The group's effect alone: at its choice in the result, else the cheapest accurate one, else the last tried."""
    if precision == "bfloat16" and r.bf16 is not None:
        return error_summary(r.bf16)
    for c in (r.choice, r.accurate):
        outs = r.outputs_for(c) if c is not None else None
        if outs is not None:
            return error_summary(outs)
    if r.choice is not None and r.choice.method == "exaq":
        return None
    return error_summary(r.tried[-1][1]) if r.tried else None


def build_report(
    prep: Prepared,
    outcome: Outcome,
    *,
    model: Optional[str],
    output: Optional[str],
    thresholds: Thresholds,
    inputs: dict,
    threads: int,
    budget: dict,
    seconds: float,
    warnings: list,
) -> dict:
    result = outcome.variant
    tuned = not result.is_original
    node_config: Optional[Config] = (
        result.config
        if tuned
        else (outcome.chosen.config if outcome.chosen is not None else (prep.configs[0] if prep.configs else None))
    )
    result_config = result.config if tuned else None
    groups = []
    for g in prep.groups:
        r = outcome.groups[g.key]
        groups.append(
            {
                "key": g.key,
                "rule": g.rule,
                "op_type": g.op_type,
                "graph": g.graph,
                "shape": g.shape,
                "nodes": max((len(v) for v in g.nodes.values()), default=0),
                "decision": "replaced" if r.choice is not None else "kept",
                "choice": _choice(r.choice),
                "precision": _precision(r, result_config),
                "reason": r.reason,
                "tried": [
                    {
                        "choice": _choice(c),
                        "precision": ("bfloat16" if r.bf16_only else "float32") if g.attention else None,
                        "within": within(outs, thresholds),
                        "summary": error_summary(outs),
                    }
                    for c, outs in r.tried
                ]
                + (
                    [
                        {
                            "choice": _choice(r.accurate),
                            "precision": "bfloat16",
                            "within": r.bf16_within,
                            "summary": error_summary(r.bf16),
                        }
                    ]
                    if r.bf16 is not None and not r.bf16_only  # bfloat16 only: the orders were at bfloat16
                    else []
                ),
                "speedup": _stat(r.speedup),
            }
        )
    nodes = []
    if node_config is not None:
        # By rule and anchor: one node may anchor two rules (x * Sigmoid(x)'s Sigmoid, also read elsewhere).
        anchor_group = {(g.rule, n): g for g in prep.groups for n in g.nodes.get(node_config, [])}
        for d in prep.decisions[node_config]:
            g = anchor_group.get((d.rule, d.node)) if d.replaced else None
            r = outcome.groups[g.key] if g is not None else None
            choice = r.choice if r is not None and tuned else None
            nodes.append(
                {
                    "node": d.node,
                    "graph": d.graph,
                    "op_type": d.op_type,
                    "rule": d.rule,
                    "group": g.key if g is not None else None,
                    "decision": "replaced" if choice is not None else "kept",
                    "order": choice.order if choice is not None else None,
                    "method": choice.method if choice is not None else None,
                    "bits": choice.bits if choice is not None else None,
                    "precision": _precision(r, result_config) if r is not None else None,
                    "reason": r.reason if r is not None else f"kept: {d.reason}",
                    "speedup": _stat(r.speedup) if r is not None else None,
                    "error": _group_error(r, _precision(r, result_config)) if r is not None else None,
                }
            )
    configs = [
        {
            **c.config.to_dict(),
            "status": c.status,
            "reason": c.reason,
            "groups": [k for k, _ in c.variant.picks] if c.variant is not None else [],
            "speedup": _stat(c.speedup),
            "summary": error_summary(c.outputs),
        }
        for c in outcome.configs
    ]
    final_outputs = outcome.outputs if tuned else None
    return {
        "schema": SCHEMA_ID,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": model,
        "output": output,
        "result": "tuned" if tuned else "original",
        "reason": outcome.reason,
        "configuration": result.config.to_dict() if tuned else None,
        "tolerance": thresholds.accuracy_only().to_dict(),
        "inputs": inputs,
        "threads": threads,
        "attention_precision": {"option": prep.attention_precision, "engine": prep.engine},
        "budget": budget,
        "machine": machine(),
        "environment": environment(),
        "final": {
            "speedup": _stat(outcome.speedup),
            "measured": "the tuned model" if tuned else ("the best variant" if outcome.speedup else None),
            "outputs": final_outputs,
            "summary": error_summary(final_outputs),
        },
        "configurations": configs,
        "groups": groups,
        "nodes": nodes,
        "notes": list(prep.notes),
        "warnings": list(warnings),
        "seconds": round(seconds, 3),
    }


def to_json(report: dict) -> str:
    return json.dumps(report, indent=2)


def _fmt_stat(s: Optional[dict]) -> str:
    return "-" if s is None else f"{s['median']:.3f}x [{s['q1']:.3f}, {s['q3']:.3f}]"


def _fmt_choice(c: Optional[dict], precision: Optional[str] = None) -> str:
    if c is None:
        return "-"
    text = f"exaq {c['bits']} bits" if c["method"] == "exaq" else f"order {c['order']}"
    return text + (f", {precision}" if precision is not None else "")


def _fmt_error(s: Optional[dict]) -> str:
    if s is None:
        return "-"
    cos = s["min_cosine"]
    err = s["max_abs_error"]
    cos_text = cos if isinstance(cos, str) else f"{cos:.6f}"
    err_text = err if isinstance(err, str) else f"{err:.2g}"
    return f"cos {cos_text}, max abs {err_text}"


def _fmt_precision_option(a: dict) -> str:
    engine = f"bf16 engine {a['engine']}" if a["engine"] else "no bf16 engine"
    return f"{a['option']} ({engine})"


def headline(report: dict) -> str:
    final = report["final"]
    if report["result"] == "tuned":
        cfg = report["configuration"]
        return (
            f"tuned: {_fmt_stat(final['speedup'])} against the original (median [quartiles] of paired rounds), "
            f"{Config.from_dict(cfg).text()}"
        )
    figure = _fmt_stat(final["speedup"]) if final["speedup"] else ""
    # The reason may quote the figure itself ("... spread (1.084x [0.904, 1.520])"): once is enough.
    measured = f" (measured {figure})" if figure and figure not in report["reason"] else ""
    return f"kept the original: {report['reason']}{measured}"


def _alone(g: dict) -> list:
    """The tried entry of the group's choice in the result (at its precision), else the last tried."""
    choice, precision = g["choice"] or {}, g["precision"]
    same = [t for t in g["tried"] if t["choice"] == choice and (precision is None or t["precision"] == precision)]
    return same[-1:] or g["tried"][-1:]


def groups_table(report: dict) -> Table:
    table = Table(title=f"{escape(str(report['model']))}: {report['threads']} thread(s)")
    for col in ("group", "decision", "choice", "group speedup", "error alone", "reason"):
        table.add_column(col)
    for g in report["groups"]:
        tried = _alone(g)
        table.add_row(
            escape(g["key"]) + f" x{g['nodes']}",
            g["decision"],
            _fmt_choice(g["choice"], g["precision"]),
            _fmt_stat(g["speedup"]),
            _fmt_error(tried[0]["summary"]) if tried else "-",
            escape(g["reason"]),
        )
    return table


def to_markdown(report: dict) -> str:
    lines = [f"## quake-onnx tune: {md_cell(str(report['model']))}", "", md_cell(headline(report)), ""]
    m, env, b = report["machine"], report["environment"], report["budget"]
    lines.append(
        f"Machine: {m['cpu']}, {m['logical_cores']} logical cores; ONNX Runtime {env['onnxruntime']}, "
        f"kernels {env['isa']}, {report['threads']} thread(s). Budget {b['seconds']:g} s "
        f"(estimate {b['estimate']:.0f} s), used {b['elapsed']:.0f} s. "
        f"Attention precision {_fmt_precision_option(report['attention_precision'])}."
    )
    lines += ["", "| group | nodes | decision | choice | group speedup [q1, q3] | error alone | reason |"]
    lines.append("|---|---|---|---|---|---|---|")
    for g in report["groups"]:
        tried = _alone(g)
        lines.append(
            f"| {md_cell(str(g['key']))} | {g['nodes']} | {g['decision']} | {_fmt_choice(g['choice'], g['precision'])} "
            f"| {_fmt_stat(g['speedup'])} "
            f"| {_fmt_error(tried[0]['summary']) if tried else '-'} | {md_cell(str(g['reason']))} |"
        )
    if report["configurations"]:
        lines += ["", "| configuration | status | speedup [q1, q3] | error | reason |", "|---|---|---|---|---|"]
        for c in report["configurations"]:
            text = Config.from_dict(c).text()
            lines.append(
                f"| {md_cell(text)} | {c['status']} | {_fmt_stat(c['speedup'])} | {_fmt_error(c['summary'])} "
                f"| {md_cell(str(c['reason']))} |"
            )
    final = report["final"]
    if final["outputs"]:
        lines += ["", "| output | max abs error | cosine |", "|---|---|---|"]
        for o in final["outputs"]:
            lines.append(f"| {md_cell(o['name'])} | {o['max_abs_error']} | {o['cosine']} |")
    if b["not_tried"]:
        lines += ["", "Not tried (budget): " + "; ".join(b["not_tried"]) + "."]
    for n in report["notes"]:
        lines.append(f"\nNote: {n}")
    return "\n".join(lines) + "\n"
