"""bulk/ without Ray: the per-worker callables (the CLI's bytes, skips, error rows), the manifest, input listing."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.bulk_throughput import differing_outputs, make_recordings, run_cli
from bulk.job import find_files, plan
from bulk.manifest import Manifest, read_manifest
from bulk.workers import Classifier, Transcriber
from models.cli import output_paths
from models.inference import AUDIO_EXTENSIONS, DEFAULT_CHECKPOINT, load_transcriber, resolve_decoding

ROOT = Path(__file__).resolve().parents[2]
CLASSIFIER = ROOT / "models" / "checkpoints" / "cifar10_complex.pt"


def columns(rows: list[dict]) -> dict:
    """Input rows as Ray Data hands a batch to a worker: one numpy array per column."""
    return {k: np.asarray([r[k] for r in rows]) for k in rows[0]}


def as_rows(batch: dict) -> list[dict]:
    """A worker's output columns as the driver's rows (plain Python values, as ``Dataset.iter_rows`` + job.py)."""
    return [{k: x.item() if hasattr(x, "item") else x for k, x in zip(batch, v)} for v in zip(*batch.values())]


def transcriber(decoding: dict | None = None, **kw) -> Transcriber:
    model, meta = load_transcriber(DEFAULT_CHECKPOINT)
    return Transcriber(str(DEFAULT_CHECKPOINT), resolve_decoding(model, meta, **(decoding or {})), threads=1, **kw)


def test_transcriber_writes_the_clis_bytes_and_an_error_row(tmp_path):
    make_recordings(tmp_path / "in", 3, 6.0, corrupt=1)
    (tmp_path / "in" / "empty.wav").write_bytes(b"")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        failed, _ = run_cli([str(tmp_path / "in")], tmp_path / "cli", ["mid", "csv", "npz"])
    files = find_files([str(tmp_path / "in")], AUDIO_EXTENSIONS)
    outs = output_paths([Path(f) for f in files], tmp_path / "out", ["mid", "csv", "npz"])
    rows = plan(files, outs, tmp_path / "out" / "manifest.jsonl")
    worker = transcriber(batch_size=3)  # windows of the 3 files share forward passes of 3
    result = as_rows(worker(columns(rows)))
    assert [r["path"] for r in result if r["status"] == "failed"] == sorted(failed)
    assert {r["status"] for r in result} == {"done", "failed"} and len(result) == 5
    broken = next(r for r in result if r["path"].endswith("broken0.wav"))
    assert "cannot decode" in broken["reason"] and broken["windows"] == 0 and len(broken["sha256"]) == 64
    assert sum(r["model_loads"] for r in result) == 1 and sum(r["windows"] for r in result) == 6
    assert len(list((tmp_path / "cli").iterdir())) == 9
    assert differing_outputs(tmp_path / "cli", tmp_path / "out") == []
    assert not list((tmp_path / "out").glob(".*part*"))  # temporary files renamed or removed

    # Done before with the same bytes and outputs present: skipped, and a fresh worker loads no model.
    manifest = Manifest(tmp_path / "out" / "manifest.jsonl")
    for r in result:
        manifest.append({**r, "outputs": json.loads(r["outputs"])})
    manifest.close()
    again = transcriber()
    rerun = as_rows(again(columns(plan(files, outs, tmp_path / "out" / "manifest.jsonl"))))
    assert [r["status"] for r in rerun].count("skipped") == 3 and again.model is None
    assert sum(r["windows"] for r in rerun) == 0

    # Changed bytes or a deleted output: done again.
    names = [Path(f).name for f in files]
    assert names == ["broken0.wav", "empty.wav", "rec000.wav", "rec001.wav", "rec002.wav"]
    make_recordings(tmp_path / "in", 1, 3.0, seed=7)  # rec000.wav, new content
    Path(outs[3][0]).unlink()  # rec001.mid
    rows = plan(files, outs, tmp_path / "out" / "manifest.jsonl")
    third = {Path(r["path"]).name: r["status"] for r in as_rows(transcriber()(columns(rows)))}
    assert third == {"broken0.wav": "failed", "empty.wav": "failed", "rec000.wav": "done", "rec001.wav": "done",
                     "rec002.wav": "skipped"}


def test_manifest_last_row_wins_and_a_torn_line_is_ignored(tmp_path):
    m = Manifest(tmp_path / "m.jsonl")
    m.append({"path": "a", "status": "failed"})
    m.append({"path": "a", "status": "done", "sha256": "x" * 64, "seconds": 2.0})
    m.close()
    with open(tmp_path / "m.jsonl", "a") as f:
        f.write('{"path": "b", "sta')  # a driver killed mid-line
    rows = read_manifest(tmp_path / "m.jsonl")
    assert list(rows) == ["a"] and rows["a"]["status"] == "done"
    assert plan(["a", "b"], [[], []], tmp_path / "m.jsonl")[0]["prev_sha256"] == "x" * 64


def test_find_files_folders_globs_missing_and_urls(tmp_path):
    make_recordings(tmp_path / "d" / "sub", 2, 0.5)
    (tmp_path / "d" / "notes.txt").write_text("x")
    found = find_files([str(tmp_path / "d"), str(tmp_path / "d/sub/*.wav"), str(tmp_path / "missing.wav")],
                       AUDIO_EXTENSIONS)
    assert [Path(f).name for f in found] == ["rec000.wav", "rec001.wav", "missing.wav"]
    pytest.importorskip("pyarrow")
    urls = find_files([(tmp_path / "d").as_uri()], AUDIO_EXTENSIONS)
    assert urls == [(tmp_path / "d" / "sub" / n).as_uri() for n in ("rec000.wav", "rec001.wav")]


@pytest.mark.skipif(not CLASSIFIER.is_file(), reason="shipped classifier checkpoint missing")
def test_classifier_rows(tmp_path):
    from models.checkpoint import load_checkpoint
    from models.cifar import classify
    from service.decode import decode_image
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(tmp_path / f"img{i}.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    files = find_files([str(tmp_path)], (".png",))
    worker = Classifier(str(CLASSIFIER), (32, 32), top_k=3)
    bad = [str(tmp_path / "bad.png")]
    row, = as_rows(worker(columns(plan(bad, [[]], tmp_path / "m.jsonl"))))
    assert row["status"] == "failed" and row["reason"] and worker.model is None  # no model load for a bad file
    rows = {r["path"]: r for r in as_rows(worker(columns(plan(files, [[] for _ in files], tmp_path / "m.jsonl"))))}
    assert rows[bad[0]]["status"] == "failed" and sum(r["model_loads"] for r in rows.values()) == 1
    model, meta = load_checkpoint(CLASSIFIER)
    img = decode_image((tmp_path / "img1.png").read_bytes(), tuple(meta.get("input_size", (32, 32))), 10**8)
    probs = classify(model, img[None])[0]
    row = rows[str(tmp_path / "img1.png")]
    assert row["status"] == "done"
    assert json.loads(row["labels"])[0] == meta["class_names"][int(probs.argmax())]
    p = json.loads(row["probabilities"])
    assert len(p) == 3 and p == sorted(p, reverse=True) and abs(p[0] - float(probs.max())) < 1e-5


def test_a_url_input_gives_the_same_outputs_as_its_local_path(tmp_path):
    pytest.importorskip("pyarrow")
    f, = make_recordings(tmp_path / "in", 1, 3.0)
    for name, given in (("local", str(f)), ("url", f.as_uri())):
        outs = output_paths([Path(given)], tmp_path / name, ["mid", "npz"])
        row, = as_rows(transcriber()(columns(plan([given], outs, tmp_path / name / "m.jsonl"))))
        assert row["status"] == "done" and row["path"] == given
    assert differing_outputs(tmp_path / "local", tmp_path / "url") == []
    assert sorted(p.name for p in (tmp_path / "url").iterdir()) == ["rec000.mid", "rec000.npz"]


def test_decoding_options_and_every_format_give_the_clis_bytes(tmp_path):
    """--monophonic, a frequency filter, --midi-tempo and the .json / .notes.json / .sonified.wav formats."""
    f, = make_recordings(tmp_path / "in", 1, 3.0)
    formats = ["mid", "json", "notes", "wav"]
    with contextlib.redirect_stdout(io.StringIO()):
        failed, _ = run_cli([str(f)], tmp_path / "cli", formats,
                            options=("--monophonic", "--minimum-frequency", "100", "--midi-tempo", "90"))
    assert failed == []
    outs = output_paths([f], tmp_path / "out", formats)
    worker = transcriber({"monophonic": True, "minimum_frequency": 100.0}, midi_tempo=90.0)
    row, = as_rows(worker(columns(plan([str(f)], outs, tmp_path / "out" / "m.jsonl"))))
    assert row["status"] == "done" and row["notes"] > 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.name != "m.jsonl") == sorted(
        p.name for p in (tmp_path / "cli").iterdir()) == ["rec000.json", "rec000.mid", "rec000.notes.json",
                                                          "rec000.sonified.wav"]
    assert differing_outputs(tmp_path / "cli", tmp_path / "out") == []
    notes = json.loads((tmp_path / "out" / "rec000.notes.json").read_text())
    assert "probabilities" not in notes and notes["decoding"]["monophonic"] is True


@pytest.mark.parametrize("options, message", [
    (["--min-note-length", "0.1", "--minimum-note-length", "100"], "not both"),
    (["--pitch-bends", "--checkpoint", str(Path(__file__).resolve().parents[2] / "models" / "checkpoints" /
                                           "musicnet_complex_v2.pt")], "pitch_bends needs"),  # v2: no fine pitch
    (["--minimum-frequency", "900", "--maximum-frequency", "100"], "exceeds"),
])
def test_conflicting_options_are_a_usage_error_before_any_job(tmp_path, capsys, options, message):
    from bulk.__main__ import main
    with pytest.raises(SystemExit) as e:
        main(["transcribe", str(tmp_path), "--out", str(tmp_path / "out"), *options])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
