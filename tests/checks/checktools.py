"""Shared by the tests of `quake-onnx check` and `zoo`: the CLI in-process,
the sample models, and the report schema with a validator."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

from typer.testing import CliRunner

from quake_onnx.cli import app

ROOT = Path(__file__).resolve().parent.parent.parent
SAMPLES = ROOT / "sample_models"
ZOO = SAMPLES / "zoo"
SCHEMA = json.loads((ROOT / "quake_onnx" / "check" / "zoo-report.schema.json").read_text())
# Few timed runs: these tests check behaviour, not speed.
FAST = ["--runs", "3", "--warmup", "1"]

_runner = CliRunner()
_PROGRESS = re.compile(r"\[\d+/\d+\] \S+ (pass|fail|error|timeout)\b")


def cli(*args: object):
    result = _runner.invoke(app, [str(a) for a in args], prog_name="quake-onnx")
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def one_line(result, code: int, prefix: str = "error: ", contains: str = "") -> str:
    """Exit `code` and exactly one line on stderr, starting with `prefix`, no
    traceback (warnings and the zoo's "[k/n] model status" progress lines aside)."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = [
        line for line in result.stderr.splitlines() if not line.startswith("warning: ") and not _PROGRESS.match(line)
    ]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(prefix), lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert contains.lower() in lines[0].lower(), lines[0]
    return lines[0]


def copy_models(dest: Path, *names: str) -> Path:
    """Sample zoo models (with their data sets) copied into dest."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copytree(ZOO / name, dest / name)
    return dest


def validate(instance, schema=SCHEMA, ref: str = "") -> None:
    """Raises AssertionError unless `instance` matches the schema (or its
    `#/$defs/...` part named by `ref`). Uses jsonschema when installed, and
    always the structural check below, so both agree in every environment."""
    target = {"$ref": ref, "$defs": schema["$defs"]} if ref else schema
    try:
        import jsonschema
    except ImportError:
        pass
    else:
        try:
            jsonschema.validate(instance, target, cls=jsonschema.Draft202012Validator)
        except jsonschema.ValidationError as e:
            raise AssertionError(f"jsonschema: {e.message} at {list(e.absolute_path)}") from None
    structural_check(instance, target, schema["$defs"], "$")


_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
}


def structural_check(value, schema: dict, defs: dict, where: str) -> None:
    """The subset of JSON Schema the report schema uses: $ref, type, const,
    enum, oneOf, required, properties, additionalProperties, items, minItems,
    minimum, maximum, exclusiveMinimum."""
    if "$ref" in schema:
        structural_check(value, defs[schema["$ref"].split("/")[-1]], defs, where)
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        assert any(_TYPES[t](value) for t in types), f"{where}: {value!r} is not {types}"
    if "const" in schema:
        assert value == schema["const"], f"{where}: {value!r} != {schema['const']!r}"
    if "enum" in schema:
        assert value in schema["enum"], f"{where}: {value!r} not in {schema['enum']}"
    if "oneOf" in schema:
        matches = 0
        for option in schema["oneOf"]:
            try:
                structural_check(value, option, defs, where)
                matches += 1
            except AssertionError:
                pass
        assert matches == 1, f"{where}: {value!r} matches {matches} of oneOf"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema:
            assert value >= schema["minimum"], f"{where}: {value} < {schema['minimum']}"
        if "maximum" in schema:
            assert value <= schema["maximum"], f"{where}: {value} > {schema['maximum']}"
        if "exclusiveMinimum" in schema:
            assert value > schema["exclusiveMinimum"], f"{where}: {value} <= {schema['exclusiveMinimum']}"
    if isinstance(value, dict):
        for key in schema.get("required", []):
            assert key in value, f"{where}: missing {key!r}"
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                structural_check(item, props[key], defs, f"{where}.{key}")
            elif extra is False:
                raise AssertionError(f"{where}: unexpected {key!r}")
            elif isinstance(extra, dict):
                structural_check(item, extra, defs, f"{where}.{key}")
    if isinstance(value, list):
        assert len(value) >= schema.get("minItems", 0), f"{where}: fewer than {schema['minItems']} items"
        if "items" in schema:
            for i, item in enumerate(value):
                structural_check(item, schema["items"], defs, f"{where}[{i}]")
