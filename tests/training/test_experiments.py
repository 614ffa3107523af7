"""The seeded complex-vs-real runner: a tiny grid really trains, tabulates mean ± std, and resumes."""
from __future__ import annotations

import json

from training.experiments import main, table

from .test_cifar_data import write_cifar10_folder


def test_cifar_grid_runs_every_seed_and_model_then_resumes(tmp_path, capsys):
    data = write_cifar10_folder(tmp_path / "data", per_batch=32)  # 160 images
    out = tmp_path / "grid"
    argv = ["cifar", "--variant", "DN", "--blocks-per-stage", "1", "--epochs", "1", "--seeds", "0,1",
            "--threads", "1", "--data", str(data), "--out", str(out), "--train-args", "--val-size 32 --batch-size 32"]
    main(argv)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["arch"], r["seed"]) for r in rows] == [("complex_resnet", 0), ("real_resnet", 0),
                                                      ("complex_resnet", 1), ("real_resnet", 1)]
    for r in rows:
        assert 0.0 <= r["val_accuracy"] <= 1.0 and r["params"] > 0 and "--seed" in r["command"]
        assert (out / f"{r['arch']}_s{r['seed']}" / "model.pt").exists()
    text = table(out)
    assert "| complex_resnet |" in text and "| real_resnet |" in text and "±" in text
    capsys.readouterr()
    main(argv)  # everything done: nothing re-runs, the table is printed again
    assert len((out / "results.jsonl").read_text().splitlines()) == 4
    assert "| real_resnet |" in capsys.readouterr().out
