"""benchmarks/soak.py end to end, very short: a real ``python -m service`` subprocess with the tiny test models,
two clients of mixed traffic (good, malformed, oversized heads, disconnects, polls, live streams) for 15 s, RSS sampled,
server stopped. The verdict's growth limit is loose here: the run checks the machinery, not for leaks."""
from __future__ import annotations

import json

from benchmarks import soak
from tests.service.tiny_models import make_checkpoints


def test_soak_smoke(tmp_path, capsys, monkeypatch):
    # the server subprocess inherits these: no warm-up (a faster start)
    monkeypatch.setenv("DCN_WARMUP", "false")
    classifier, transcriber = make_checkpoints(tmp_path / "ckpt")
    out = tmp_path / "soak.json"
    code = soak.main(["--minutes", "0.25", "--clients", "2", "--classifier", str(classifier), "--transcriber",
                      str(transcriber), "--preload", "tests.service.tiny_models", "--max-growth-mb", "300",
                      "--startup-timeout", "60", "--json", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "verdict: PASS" in text and "p99 ms" in text, text
    report = json.loads(out.read_text())
    assert len(report["rss_samples"]) >= 5 and all(v > 0 for _, v in report["rss_samples"])
    assert report["checks"] == {"rss_growth": True, "server_alive": True, "no_500": True, "streams": True,
                                "shutdown_streams": True}
    assert report["server_tracebacks"] == 0
    kinds = {k.split()[0] for k in report["statuses"]}
    assert {"classify", "transcribe", "poll", "stream_live"} <= kinds, report["statuses"]
    assert any(k.startswith("classify 200") for k in report["statuses"]), report["statuses"]
    assert sum(report["statuses"].values()) == sum(row["requests"] for row in report["table"])
