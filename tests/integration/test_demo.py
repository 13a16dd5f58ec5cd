"""`medray demo --quick`: every stage of the full demo through the same code path (local
S3 server, import of the real files, training of the three families, a search, the
gate, Serve, the report), with 2 epochs and 2 trials."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import PROJECT

pytestmark = pytest.mark.integration


def test_quick_demo_end_to_end(tmp_path, shared_data):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS", "MEDRAY_STORAGE"))}
    env["MEDRAY_DATA_SOURCES"] = str(shared_data)
    report_dir = tmp_path / "report"
    result = subprocess.run([sys.executable, "-m", "cluster.cli", "demo", "--quick", "--json", "--report",
                             str(report_dir)], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    out = json.loads(result.stdout)

    assert out["storage"].startswith("s3://medray-demo/")  # the local S3 server, not a folder
    assert out["synthetic"] == []  # the real files were used
    rows = {r["dataset"]: r for r in out["results"]}
    assert set(rows) == {"breastmnist", "ecg200", "cleveland", "wdbc"}
    assert {r["model"].split(":")[0] for r in rows.values()} == {"image", "signal", "tabular"}
    for row in rows.values():
        assert 0.0 <= row["test_auroc"] <= 1.0 and row["published"]
        assert row["promotion"].startswith(("v", "refused: "))
    assert "tuned" in rows["wdbc"]["model"] and rows["wdbc"]["version"] == 1

    # The stage lines and the table are what a person sees.
    assert "[8/8" in result.stderr and "ASHA" in result.stderr
    assert "test AUROC (95% CI)" in out["text"] and "MedMNIST v2" in out["text"]

    # Serving answered every promoted model, and refused the bad request with a reason.
    samples = out["served"]["samples"]
    answered = [s for s in samples if s["status"] == 200]
    assert {s["model"] for s in answered} == {name for name, r in rows.items() if r["version"]}
    for sample in answered:
        prediction = sample["answer"]["predictions"][0]
        assert sum(prediction["probabilities"].values()) == pytest.approx(1.0)
    assert samples[-1]["status"] == 422 and samples[-1]["answer"]["detail"].startswith("instances[0]")

    # The report: HTML with the plots it names, next to the results as JSON.
    page = (report_dir / "report.html").read_text()
    images = [part.split('"')[0] for part in page.split('<img src="')[1:]]
    assert len(images) >= 4 * 3
    for name in images:
        assert (report_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Search demo-search" in page and json.loads((report_dir / "results.json").read_text())["results"]
    assert np.isfinite([r["test_auroc"] for r in rows.values()]).all()
