"""The zoo manifest (quake-zoo.toml): parsing, precedence, skip, its errors,
and the one line about a --dim no model used."""

import json
import re
import shutil
import xml.etree.ElementTree as ET

import numpy as np
import onnx
import pytest
from checktools import FAST, ROOT, ZOO, cli, copy_models, one_line, validate

from quake_onnx.check import manifest
from quake_onnx.check.commands import apply_settings
from quake_onnx.check.runner import CheckOptions, Thresholds

BERT = ZOO / "bert_encoder" / "model.onnx"


def _write(path, text):
    path.write_text(text)
    return path


# -- parsing and precedence (no model runs) -----------------------------------


def test_settings_merge_defaults_globs_in_order_then_the_exact_entry(tmp_path):
    (tmp_path / "vad.npz").write_bytes(b"")
    m = manifest.load(
        _write(
            tmp_path / "quake-zoo.toml",
            """
[defaults]
dims = { batch = 1, seq = 8 }
min_cosine = 0.99
vocab = 100

[models."vad/silero"]
max_abs_error = 0.5
dims = { seq = 64 }

[models."vad/*"]
inputs = "vad.npz"
max_abs_error = 0.01
min_cosine = 0.9

[models."*"]
min_cosine = 0.95
ranges = { sr = [16000, 16000] }
""",
        )
    )
    s = m.settings_for("vad/silero")
    assert s.max_abs_error == 0.5  # the exact entry beats the glob, wherever it stands in the file
    assert s.min_cosine == 0.95  # "*" comes after "vad/*": the later glob wins
    assert s.dims == {"batch": 1, "seq": 64}  # merged name by name
    assert s.inputs == tmp_path / "vad.npz" and s.vocab == 100 and s.ranges == {"sr": (16000, 16000)}
    other = m.settings_for("ocr/det")
    assert other.max_abs_error is None and other.min_cosine == 0.95 and other.inputs is None
    assert other.dims == {"batch": 1, "seq": 8}
    assert len(m.sha256) == 64


def test_a_key_that_is_a_models_name_is_its_entry_even_with_glob_characters(tmp_path):
    # Fresh-user run: the model of x[1].onnx, listed as `x[1]`, could not be
    # named: "x[1]" was taken as a glob only (matching "x1"), "matches no model".
    m = manifest.load(
        _write(tmp_path / "quake-zoo.toml", '[models."x[1]"]\nmax_abs_error = 0.5\n[models."x*"]\nmin_cosine = 0.9\n')
    )
    s = m.settings_for("x[1]")
    assert s.max_abs_error == 0.5 and s.min_cosine == 0.9
    assert m.settings_for("x1").max_abs_error == 0.5  # still a glob for the names it matches as one
    m.check_matches(["x[1]"], tmp_path)  # no "matches no model"


def test_the_command_line_beats_the_manifest_only_when_passed():
    settings = manifest.Settings(
        dims={"seq": 64, "batch": 2}, vocab=100, image_size=320, max_abs_error=0.5, min_cosine=0.9
    )
    cli_values = CheckOptions(
        dims={"seq": 16}, vocab=None, image_size=224, thresholds=Thresholds(None, 0.999, None, None)
    )
    # nothing passed but --dim seq=16: the manifest's values replace typer's defaults
    o = apply_settings(cli_values, settings, frozenset({"dim"}))
    assert o.dims == {"seq": 16, "batch": 2}
    assert o.vocab == 100 and o.image_size == 320
    assert o.thresholds == Thresholds(0.5, 0.9, None, None)
    # --min-cosine 0.999 and --image-size 224 passed: they win, though equal to the defaults
    o = apply_settings(cli_values, settings, frozenset({"dim", "min_cosine", "image_size"}))
    assert o.thresholds.min_cosine == 0.999 and o.image_size == 224 and o.thresholds.max_abs_error == 0.5


# -- errors: one line naming the file and the key, exit 2 ----------------------


@pytest.mark.parametrize(
    "text, contains",
    [
        ("[defaults\n", "not valid TOML"),
        ("[default]\nvocab = 3\n", "default: unknown key"),
        ('[models."m"]\nmax_abs = 0.1\n', "models.m.max_abs: unknown key (known keys: dims"),
        ('[defaults]\nskip = "no"\n', "defaults.skip: unknown key (skip belongs in a model entry)"),
        ('[models."m"]\nskip = ""\n', "models.m.skip: expected the reason"),
        ('[models."m"]\ndims = { seq = -1 }\n', "models.m.dims.seq: expected an integer of 0 or more, got int -1"),
        (
            '[models."m"]\ndims = { seq = "8" }\n',
            "models.m.dims.seq: expected an integer of 0 or more, got the string '8'",
        ),
        ('[models."m"]\ndims = 8\n', "models.m.dims: expected a table"),
        ("[defaults]\nmin_cosine = 1.5\n", "defaults.min_cosine: expected a number <= 1, got float 1.5"),
        ("[defaults]\nmax_abs_error = true\n", "defaults.max_abs_error: expected a number >= 0, got the boolean true"),
        ("[defaults]\nmin_top1_agreement = 2\n", "defaults.min_top1_agreement: expected a number between 0 and 1"),
        ("[defaults]\nvocab = 0.5\n", "defaults.vocab: expected a positive integer"),
        ("[defaults]\nimage_size = -3\n", "defaults.image_size: expected a positive integer"),
        ('[models."m"]\nranges = { x = [2, 1] }\n', "models.m.ranges.x: expected [LOW, HIGH] with LOW <= HIGH"),
        ('[models."m"]\nranges = { x = [0, "a"] }\n', "got the array [0, 'a']"),
        ('[models."m"]\ninputs = "nothing.npz"\n', "models.m.inputs:"),
        ('[models."nope"]\nvocab = 3\n', "models.nope: matches no model under"),
        ('[models."x/*"]\nvocab = 3\n', 'models."x/*": matches no model under'),
        ("models = 3\n", "models: expected tables"),
    ],
)
def test_manifest_errors_are_one_line_naming_file_and_key(tmp_path, text, contains):
    root = tmp_path / "zoo"
    (root / "m").mkdir(parents=True)
    (root / "m" / "model.onnx").write_bytes(b"")  # --list loads nothing
    _write(root / "quake-zoo.toml", text)
    line = one_line(cli("zoo", root, "--list"), 2, contains=contains)
    assert "quake-zoo.toml" in line


def test_config_option_names_the_manifest(tmp_path):
    root = tmp_path / "zoo"
    (root / "m").mkdir(parents=True)
    (root / "m" / "model.onnx").write_bytes(b"")
    _write(root / "quake-zoo.toml", "[default]\n")  # broken, but --config replaces it
    good = _write(tmp_path / "other.toml", '[models."m"]\nvocab = 3\n')
    assert cli("zoo", root, "--list", "--config", good).exit_code == 0
    one_line(cli("zoo", root, "--list", "--config", tmp_path / "missing.toml"), 2, contains="--config")
    one_line(cli("zoo", root, "--list", "--config", tmp_path), 2, contains="is not a file")


# -- runs ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_zoo(tmp_path_factory):
    """legacy_opset11 twice (data sets beside them) and a BERT with no data set
    (generated inputs; needs seq)."""
    root = copy_models(tmp_path_factory.mktemp("manifest"), "legacy_opset11")
    shutil.copytree(root / "legacy_opset11", root / "skipme")
    (root / "gen").mkdir()
    shutil.copy(BERT, root / "gen" / "bert.onnx")
    return root


def _run(root, tmp_path, *args):
    out = tmp_path / "r.json"
    r = cli("zoo", root, *FAST, "--json", out, "--junit", tmp_path / "r.xml", *args)
    report = json.loads(out.read_text()) if out.exists() else None
    if report is not None:
        validate(report)
    return r, report


def test_precedence_and_skip_in_a_run(small_zoo, tmp_path):
    config = _write(
        tmp_path / "z.toml",
        """
[defaults]
min_cosine = 0.9
max_abs_error = 0.5

[models."gen/*"]
dims = { seq = 8 }
min_speedup = 0.001

[models."legacy_opset11"]
max_abs_error = 0.25

[models."skipme"]
skip = "a copy, too slow"
""",
    )
    r, report = _run(small_zoo, tmp_path, "--config", config, "--min-cosine", "0.95")
    assert r.exit_code == 0, r.stdout + r.stderr
    models = {m["name"]: m for m in report["models"]}
    assert list(models) == ["gen/bert", "legacy_opset11", "skipme"]
    # --min-cosine passed: it beats [defaults]; max_abs_error: the exact entry beats [defaults]
    assert models["legacy_opset11"]["thresholds"] == {
        "max_abs_error": 0.25,
        "min_cosine": 0.95,
        "min_top1_agreement": None,
        "min_speedup": None,
    }
    assert models["gen/bert"]["thresholds"]["min_speedup"] == 0.001
    assert models["gen/bert"]["inputs"]["shapes"]["input_ids"] == [1, 8]
    assert models["gen/bert"]["inputs"]["dims"] == {"seq": 8}
    assert report["settings"]["thresholds"]["min_cosine"] == 0.95
    assert report["settings"]["thresholds"]["max_abs_error"] == 0.5
    assert report["settings"]["manifest"]["path"] == str(config)
    skipped = models["skipme"]
    assert skipped["status"] == "skipped" and skipped["reason"] == "a copy, too slow"
    assert skipped["failures"] == [] and skipped["stage"] is None
    assert report["counts"] == {"pass": 2, "fail": 0, "error": 0, "timeout": 0, "skipped": 1}
    assert report["passed"] and report["score"]["models"] == 2  # not in S(t)
    assert "skipme: skipped: a copy, too slow" in r.stdout and "PASS: 2 model(s), 1 skipped" in r.stdout
    case = {c.get("name"): c for c in ET.parse(tmp_path / "r.xml").getroot().iter("testcase")}["skipme"]
    assert case.find("skipped").get("message") == "a copy, too slow" and case.find("failure") is None
    # without --min-cosine the manifest's [defaults] applies, not typer's default 0.999
    r, report = _run(small_zoo, tmp_path, "--config", config, "--shard", "2/3")
    assert [m["thresholds"]["min_cosine"] for m in report["models"]] == [0.9]


def test_dim_on_the_command_line_beats_the_manifest_and_npz_inputs(small_zoo, tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "feat.npz", features=rng.standard_normal((1, 16, 24)).astype(np.float32))
    config = _write(
        tmp_path / "z.toml",
        """
[models."gen/bert"]
dims = { seq = 8, batch = 2 }
[models."legacy_opset11"]
inputs = "feat.npz"
[models."skipme"]
skip = "copy"
""",
    )
    r, report = _run(small_zoo, tmp_path, "--config", config, "--dim", "seq=12")
    assert r.exit_code == 0, r.stderr
    models = {m["name"]: m for m in report["models"]}
    assert models["gen/bert"]["inputs"]["shapes"]["input_ids"] == [2, 12]
    assert models["legacy_opset11"]["inputs"]["source"] == "npz"


def test_a_zoo_wide_dim_warns_once_at_the_end_not_per_model(small_zoo, tmp_path):
    r, report = _run(small_zoo, tmp_path, "--dim", "seq=8", "--dim", "nope=3", "--dim", "height=5")
    assert r.exit_code == 0, r.stderr
    dim_lines = [line for line in r.stderr.splitlines() if "--dim" in line]
    assert dim_lines == ["warning: --dim nope=3, height=5: no model of this run has such a dimension"]
    assert r.stderr.rstrip().endswith(dim_lines[0])  # at the end
    assert not any("--dim" in w for m in report["models"] for w in m["warnings"])
    r, _ = _run(small_zoo, tmp_path, "--dim", "seq=8")
    assert "--dim" not in r.stderr


def test_an_unset_dimension_names_model_input_and_axis(small_zoo, tmp_path):
    r, report = _run(small_zoo, tmp_path, "--shard", "1/3")
    assert r.exit_code == 1
    reason = report["models"][0]["reason"]
    assert "input input_ids of model gen/bert" in reason and "(axis 1)" in reason and "--dim seq=SIZE" in reason


def test_the_example_manifest_of_docs_zoo_md_parses(tmp_path):
    text = re.findall(r"```toml\n(.*?)```", (ROOT / "docs" / "zoo.md").read_text(), re.DOTALL)[0]
    (tmp_path / "vad_inputs.npz").write_bytes(b"")
    m = manifest.load(_write(tmp_path / "quake-zoo.toml", text))
    assert m.settings_for("vad/silero").max_abs_error == 0.01
    assert m.settings_for("vad/silero").inputs == tmp_path / "vad_inputs.npz"
    assert m.settings_for("ocr/det_small").dims == {"batch": 1, "DynamicDimension.1": 640, "DynamicDimension.2": 640}
    assert m.settings_for("big/llm").skip == "needs 30 GB of memory"
    assert m.settings_for("text/encoder").dims == {"batch": 1, "sequence": 128, "input_ids:0": 4}


def test_a_misspelt_range_of_a_models_own_entry_warns_a_defaults_one_does_not(small_zoo, tmp_path):
    """A range naming no input was ignored in silence (fresh-user run); a
    [defaults] range need not fit every model, so only a model's own entry's
    ranges are checked against its inputs."""
    config = _write(
        tmp_path / "z.toml",
        """
[defaults]
ranges = { pixel_values = [0, 1] }
dims = { seq = 8 }

[models."gen/bert"]
ranges = { input_idz = [1, 5] }
""",
    )
    r, report = _run(small_zoo, tmp_path, "--config", config, "--shard", "1/3")
    by_name = {m["name"]: m for m in report["models"]}
    assert by_name["gen/bert"]["warnings"] == ["ranges input_idz: the model has no input of that name"], by_name
    assert "pixel_values" not in r.stderr


def test_an_inputs_file_from_the_manifest_is_named_as_such(tmp_path):
    # Fresh-user run: errors about a manifest's inputs file said "--inputs ...",
    # an option the run never had.
    from quake_onnx.check.inputs import InputError, graph_inputs, load_inputs

    np.savez(tmp_path / "x.npz", other=np.ones(3, np.float32))
    m = manifest.load(_write(tmp_path / "quake-zoo.toml", '[models."bert"]\ninputs = "x.npz"\n'))
    options = apply_settings(CheckOptions(), m.settings_for("bert"))
    assert options.inputs == tmp_path / "x.npz" and options.inputs_named == "the manifest's inputs"
    assert apply_settings(CheckOptions(), m.settings_for("other")).inputs_named == "--inputs"
    model = onnx.load(str(BERT), load_external_data=False)
    assert graph_inputs(model)
    with pytest.raises(InputError, match="^the manifest's inputs .*x.npz has no array for input"):
        load_inputs(model, BERT, npz=options.inputs, npz_named=options.inputs_named)
