"""`quake-onnx zoo merge`: the shard reports of a CI matrix as the report one
unsharded run would have written.

The shards of `--shard i/n` are round robin over the sorted model list, so
model k of the whole zoo is model k // n of shard k % n + 1: the merge puts
every model back in its place, then computes S(t) and its curve from the
models exactly as `zoo` does (the same sum in the same order, so the value is
the unsharded run's to the last bit for the same per-model results). It
refuses, with one line, reports that do not make one run: different settings
or thresholds, different quake-onnx or ONNX Runtime versions, a shard missing
or given twice, a model in two shards."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..modelio import ModelFileError
from . import reports
from .runner import Thresholds
from .zoo import score

# What must agree between shards besides `settings`: a version change can
# change every figure.
_VERSIONS = ("quake_onnx", "onnxruntime")
_ZOO_SCHEMA_FAMILY = reports.SCHEMA_ID.rsplit("/", 1)[0] + "/"
_REQUIRED = (
    "schema",
    "shard",
    "settings",
    "environment",
    "score",
    "models",
    "timeout",
    "jobs",
    "root",
    "seconds",
    "created",
)


class MergeError(ModelFileError):
    """Reports that cannot be merged: exit 2, one line."""


def read_report(path: Path) -> dict:
    if not path.exists():
        raise MergeError(f"{path} does not exist")
    if not path.is_file():
        raise MergeError(f"{path} is not a file")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise MergeError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    except json.JSONDecodeError as e:
        raise MergeError(f"{path} is not JSON ({e})") from None
    schema = report.get("schema") if isinstance(report, dict) else None
    if isinstance(schema, str) and schema.startswith(_ZOO_SCHEMA_FAMILY) and schema != reports.SCHEMA_ID:
        raise MergeError(
            f"{path} was written by another quake-onnx version (schema {schema}; this one merges "
            f"{reports.SCHEMA_ID}): run every shard with the same version"
        )
    if schema != reports.SCHEMA_ID:
        raise MergeError(f"{path} is not a quake-onnx zoo report (written by `quake-onnx zoo --json`)")
    missing = [k for k in _REQUIRED if k not in report]
    if missing:
        raise MergeError(f"{path} is not a complete zoo report (no {', '.join(missing)})")
    problem = _model_entries_problem(report["models"])
    if problem:
        raise MergeError(f"{path} is not a zoo report as `quake-onnx zoo --json` writes it: {problem}")
    return report


def _model_entries_problem(models: Any) -> str | None:
    """What makes `models` unlike a zoo report's list of results, or None
    (the merge reads each entry's name and status)."""
    if not isinstance(models, list):
        return f"models is {type(models).__name__}, not a list"
    for i, entry in enumerate(models):
        if not isinstance(entry, dict):
            return f"models[{i}] is {type(entry).__name__}, not an object"
        if not isinstance(entry.get("name"), str):
            return f"models[{i}] has no name"
        if entry.get("status") not in reports.STATUSES:
            return f"models[{i}].status is {entry.get('status')!r}, not one of {', '.join(reports.STATUSES)}"
    return None


def _first_difference(a: Any, b: Any, where: str = "") -> str | None:
    """The path of the first value that differs between two JSON values, None when equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                return f"{where}{key}"
            found = _first_difference(a[key], b[key], f"{where}{key}.")
            if found:
                return found
        return None
    return None if a == b else where.rstrip(".") or "value"


def _comparable_settings(settings: dict) -> dict:
    """Settings that must agree; the manifest by content, not by where the file was."""
    out = dict(settings)
    if isinstance(out.get("manifest"), dict):
        out["manifest"] = {k: v for k, v in out["manifest"].items() if k != "path"}
    return out


def _show(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def _lookup(d: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return "(none)"
        d = d[part]
    return d


def merge_reports(named: list[tuple[Path, dict]]) -> tuple[dict, list[str]]:
    """The merged report and warnings (shards that ran on different kernels)."""
    first_path, first = named[0]
    for path, report in named[1:]:
        a, b = _comparable_settings(first["settings"]), _comparable_settings(report["settings"])
        diff = _first_difference(a, b)
        if diff:
            raise MergeError(
                f"{path}: settings.{diff} is {_show(_lookup(b, diff))}, {first_path} has "
                f"{_show(_lookup(a, diff))}: the shards of one run have the same settings and thresholds"
            )
        if report["timeout"] != first["timeout"]:
            raise MergeError(f"{path}: timeout {report['timeout']} differs from {first_path}'s {first['timeout']}")
        for key in _VERSIONS:
            mine, theirs = report["environment"].get(key), first["environment"].get(key)
            if mine != theirs:
                raise MergeError(
                    f"{path} was written by {key} {mine}, {first_path} by {theirs}: merge reports of one tool version"
                )
    counts = {r["shard"]["count"] for _, r in named}
    if len(counts) != 1:
        raise MergeError(
            f"the reports split the zoo differently (--shard i/n with n = {', '.join(map(str, sorted(counts)))})"
        )
    n = counts.pop()
    by_index: dict[int, tuple[Path, dict]] = {}
    for path, report in named:
        i = report["shard"]["index"]
        if i in by_index:
            raise MergeError(f"{path} and {by_index[i][0]} are both shard {i}/{n}")
        by_index[i] = (path, report)
    missing = [i for i in range(1, n + 1) if i not in by_index]
    if missing:
        raise MergeError(
            f"shard {', '.join(f'{i}/{n}' for i in missing)} missing: "
            f"a merge needs every shard of the run ({len(by_index)} of {n} given)"
        )
    total = sum(len(r["models"]) for _, r in named)
    for i, (path, report) in by_index.items():
        expected = len(range(i - 1, total, n))
        if len(report["models"]) != expected:
            raise MergeError(
                f"{path} holds {len(report['models'])} models; shard {i}/{n} of a zoo of {total} "
                f"holds {expected}: the shards come from different zoos"
            )
    models, seen = [], {}
    for k in range(total):
        path, report = by_index[k % n + 1]
        model = report["models"][k // n]
        if model["name"] in seen:
            raise MergeError(f"model {model['name']} is in both {seen[model['name']]} and {path}")
        seen[model["name"]] = path
        models.append(model)

    settings = first["settings"]
    thresholds = Thresholds(**settings["thresholds"])
    for path, report in named:  # each shard's S(t) must follow from its own models
        own = score(report["models"], thresholds, settings["penalty"])
        stored = report["score"]
        if (own is None) != (stored is None) or (
            own and not math.isclose(own["log_sum"], stored["log_sum"], rel_tol=1e-12, abs_tol=1e-12)
        ):
            raise MergeError(f"{path}: its S(t) does not follow from its models (was the report edited?)")
    merged_score = score(models, thresholds, settings["penalty"])
    isas = sorted({str(r["environment"].get("isa")) for _, r in named})
    warnings = []
    if len(isas) > 1:
        warnings.append(
            f"the shards ran on different kernels ({', '.join(isas)}): their speedups are not from one machine"
        )
    # The root as each shard was given it: one zoo may be spelt two ways, so a warning, not a refusal.
    other_roots = [f"{p} ran on {r['root']}" for p, r in named[1:] if r["root"] != first["root"]]
    if other_roots:
        warnings.append(
            f"the shards ran on different zoo folders ({first_path} on {first['root']}; {'; '.join(other_roots)}): "
            "a merge is of one zoo's shards"
        )
    shards = []
    for i in sorted(by_index):
        path, r = by_index[i]
        shards.append(
            {
                "file": str(path),
                "shard": r["shard"],
                "created": r["created"],
                "seconds": r["seconds"],
                "jobs": r["jobs"],
                "environment": r["environment"],
            }
        )
    report = reports.zoo_report(
        first["root"],
        models,
        merged_score,
        shard=(1, 1),
        jobs=first["jobs"],
        timeout=first["timeout"],
        settings=settings,
        seconds=sum(r["seconds"] for _, r in named),
        env=first["environment"],
        merged=shards,
    )
    return report, warnings
