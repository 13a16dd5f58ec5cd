"""`medray demo --quick`: every stage of the full demo through the same code path (local
S3 server, import, training of the three families, a search, the gate, Serve, the
report), with 2 epochs and 2 trials, as a newcomer runs it without the source files and
without a network, where every dataset but scikit-learn's is a synthetic stand-in.

(The same run on the real files costs the suite as much again and exercises no other
code: that the real files are found and nothing is then called synthetic is checked in
tests/train/data/test_synthetic.py, and the importers on the real files in
test_import_real_data.py.)"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from support.project import PROJECT

pytestmark = pytest.mark.integration

STAND_INS = {"breastmnist", "ecg200", "cleveland"}


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    """`medray demo --quick --json` run as a newcomer without the files or a network:
    (its JSON, its stderr, the report's folder)."""
    tmp_path = tmp_path_factory.mktemp("demo")
    sources = tmp_path / "sources"
    sources.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS", "MEDRAY_STORAGE"))}
    # Downloads fail at once, as on a machine without a network: every URL goes to a
    # closed local port (Ray's gRPC ignores these; 127.0.0.1 is reached directly).
    env.update(MEDRAY_DATA_SOURCES=str(sources), MEDRAY_LOG_DIR=str(tmp_path / "logs"),
               http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9",
               no_proxy="127.0.0.1,localhost", NO_PROXY="127.0.0.1,localhost")
    report_dir = tmp_path / "report"
    result = subprocess.run([sys.executable, "-m", "medray.cli", "demo", "--quick", "--json", "--report",
                             str(report_dir)], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout), result.stderr, report_dir


def test_quick_demo_without_sources_or_network(quick_demo):
    out, stderr, report_dir = quick_demo

    assert out["storage"].startswith("s3://medray-demo/")  # the local S3 server, not a folder
    rows = {r["dataset"].removesuffix("_synthetic"): r for r in out["results"]}
    assert set(rows) == {"wdbc"} | STAND_INS
    assert {r["model"].split(":")[0] for r in rows.values()} == {"image", "signal", "tabular"}
    for row in rows.values():
        assert 0.0 <= row["test_auroc"] <= 1.0 and row["published"]
        assert row["promotion"].startswith(("v", "refused: "))
    assert "tuned" in rows["wdbc"]["model"] and rows["wdbc"]["version"] == 1
    assert np.isfinite([r["test_auroc"] for r in rows.values()]).all()

    # What a person sees: medray's stage lines, epoch and trial lines, nothing of Ray's.
    terminal = stderr.splitlines()
    assert terminal[0].startswith("medray: log: ")
    assert all(line.startswith("medray: ") for line in terminal), [l for l in terminal if not l.startswith("medray")]
    assert "[8/8" in stderr and "trial 2/2" in stderr and "epoch   2/2" in stderr
    assert "Reporting training result" not in stderr and "pid=" not in stderr
    assert len(terminal) + len(out["text"].splitlines()) <= 150
    log_file = terminal[0].removeprefix("medray: log: ").split(" ")[0]
    assert "Reporting training result" in open(log_file).read()  # Ray's output is kept, in the log
    assert "test AUROC (95% CI)" in out["text"] and "Street et al. 1993" in out["text"]  # beside published

    # Serving: every promoted model answered its whole test split; the cases shown are
    # true to the answers, and a bad request was refused with a reason.
    # A CT slice sent to the served image model (if one passed its gate): unlike its
    # training data, so referred rather than answered.
    samples = [s for s in out["served"]["samples"] if not s.get("out_of_distribution")]
    for ct in [s for s in out["served"]["samples"] if s.get("out_of_distribution")]:
        (ct_answer,) = ct["answer"]["predictions"]
        assert ct_answer["out_of_distribution"] is True and ct_answer["refer_to_clinician"] is True
        assert "refer to clinician" in ct["line"]
    answered = [s for s in samples[:-1] if s["status"] == 200]
    assert {s["model"] for s in answered} == {r["dataset"] for r in rows.values() if r["version"]}
    for sample in answered:
        assert sample["answered"] + sample["referred"] == sample["test_cases"] > 0
        assert sample["right"] <= sample["answered"]
        for case in sample["cases"]:
            prediction = case["prediction"]
            assert sum(prediction["probabilities"].values()) == pytest.approx(1.0)
            assert case["truth"] in prediction["probabilities"]  # named as the model names its classes
            if case["kind"] == "referred":
                assert prediction["refer_to_clinician"] and (len(prediction["prediction_set"]) > 1
                                                      or prediction["out_of_distribution"])
            else:
                assert (prediction["label"] == case["truth"]) == (case["kind"] == "right")
    assert samples[-1]["status"] == 422 and samples[-1]["answer"]["detail"].startswith("instances[0]")

    # The report: HTML with the plots it names, next to the results as JSON.
    page = (report_dir / "report.html").read_text()
    images = [part.split('"')[0] for part in page.split('<img src="')[1:]]
    assert len(images) >= 4 * 3
    for name in images:
        assert (report_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Search demo-search" in page and json.loads((report_dir / "results.json").read_text())["results"]

    # The stand-ins are called synthetic wherever a result appears.
    assert sorted(out["synthetic"]) == sorted(STAND_INS)
    for name in STAND_INS:
        assert rows[name]["synthetic"] and rows[name]["dataset"] == f"{name}_synthetic"
        assert f"{name}_synthetic (SYNTHETIC)" in out["text"]
        assert f"{name}_synthetic (synthetic)" in page
    assert not rows["wdbc"]["synthetic"]  # scikit-learn's copy is real, and needs no network
    assert "could not download" in stderr  # it tried, as a newcomer's machine would


def test_the_report_renders_in_a_browser_with_every_plot(quick_demo):
    """The report as a browser shows it (headless Chromium): every plot loads, and the
    results and the trials are tables."""
    from support.browser import images_once_loaded, screenshot, start_chromium

    out, _, report_dir = quick_demo
    page = (report_dir / "report.html").read_text()
    browser = start_chromium()
    try:
        browser.get((report_dir / "report.html").as_uri())
        loaded = images_once_loaded(browser)
        assert len(loaded) == page.count("<img ") >= 5 * 3 and all(loaded)
        assert browser.execute_script("return document.querySelectorAll('#results tbody tr').length") == len(
            out["results"])
        assert browser.execute_script("return document.querySelectorAll('#trials tbody tr').length") >= 2
        headers = browser.execute_script("return [...document.querySelectorAll('#results th')].map(h => h.textContent)")
        assert {"AUROC (95% CI)", "Brier", "calibration slope", "published"} <= set(headers)
        screenshot(browser, "demo-report", folder="demo-report")
    finally:
        browser.quit()
