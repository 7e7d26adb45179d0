"""Seeded fuzz tests: every mutated input ends in a named error, a counted skip, or a valid output.

One test per input format (EmoEvaluation, transcriptions, .wdseg, ASR JSON, RTTM, labels.json,
step-3 .pt caches, dialog wavs). Each case mutates a valid input (a number replaced by NaN, inf,
1e308, 400 digits or a negative; a byte 0xE9 or NUL inserted; a line dropped, doubled or cut; a
JSON value replaced by another type; a list nested 100,000 deep; audio samples set to NaN; a wav
cut short ...) and runs the reader, or the step, on it. Allowed outcomes:
  * common.cli.PipelineError (or step 3's "dialogs failed" exit) whose message names the file;
  * success, and then the output's invariants hold: words in = words out, every segment inside the
    audio with at least one sample, no NaN anywhere, labels in the 4 classes.
Anything else (KeyError, TypeError, OverflowError, RecursionError, UnicodeDecodeError ...) fails.
The seeds are fixed, so a failure reproduces; the case's mutation is in the assertion message.
"""

import copy
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import align
import iemo_lab_with_timestamps as step1
import utils
from common import cli, fileio, formats, rundirs, step2_oracle
from common.cli import PipelineError
from common.formats import LABELS

MINI = Path(__file__).resolve().parent / "fixtures" / "iemocap_mini"
EMO = "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt"
TRANS = "Session1/dialog/transcriptions/Ses01F_impro01.txt"
WDSEG = "Session1/sentences/ForcedAlignment/Ses01F_impro01/Ses01F_impro01_F001.wdseg"

# Replacements for a number in a text file, and for a value in a JSON file.
NUMBERS = [
    "nan",
    "NaN",
    "inf",
    "-inf",
    "1e308",
    "-1",
    "9" * 400,
    "1e-400",
    "0",
    "99999",
    "-0.0",
    "1.5.5",
    "",
    "x",
    "0x10",
    "1_000",
    "٣",
]
VALUES = [
    float("nan"),
    float("inf"),
    -float("inf"),
    1e308,
    -1.0,
    10**400,
    "1.5",
    "",
    None,
    True,
    False,
    [],
    {},
    [[[]]],
    0,
    7,
    1.7,
    25.0,
    20.03,
    "hap",
    "F",
    "\u0000",
    "é" * 3,
    -1e-9,
]
BYTES = [b"\xe9", b"\x00", b"\xff\xfe", b"\x85", b"\t", b"[", b"]", b":", b"-", b"%", b"\r", b" ", b"\xef\xbb\xbf"]
NUM_RE = re.compile(rb"-?\d+(?:\.\d+)?")


def mutate_text(rng, data: bytes) -> tuple[bytes, str]:
    """One random edit of a text file -> (new bytes, what was done)."""
    lines = data.split(b"\n")
    i = int(rng.integers(len(lines)))
    op = int(rng.integers(9))
    if op in (0, 1):  # a number replaced (twice as likely: numbers are what readers trust most)
        spots = [(k, m) for k, line in enumerate(lines) for m in NUM_RE.finditer(line)]
        if spots:
            k, m = spots[int(rng.integers(len(spots)))]
            new = NUMBERS[int(rng.integers(len(NUMBERS)))].encode()
            lines[k] = lines[k][: m.start()] + new + lines[k][m.end() :]
            return b"\n".join(lines), f"line {k + 1}: number {m.group().decode()} -> {new[:20]!r}"
    if op == 2:
        b = BYTES[int(rng.integers(len(BYTES)))]
        pos = int(rng.integers(len(data) + 1))
        return data[:pos] + b + data[pos:], f"byte {b!r} inserted at {pos}"
    if op == 3:
        del lines[i]
        return b"\n".join(lines), f"line {i + 1} deleted"
    if op == 4:
        lines.insert(i, lines[i])
        return b"\n".join(lines), f"line {i + 1} doubled"
    if op == 5:
        pos = int(rng.integers(len(data) + 1))
        return data[:pos], f"cut at byte {pos}"
    if op == 6:  # two numbers of a line swapped (start and end reversed)
        nums = list(NUM_RE.finditer(lines[i]))
        if len(nums) >= 2:
            a, b = nums[0], nums[1]
            line = lines[i]
            lines[i] = line[: a.start()] + b.group() + line[a.end() : b.start()] + a.group() + line[b.end() :]
            return b"\n".join(lines), f"line {i + 1}: first two numbers swapped"
    if op == 7:  # a field replaced by another line's field
        fields, other = lines[i].split(), lines[int(rng.integers(len(lines)))].split()
        if fields and other:
            k = int(rng.integers(len(fields)))
            fields[k] = other[int(rng.integers(len(other)))]
            lines[i] = b" ".join(fields)
            return b"\n".join(lines), f"line {i + 1}: field {k} replaced"
    j = int(rng.integers(len(lines)))
    lines[i], lines[j] = lines[j], lines[i]
    return b"\n".join(lines), f"lines {i + 1} and {j + 1} swapped"


def json_slots(obj, out=None):
    """Every (container, key) of a JSON value, for mutate_json."""
    out = [] if out is None else out
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else []
    for k, v in list(items):
        out.append((obj, k))
        json_slots(v, out)
    return out


def mutate_json(rng, obj) -> tuple[bytes, str]:
    """One random edit of a JSON document -> (file bytes, what was done)."""
    obj = copy.deepcopy(obj)
    op = int(rng.integers(12))
    if op == 0:
        text = json.dumps(obj).encode()
        pos = int(rng.integers(len(text) + 1))
        return text[:pos], f"cut at byte {pos}"
    if op == 1:
        text = json.dumps(obj).encode()
        pos = int(rng.integers(len(text) + 1))
        return text[:pos] + b"\xe9" + text[pos:], f"byte 0xE9 at {pos}"
    slots = json_slots(obj)
    if not slots:
        return json.dumps(obj).encode(), "no change"
    container, key = slots[int(rng.integers(len(slots)))]
    if op == 2:
        if isinstance(container, dict):
            del container[key]
        else:
            container.pop(key)
        what = f"{key!r} deleted"
    elif op == 3 and isinstance(container, list):
        container.insert(key, copy.deepcopy(container[key]))
        what = f"item {key} doubled"
    elif op == 4:
        container[key] = "[" * 100_000  # replaced below by a 100,000-deep list
        text = json.dumps(obj).replace('"' + "[" * 100_000 + '"', "[" * 100_000 + "]" * 100_000)
        return text.encode(), f"{key!r} -> a list nested 100,000 deep"
    else:
        value = VALUES[int(rng.integers(len(VALUES)))]
        container[key] = value
        what = f"{key!r} -> {value!r:.30}"
    return json.dumps(obj, allow_nan=True).encode(), what


def names_file(message: str, *paths) -> bool:
    return any(str(p) in message for p in paths)


def no_nan(obj) -> bool:
    if isinstance(obj, float):
        return math.isfinite(obj)
    if isinstance(obj, dict):
        return all(no_nan(v) for v in obj.values())
    if isinstance(obj, list):
        return all(no_nan(v) for v in obj)
    return True


# --------------------------------------------------------------------------- step 1: the corpus text files


@pytest.mark.parametrize("rel, seed", [(EMO, 11), (TRANS, 12)])
def test_fuzz_emo_evaluation_and_transcriptions(tmp_path, rel, seed):
    """Step 1 on 60 mutations of one EmoEvaluation / transcription file of the fixture corpus."""
    root = tmp_path / "IEMOCAP_full_release"
    shutil.copytree(MINI, root)
    target, original = root / rel, (root / rel).read_bytes()
    rng = np.random.default_rng(seed)
    outcomes = {"error": 0, "ok": 0}
    for case in range(60):
        data, what = mutate_text(rng, original)
        target.write_bytes(data)
        try:
            out = step1.build_labels(root)
        except PipelineError as e:
            assert names_file(str(e), root), (case, what, str(e))
            outcomes["error"] += 1
            continue
        formats.check_labels(out, "labels.json")  # a valid labels.json ...
        for info in out["dialogs"].values():  # ... with real intervals
            assert all(0 <= u["start"] < u["end"] < 1e6 for u in info["utterances"]), (case, what)
        outcomes["ok"] += 1
    target.write_bytes(original)
    assert outcomes["error"] >= 15 and outcomes["ok"] >= 5, outcomes  # both outcomes exercised


# --------------------------------------------------------------------------- .wdseg (steps 1-2)


def test_fuzz_wdseg(tmp_path):
    """parse_wdseg and step 2's reference words on 60 mutations of a .wdseg file: a named error, or
    words with non-empty text and finite times inside the dialog audio."""
    root = tmp_path / "IEMOCAP_full_release"
    shutil.copytree(MINI, root)
    target, original = root / WDSEG, (root / WDSEG).read_bytes()
    utt = {"id": "Ses01F_impro01_F001", "start": 14.8872, "end": 18.0175, "speaker": "F", "wdseg": WDSEG, "text": "x"}
    duration = 25.0
    rng = np.random.default_rng(3)
    outcomes = {"error": 0, "ok": 0}
    for case in range(60):
        data, what = mutate_text(rng, original)
        target.write_bytes(data)
        counts = {}
        try:
            words, _ = step2_oracle.reference_words(root, [utt], duration, counts)
        except PipelineError as e:
            assert names_file(str(e), target), (case, what, str(e))
            outcomes["error"] += 1
            continue
        for w in words:
            assert w["word"] and w["word"] == w["word"].strip(), (case, what, w)
            assert 0 <= w["start"] <= w["end"] <= duration + formats.TIME_TOLERANCE_S, (case, what, w)
        outcomes["ok"] += 1
    assert outcomes["error"] >= 15 and outcomes["ok"] >= 5, outcomes


# --------------------------------------------------------------------------- step 3: ASR JSON and RTTM

DIALOG, SECONDS = "Ses01F_impro01", 20.0
TURNS = [(0.5, 6.0, "SPEAKER_00"), (6.2, 11.0, "SPEAKER_01"), (11.5, 19.0, "SPEAKER_00")]
UTTS = [
    {
        "id": f"{DIALOG}_F000",
        "start": 0.5,
        "end": 6.0,
        "speaker": "F",
        "code": "neu",
        "label": "neu",
        "text": "x",
        "wdseg": None,
    },
    {
        "id": f"{DIALOG}_M000",
        "start": 6.2,
        "end": 11.0,
        "speaker": "M",
        "code": "ang",
        "label": "ang",
        "text": "x",
        "wdseg": None,
    },
    {
        "id": f"{DIALOG}_F001",
        "start": 11.5,
        "end": 19.0,
        "speaker": "F",
        "code": "fru",
        "label": None,
        "text": "x",
        "wdseg": None,
    },
]


def valid_asr():
    segments = []
    for k, (s, e) in enumerate([(0.6, 5.5), (6.3, 10.8), (11.6, 18.9)]):
        times = np.linspace(s, e, 6)
        words = [
            {"word": f"w{k}{i}", "start": round(float(a), 3), "end": round(float(a + 0.5), 3), "score": 0.9}
            for i, a in enumerate(times[:-1])
        ]
        words.append({"word": f"n{k}"})  # untimed, as WhisperX leaves numerals
        segments.append({"start": s, "end": e, "text": " ".join(w["word"] for w in words), "words": words})
    return {"segments": segments, "language": "en"}


@pytest.fixture(scope="module")
def step3_work(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz3")
    corpus, work = root / "corpus", root / "work"
    wav = f"Session1/dialog/wav/{DIALOG}.wav"
    (corpus / wav).parent.mkdir(parents=True)
    audio = np.random.default_rng(0).uniform(-0.5, 0.5, (int(SECONDS * 16000), 2)).astype(np.float32)
    sf.write(corpus / wav, audio, 16000, subtype="FLOAT")
    fileio.atomic_write_json(
        work / "labels.json",
        {
            "corpus": str(corpus),
            "labels": list(LABELS),
            "dialogs": {
                DIALOG: {
                    "session": 1,
                    "kind": "impro",
                    "scenario": "impro01",
                    "script": None,
                    "wav": wav,
                    "utterances": UTTS,
                }
            },
        },
    )
    return work


def expected_words(path) -> int | None:
    """Words step 3 must keep from an ASR file it accepted: non-blank words, else the text's words."""
    data = json.loads(Path(path).read_text())
    n = 0
    for seg in data["segments"]:
        words = [w for w in seg.get("words") or [] if w["word"].strip()]
        n += len(words) if words else len((seg.get("text") or "").split())
    return n


def run_align(work, monkeypatch, capsys, variant="both"):
    """align.main on the one dialog -> "ok" or the error recorded in its manifest."""
    monkeypatch.setattr(rundirs, "code_version", lambda: {"commit": "fuzz", "dirty": False})  # no git calls
    monkeypatch.setattr(fileio.os, "fsync", lambda fd: None)  # atomic writes without waiting for the disk
    try:
        align.main(["--work", str(work), "--pipe", "p", "--variant", variant, "--overwrite"])
    except SystemExit as e:
        assert "step 3: 1 of 1 dialogs failed" in str(e.code), e.code
        capsys.readouterr()
        m = fileio.read_json(work / "p" / "aligned-p1.5" / "manifest.json")
        assert m["dialogs"][DIALOG]["status"] == "failed"
        return m["dialogs"][DIALOG]["error"]
    capsys.readouterr()
    return "ok"


def check_step3_outputs(work, n_words, where):
    for variant in ("aligned-p1.5", "baseline"):
        raw = (work / "p" / variant / "segments" / f"{DIALOG}.json").read_text()
        segs = json.loads(raw, parse_constant=lambda c, v=variant: pytest.fail(f"{where}: {c} in {v} segments"))
        segs = segs["segments"]
        assert no_nan(segs), where
        if variant == "aligned-p1.5":
            assert sum(s["n_words"] for s in segs) == n_words, where  # words in = words out
        for s in segs:
            assert 0 <= s["start"] <= s["end"] <= SECONDS + 1e-4, (where, variant, s)  # inside the audio
            assert s["text"].strip() and s["n_words"] > 0, (where, s)
            assert s["label"] in LABELS or s["label"] is None
        cache = fileio.load_pt(work / "p" / variant / "cache" / f"{DIALOG}.pt")
        assert len(utils.SegmentDataset([work / "p" / variant / "cache" / f"{DIALOG}.pt"], labelled_only=False)) == len(
            segs
        )
        for c in cache["segments"]:
            assert c["audio"].ndim == 1 and c["audio"].numel() >= 1 and bool(torch.isfinite(c["audio"]).all()), where


def test_fuzz_asr_json(step3_work, monkeypatch, capsys):
    """Step 3 on 45 mutations of a WhisperX result."""
    work = step3_work
    formats.write_rttm(work / "p" / "diarization" / f"{DIALOG}.rttm", DIALOG, TURNS)
    asr_path = work / "p" / "asr" / f"{DIALOG}.json"
    rng = np.random.default_rng(5)
    outcomes = {"error": 0, "ok": 0}
    for case in range(45):
        data, what = mutate_json(rng, valid_asr())
        asr_path.parent.mkdir(parents=True, exist_ok=True)
        asr_path.write_bytes(data)
        result = run_align(work, monkeypatch, capsys)
        if result != "ok":
            assert names_file(result, asr_path), (case, what, result)
            outcomes["error"] += 1
            continue
        check_step3_outputs(work, expected_words(asr_path), (case, what))
        outcomes["ok"] += 1
    assert outcomes["error"] >= 5 and outcomes["ok"] >= 5, outcomes


def test_fuzz_rttm(step3_work, monkeypatch, capsys):
    """Step 3 on 45 mutations of the RTTM (other recordings' lines among them)."""
    work = step3_work
    asr_path = work / "p" / "asr" / f"{DIALOG}.json"
    fileio.atomic_write_json(asr_path, valid_asr())
    n_words = expected_words(asr_path)
    rttm = work / "p" / "diarization" / f"{DIALOG}.rttm"
    formats.write_rttm(rttm, DIALOG, TURNS)
    original = rttm.read_bytes()
    other = original.replace(DIALOG.encode(), b"Ses01F_impro02").replace(b"SPEAKER_0", b"SPEAKER_1")
    rng = np.random.default_rng(6)
    outcomes = {"error": 0, "ok": 0}
    for case in range(45):
        base = original + other if case % 5 == 0 else original  # a multi-recording RTTM now and then
        data, what = mutate_text(rng, base)
        rttm.write_bytes(data)
        result = run_align(work, monkeypatch, capsys)
        if result != "ok":
            assert names_file(result, rttm), (case, what, result)
            outcomes["error"] += 1
            continue
        check_step3_outputs(work, n_words, (case, what))
        outcomes["ok"] += 1
    assert outcomes["error"] >= 5 and outcomes["ok"] >= 5, outcomes


# --------------------------------------------------------------------------- labels.json


def test_fuzz_labels_json(tmp_path):
    """load_labels (every step's reader) on 60 mutations of a labels.json written by step 1."""
    work = tmp_path / "work"
    step1.main(["--iemocap", str(MINI), "--work", str(work)])
    valid = json.loads((work / "labels.json").read_text())
    rng = np.random.default_rng(7)
    outcomes = {"error": 0, "ok": 0}
    for case in range(60):
        data, what = mutate_json(rng, valid)
        (work / "labels.json").write_bytes(data)
        try:
            labels = formats.load_labels(work, require=("wav",))
        except PipelineError as e:
            assert names_file(str(e), work / "labels.json"), (case, what, str(e))
            outcomes["error"] += 1
            continue
        for info in labels["dialogs"].values():  # what steps 2-6 take for granted
            ids = [u["id"] for u in info["utterances"]]
            assert len(ids) == len(set(ids)) and isinstance(info["wav"], str), (case, what)
            for u in info["utterances"]:
                assert math.isfinite(u["start"]) and 0 <= u["start"] <= u["end"] < math.inf, (case, what)
                assert u["label"] in LABELS or u["label"] is None, (case, what)
                assert u["speaker"] in ("F", "M"), (case, what)
        outcomes["ok"] += 1
    assert outcomes["error"] >= 25 and outcomes["ok"] >= 5, outcomes


# --------------------------------------------------------------------------- step-3 .pt caches


def valid_cache():
    g = torch.Generator().manual_seed(0)
    return {
        "dialog": DIALOG,
        "session": 1,
        "sample_rate": 16000,
        "channel": "mean",
        "segments": [
            {
                "id": f"{DIALOG}-{i:04d}",
                "start": float(i),
                "end": i + 0.5,
                "speaker": "SPEAKER_00",
                "text": "hello there",
                "label": i - 1,
                "audio": torch.randn(8000, generator=g),
            }
            for i in range(5)
        ],
    }


BAD_AUDIO = [
    lambda a: a.clone().fill_(float("nan")),
    lambda a: torch.cat([a[:-1], torch.tensor([float("inf")])]),
    lambda a: a.reshape(2, -1),
    lambda a: a > 0,
    lambda a: (a * 100).to(torch.int16),
    lambda a: a[:0],
    lambda a: a.double(),
    lambda a: a.half(),
    lambda a: a[0],
    lambda a: torch.cat([a, a]),
    lambda a: a.numpy(),
]


def test_fuzz_pt_cache(tmp_path):
    """SegmentDataset (steps 4 and 5 read caches only through it) on 80 mutated caches."""
    path = tmp_path / f"{DIALOG}.pt"
    rng = np.random.default_rng(8)
    outcomes = {"error": 0, "ok": 0}
    for case in range(80):
        cache = valid_cache()
        op = int(rng.integers(5))
        seg = cache["segments"][int(rng.integers(5))]
        if op == 0:
            k = int(rng.integers(len(BAD_AUDIO)))
            seg["audio"] = BAD_AUDIO[k](seg["audio"])
            what = f"audio mutation {k}"
        elif op == 1:
            key = str(rng.choice(["id", "start", "end", "speaker", "text", "label"]))
            value = [
                float("nan"),
                float("inf"),
                -1.0,
                1.7,
                "hap",
                b"bytes",
                None,
                True,
                7,
                -2,
                torch.tensor(2),
                torch.tensor(1.5),
                10**30,
                [1],
            ][int(rng.integers(14))]
            seg[key] = value
            what = f"{key} -> {value!r:.30}"
        elif op == 2:
            key = str(rng.choice(["dialog", "sample_rate", "segments", "channel"]))
            cache[key] = [None, 8000, "x", [], {}, 16000.0, True][int(rng.integers(7))]
            what = f"cache {key} -> {cache[key]!r}"
        elif op == 3:
            cache["segments"][1]["id"] = cache["segments"][0]["id"]
            what = "duplicate id"
        else:
            del seg[str(rng.choice(list(seg)))]
            what = "a key deleted"
        fileio.atomic_torch_save(cache, path)
        if case % 10 == 9:  # and now and then a damaged file
            data = path.read_bytes()
            path.write_bytes(data[: int(rng.integers(len(data)))])
            what += ", file cut"
        try:
            ds = utils.SegmentDataset([path], labelled_only=False)
        except PipelineError as e:
            assert names_file(str(e), path), (case, what, str(e))
            outcomes["error"] += 1
            continue
        for s in ds.segments:
            a = s["audio"]
            assert a.ndim == 1 and a.dtype == torch.float32 and a.numel() >= 400 and bool(torch.isfinite(a).all()), (
                case,
                what,
            )
            assert -1 <= s["label"] < len(LABELS) and isinstance(s["label"], int) and isinstance(s["text"], str), (
                case,
                what,
            )
        assert len({s["id"] for s in ds.segments}) == len(ds.segments)
        outcomes["ok"] += 1
    assert outcomes["error"] >= 40 and outcomes["ok"] >= 5, outcomes


# --------------------------------------------------------------------------- dialog wavs


def test_fuzz_dialog_wav(tmp_path):
    """load_audio (steps 2-3) and step 2's header reader on 50 mutated wavs."""
    rng = np.random.default_rng(9)
    path = tmp_path / f"{DIALOG}.wav"
    outcomes = {"error": 0, "ok": 0}
    for case in range(50):
        subtype = ["FLOAT", "PCM_16", "DOUBLE"][case % 3]
        audio = rng.uniform(-0.5, 0.5, (16000, 2))
        op = int(rng.integers(6))
        what = f"{subtype}, op {op}"
        if op == 0 and subtype != "PCM_16":
            audio[int(rng.integers(16000)), int(rng.integers(2))] = [np.nan, np.inf, -np.inf][case % 3]
        sf.write(path, audio, [16000, 16000, 8000][case % 3] if op == 1 else 16000, subtype=subtype)
        data = path.read_bytes()
        if op == 2:
            data = data[: int(rng.integers(len(data)))]  # a truncated copy
        elif op == 3:
            pos = int(rng.integers(len(data)))
            data = data[:pos] + bytes(rng.integers(0, 256, 8, dtype=np.uint8)) + data[pos + 8 :]  # bytes overwritten
        elif op == 4:
            data = data[:44]  # a header without samples
        path.write_bytes(data)
        try:
            x = formats.load_audio(path)
            seconds = formats.wav_seconds(path)
        except PipelineError as e:
            assert names_file(str(e), path), (case, what, str(e))
            outcomes["error"] += 1
            continue
        assert x.ndim == 1 and x.dtype == np.float32 and len(x) > 0 and np.isfinite(x).all(), (case, what)
        assert seconds == len(x) / 16000, (case, what)  # the header and the samples agree
        outcomes["ok"] += 1
    assert outcomes["error"] >= 15 and outcomes["ok"] >= 10, outcomes


# --------------------------------------------------------------------------- checksums of step-3 caches


def test_fuzz_pt_cache_checksum(tmp_path):
    """A step-3 cache with flipped, swapped, cut or appended bytes, or without its checksum file, is a
    one-line error naming the file and step 3; never data that differs from what step 3 wrote."""
    path = tmp_path / "w" / "p" / "aligned-p1.5" / "cache" / f"{DIALOG}.pt"
    digest = fileio.atomic_torch_save(valid_cache(), path)
    original = path.read_bytes()
    assert digest == __import__("hashlib").sha256(original).hexdigest() == fileio.verified_sha256(path)
    assert utils.SegmentDataset([path], labelled_only=False).sha256 == {DIALOG: digest}
    rng = np.random.default_rng(13)
    for case in range(40):
        data = bytearray(original)
        op = case % 4
        if op == 0:  # one bit flipped
            pos = int(rng.integers(len(data)))
            data[pos] ^= 1 << int(rng.integers(8))
        elif op == 1:  # two different bytes swapped
            i, j = (int(x) for x in rng.choice(len(data), 2, replace=False))
            while data[i] == data[j]:
                j = int(rng.integers(len(data)))
            data[i], data[j] = data[j], data[i]
        elif op == 2:
            data = data[: int(rng.integers(len(data)))]
        else:
            data += bytes(rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8))
        path.write_bytes(bytes(data))
        with pytest.raises(PipelineError) as e:
            utils.SegmentDataset([path], labelled_only=False)
        message = str(e.value)
        assert message.startswith(f"{path}: corrupt segment cache") and "re-run step 3" in message, (case, message)
        assert "\n" not in message and len(message) < 600, (case, message)
    path.write_bytes(original)
    fileio.checksum_path(path).unlink()  # e.g. a kill between the cache and its sidecar
    with pytest.raises(PipelineError, match="without its checksum file .* re-run step 3"):
        utils.SegmentDataset([path], labelled_only=False)


# --------------------------------------------------------------------------- .wdseg frames past the utterance


def test_fuzz_wdseg_frames_past_the_utterance(tmp_path):
    """A .wdseg row ending past its utterance's audio (+ TIME_TOLERANCE_S) is an error naming the row;
    up to the tolerance it is accepted unchanged."""
    root = tmp_path / "IEMOCAP_full_release"
    shutil.copytree(MINI, root)
    target = root / WDSEG
    lines = target.read_text().split("\n")
    utt = {"id": "Ses01F_impro01_F001", "start": 14.8872, "end": 18.0175, "speaker": "F", "wdseg": WDSEG, "text": "x"}
    seconds = utt["end"] - utt["start"]
    rows = [k for k, line in enumerate(lines) if len(line.split()) == 4 and line.split()[0].isdigit()]
    rng = np.random.default_rng(14)
    outcomes = {"error": 0, "ok": 0}
    for case in range(30):
        k = rows[int(rng.integers(len(rows)))]
        fields = lines[k].split()
        end = int(seconds * 100) + int(rng.integers(-3, 6) if case % 3 == 0 else rng.integers(6, 300))
        start = min(int(fields[0]), end)
        mutated = lines.copy()
        mutated[k] = f"{start} {end} {fields[2]} {fields[3]}"
        target.write_text("\n".join(mutated))
        past = (end + 1) / 100 > seconds + formats.TIME_TOLERANCE_S
        try:
            words, _ = step2_oracle.reference_words(root, [utt], 25.0)
        except PipelineError as e:
            assert past, (case, end, str(e))
            assert str(e).startswith(f"{target}:{k + 1}:") and "past the end of its utterance" in str(e), str(e)
            outcomes["error"] += 1
            continue
        assert not past, (case, end)
        assert all(w["end"] <= utt["end"] + formats.TIME_TOLERANCE_S + 1e-9 for w in words), case
        outcomes["ok"] += 1
    assert outcomes["error"] >= 15 and outcomes["ok"] >= 5, outcomes


# --------------------------------------------------------------------------- labels.json sessions


def test_fuzz_labels_json_session_must_match_an_iemocap_name(tmp_path):
    """An IEMOCAP-named dialog given another session than its name's is refused (it would change
    fold); a dialog with any other name (a CSV corpus) may have any session."""
    work = tmp_path / "work"
    step1.main(["--iemocap", str(MINI), "--work", str(work)])
    valid = json.loads((work / "labels.json").read_text())
    rng = np.random.default_rng(15)
    for case in range(10):
        data = copy.deepcopy(valid)
        d = sorted(data["dialogs"])[int(rng.integers(len(data["dialogs"])))]
        own = formats.session_of(d)
        data["dialogs"][d]["session"] = int(rng.choice([s for s in range(1, 7) if s != own]))
        (work / "labels.json").write_text(json.dumps(data))
        with pytest.raises(PipelineError) as e:
            formats.load_labels(work)
        assert str(e.value).startswith(f"{work / 'labels.json'}: dialog {d}: 'session'"), str(e.value)
        # the same dialog under a non-IEMOCAP name keeps whatever session it is given
        data["dialogs"][f"call_{case}"] = data["dialogs"].pop(d)
        for u in data["dialogs"][f"call_{case}"]["utterances"]:
            u["id"] = u["id"].replace(d, f"call_{case}")
        (work / "labels.json").write_text(json.dumps(data))
        assert formats.load_labels(work)["dialogs"][f"call_{case}"]["session"] != own


# --------------------------------------------------------------------------- long lines in error messages


def test_a_megabyte_line_is_quoted_in_at_most_about_120_characters(tmp_path):
    """Every reader that quotes a bad line quotes at most about 120 characters of it."""
    huge = "Ses01F_impro01_F000 " + "x" * 1_000_000
    cases = []
    for name, rel in (("wdseg", WDSEG), ("trans", TRANS), ("emo", EMO)):
        root = tmp_path / name / "IEMOCAP_full_release"
        shutil.copytree(MINI, root)
        text = (root / rel).read_text(encoding="latin-1")  # the fixture has cp1252 bytes, as IEMOCAP
        if rel == WDSEG:
            (root / rel).write_text(text.replace("SFrm", huge, 1), encoding="latin-1")
            cases.append((lambda path=root / rel: formats.parse_wdseg(path), root / rel))
        else:
            (root / rel).write_text(
                text + "\n[1.0 - 2.0]\t" + huge + "\n" if rel == EMO else huge + "\n" + text, encoding="latin-1"
            )
            cases.append((lambda r=root: step1.build_labels(r), root / rel))
    rttm = tmp_path / "a.rttm"
    rttm.write_text("SPEAKER x 1 0.0 1.0 <NA> <NA> A <NA> <NA>\n" + huge + "\n")
    cases.append((lambda: formats.read_rttm(rttm), rttm))
    for run, path in cases:
        with pytest.raises(PipelineError) as e:
            run()
        message = str(e.value)
        assert str(path) in message and "\n" not in message, message[:300]
        assert len(message) < len(str(path)) + 400, (path, len(message))
    assert cli.quote("y" * 10) == repr("y" * 10) and len(cli.quote("y" * 10**6)) < 160


# --------------------------------------------------------------------------- temporary files of a killed step


def killed_write(path) -> Path:
    """Start a process that writes `path` with common.fileio.atomic_write_bytes, kill -9 it mid-write (after
    its temporary file exists, before the rename) -> that temporary file."""
    import os
    import signal
    import subprocess
    import sys
    import time

    code = (
        "import os, sys, time; sys.path.insert(0, sys.argv[2]); import common.fileio; "
        "os.replace = lambda *a: time.sleep(600); common.fileio.atomic_write_bytes(sys.argv[1], b'x' * 1000)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(path), str(Path(utils.__file__).parent)])
    for _ in range(600):
        tmp = list(Path(path).parent.glob(f".{Path(path).name}.*.tmp"))
        if tmp and tmp[0].stat().st_size == 1000:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(tmp) == 1 and f".{proc.pid}." in tmp[0].name, tmp
    return tmp[0]


def test_no_tmp_survives_a_kill_9_and_a_rerun(step3_work, tmp_path, monkeypatch, capsys):
    """A write killed with kill -9 leaves its temporary file; the next run of the step removes it
    (align.py, step 1, and the shared helper); a live writer's temporary file is left alone."""
    work = step3_work
    fileio.atomic_write_json(work / "p" / "asr" / f"{DIALOG}.json", valid_asr())
    formats.write_rttm(work / "p" / "diarization" / f"{DIALOG}.rttm", DIALOG, TURNS)
    stale = [killed_write(work / "p" / "aligned-p1.5" / "cache" / f"{DIALOG}.pt")]
    stale.append(stale[0].with_name(f".{DIALOG}.json.{stale[0].name.split('.')[-3]}.k2ll3d00.tmp"))
    stale[1].parent.mkdir(parents=True, exist_ok=True)
    stale[1].write_bytes(stale[0].read_bytes())
    assert run_align(work, monkeypatch, capsys) == "ok"
    assert not any(p.exists() for p in stale) and not list(work.rglob("*.tmp"))
    # a kill between a cache and its checksum file: a plain re-run (no --overwrite) redoes that dialog
    cache = work / "p" / "aligned-p1.5" / "cache" / f"{DIALOG}.pt"
    fileio.checksum_path(cache).unlink()
    align.main(["--work", str(work), "--pipe", "p", "--variant", "aligned"])
    assert "wrote 1 dialogs" in capsys.readouterr().out and fileio.verified_sha256(cache)
    # step 1 on its WORK; a temporary file of a live process (ours: a parent's) stays
    w1 = tmp_path / "w1"
    dead = killed_write(w1 / "labels.json")
    import os

    live = w1 / f".labels.json.{os.getppid()}.abcdefgh.tmp"
    live.write_bytes(b"in flight")
    step1.main(["--iemocap", str(MINI), "--work", str(w1)])
    assert not dead.exists() and live.exists() and (w1 / "labels.json").is_file()
    assert fileio.remove_stale_temp(w1) == 0 and live.exists()
