"""The zoo manifest, `quake-zoo.toml`: per-model settings of `quake-onnx zoo`.

    [defaults]
    dims = { batch = 1 }
    [models."ocr/det_small"]
    dims = { "DynamicDimension.1" = 640, "DynamicDimension.2" = 640 }
    [models."vad/*"]
    inputs = "vad_inputs.npz"
    max_abs_error = 0.01

Precedence, key by key: the command line (only the options actually passed
on it), then the model's own entry (an exact name), then the globs that
match it (a later entry over an earlier one), then [defaults], then the
built-in defaults. `dims` and `ranges` merge name by name. Every problem is
a ManifestError (exit 2) naming the file and the key."""

from __future__ import annotations

import fnmatch
import hashlib
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .inputs import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python < 3.11 only
    import tomli as tomllib

MANIFEST_NAME = "quake-zoo.toml"
# Keys of a model entry and of [defaults]; `skip` only in model entries.
THRESHOLD_KEYS = ("max_abs_error", "min_cosine", "min_top1_agreement", "min_speedup")
KEYS = ("dims", "inputs", "ranges", "vocab", "image_size", *THRESHOLD_KEYS, "skip")
_GLOB = set("*?[")


class ManifestError(InputError):
    """A manifest that cannot be used as written: exit 2, one line."""


@dataclass
class Settings:
    """What a manifest sets for one model (None: not set)."""

    dims: dict[str, int] = field(default_factory=dict)
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    inputs: Path | None = None
    vocab: int | None = None
    image_size: int | None = None
    max_abs_error: float | None = None
    min_cosine: float | None = None
    min_top1_agreement: float | None = None
    min_speedup: float | None = None
    skip: str | None = None

    def over(self, other: Settings) -> Settings:
        """These settings over `other`'s: a key set here wins; dims and ranges merge name by name."""
        merged = Settings(dims={**other.dims, **self.dims}, ranges={**other.ranges, **self.ranges})
        for key in ("inputs", "vocab", "image_size", *THRESHOLD_KEYS, "skip"):
            mine = getattr(self, key)
            setattr(merged, key, mine if mine is not None else getattr(other, key))
        return merged


@dataclass
class Manifest:
    path: Path
    sha256: str
    defaults: Settings
    models: list[tuple[str, Settings]]  # pattern, settings; in file order

    def settings_for(self, name: str) -> Settings:
        """[defaults], then the matching globs in file order, then the exact
        entry: a key that is the model's name, glob characters or not (a model
        file x[1].onnx is named by "x[1]", which as a glob would not match it)."""
        result = self.defaults
        for pattern, settings in self.models:
            if pattern != name and _is_glob(pattern) and fnmatch.fnmatchcase(name, pattern):
                result = settings.over(result)
        for pattern, settings in self.models:
            if pattern == name:
                result = settings.over(result)
        return result

    def own_ranges(self, name: str) -> frozenset:
        """The ranges named by `name`'s exact entry: the ones a misspelling can
        hide in (a [defaults] or glob range need not fit every model)."""
        return frozenset(n for pattern, s in self.models if pattern == name for n in s.ranges)

    def check_matches(self, names: Iterable[str], root: Path) -> None:
        """Every model entry matches at least one model of the zoo (all shards)."""
        names = list(names)
        for pattern, _ in self.models:
            if not any(_matches(pattern, n) for n in names):
                raise ManifestError(
                    f"{self.path}: models.{_quote(pattern)}: matches no model under {root} "
                    f"(models are named as `quake-onnx zoo {root} --list` prints them)"
                )

    def describe(self) -> dict:
        return {"path": str(self.path), "sha256": self.sha256}


def _is_glob(pattern: str) -> bool:
    return any(c in _GLOB for c in pattern)


def _matches(pattern: str, name: str) -> bool:
    return pattern == name or (_is_glob(pattern) and fnmatch.fnmatchcase(name, pattern))


def _quote(key: str) -> str:
    """A TOML key as written in the file: bare when it can be, quoted otherwise."""
    bare = key and all(c.isalnum() or c in "-_" for c in key)
    return key if bare else '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


def find(root: Path, config: Path | None) -> Path | None:
    """--config FILE, else ROOT/quake-zoo.toml when it exists, else None."""
    if config is not None:
        if not config.exists():
            raise ManifestError(f"--config {config} does not exist")
        if not config.is_file():
            raise ManifestError(f"--config {config} is not a file")
        return config
    default = root / MANIFEST_NAME
    return default if default.is_file() else None


def load(path: Path) -> Manifest:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ManifestError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ManifestError(f"{path}: not UTF-8 text, so not a TOML manifest") from None
    except tomllib.TOMLDecodeError as e:
        raise ManifestError(f"{path}: not valid TOML ({e})") from None
    for key in data:
        if key not in ("defaults", "models"):
            raise ManifestError(
                f'{path}: {_quote(key)}: unknown key (a manifest has [defaults] and [models."NAME or GLOB"] tables)'
            )
    defaults = _settings(path, data.get("defaults", {}), "defaults", allow_skip=False)
    models_table = data.get("models", {})
    if not isinstance(models_table, dict):
        raise ManifestError(f'{path}: models: expected tables [models."NAME or GLOB"], got {_kind(models_table)}')
    models = []
    for pattern, table in models_table.items():
        where = f"models.{_quote(pattern)}"
        if not pattern.strip():
            raise ManifestError(f"{path}: {where}: an empty model name")
        models.append((pattern, _settings(path, table, where, allow_skip=True)))
    return Manifest(path, hashlib.sha256(raw).hexdigest(), defaults, models)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):  # short ones shown: [0, 'a'] says more than "an array"
        return f"the array {value!r}" if len(repr(value)) <= 60 else "an array"
    return f"{type(value).__name__} {value!r}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _settings(path: Path, table: Any, where: str, allow_skip: bool) -> Settings:
    if not isinstance(table, dict):
        raise ManifestError(f"{path}: {where}: expected a table, got {_kind(table)}")
    s = Settings()

    def bad(key: str, expected: str, value: Any) -> ManifestError:
        return ManifestError(f"{path}: {where}.{_quote(key)}: expected {expected}, got {_kind(value)}")

    for key, value in table.items():
        if key not in KEYS or (key == "skip" and not allow_skip):
            hint = (
                "skip belongs in a model entry"
                if key == "skip"
                else f"known keys: {', '.join(k for k in KEYS if allow_skip or k != 'skip')}"
            )
            raise ManifestError(f"{path}: {where}.{_quote(key)}: unknown key ({hint})")
        if key == "dims":
            if not isinstance(value, dict):
                raise bad(key, 'a table of NAME = SIZE (or "INPUT:AXIS" = SIZE)', value)
            for name, size in value.items():
                if not name.strip():
                    raise ManifestError(f"{path}: {where}.dims: an empty dimension name")
                if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                    raise ManifestError(
                        f"{path}: {where}.dims.{_quote(name)}: expected an integer of 0 or more, got {_kind(size)}"
                    )
                s.dims[name] = size
        elif key == "ranges":
            if not isinstance(value, dict):
                raise bad(key, "a table of INPUT = [LOW, HIGH]", value)
            for name, pair in value.items():
                ok = isinstance(pair, list) and len(pair) == 2 and all(map(_is_number, pair)) and pair[0] <= pair[1]
                if not ok:
                    raise ManifestError(
                        f"{path}: {where}.ranges.{_quote(name)}: expected [LOW, HIGH] with "
                        f"LOW <= HIGH, got {_kind(pair)}"
                    )
                s.ranges[name] = (pair[0], pair[1])
        elif key == "inputs":
            if not isinstance(value, str) or not value.strip():
                raise bad(key, "the path of an .npz file (relative to the manifest)", value)
            npz = Path(value) if Path(value).is_absolute() else path.parent / value
            if not npz.is_file():
                what = "does not exist" if not npz.exists() else "is not a file"
                raise ManifestError(f"{path}: {where}.inputs: {npz} {what}")
            s.inputs = npz
        elif key in ("vocab", "image_size"):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise bad(key, "a positive integer", value)
            setattr(s, key, value)
        elif key == "skip":
            if not isinstance(value, str) or not value.strip():
                raise bad(key, "the reason, a non-empty string", value)
            s.skip = " ".join(value.split())
        else:  # thresholds, with the ranges of the command-line options
            limits = {
                "max_abs_error": (0.0, None),
                "min_cosine": (None, 1.0),
                "min_top1_agreement": (0.0, 1.0),
                "min_speedup": (0.0, None),
            }[key]
            low, high = limits
            if not _is_number(value) or (low is not None and value < low) or (high is not None and value > high):
                span = (
                    f"between {low:g} and {high:g}"
                    if low is not None and high is not None
                    else f">= {low:g}"
                    if low is not None
                    else f"<= {high:g}"
                )
                raise bad(key, f"a number {span}", value)
            setattr(s, key, float(value))
    return s
