"""The terminal shows medray's lines; Ray's output and tracebacks go to the log file."""

import json
import logging
import os
import subprocess
import sys

from support.project import PROJECT

from medray.cluster import console


def medray_python(code: str, tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MEDRAY_LOG_DIR": str(tmp_path / "logs"), "MEDRAY_STORAGE": str(tmp_path / "store")}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=PROJECT, env=env, capture_output=True, text=True,
                          timeout=120)


def log_file_of(stderr: str) -> str:
    first = stderr.splitlines()[0]
    assert first.startswith("medray: log: "), stderr
    return first.removeprefix("medray: log: ").split(" ")[0]


def test_an_unexpected_error_is_one_line_with_its_traceback_in_the_log(tmp_path):
    code = ("import sys, medray.cli as cli, medray.cli.train as train_commands\n"
            "def boom(args):\n"
            "    print('noise from a library')\n"
            "    raise RuntimeError('the first line\\nand a second one')\n"
            "train_commands.evaluate = boom\n"
            "sys.exit(cli.main(sys.argv[1:]))\n")
    result = medray_python(code, tmp_path, "evaluate", "some-run")
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    log_file = log_file_of(result.stderr)
    assert lines[1:] == [f"medray: failed: RuntimeError: the first line (details: {log_file})"]
    assert result.stdout == ""
    logged = open(log_file).read()
    assert "noise from a library" in logged and "Traceback" in logged and "and a second one" in logged


def test_a_user_error_is_one_line_and_status_2(tmp_path):
    result = medray_python("import sys, medray.cli as cli; sys.exit(cli.main(sys.argv[1:]))", tmp_path,
                           "train", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = result.stderr.splitlines()[1:]
    assert len(errors) == 1 and errors[0].startswith("medray: error: ") and "missing.yaml" in errors[0]


def test_commands_without_ray_keep_no_log_file(tmp_path):
    result = medray_python("import sys, medray.cli as cli; sys.exit(cli.main(sys.argv[1:]))", tmp_path,
                           "data", "list", "--json")
    assert result.returncode == 0 and "medray: log:" not in result.stderr
    assert json.loads(result.stdout)["datasets"] == []
    assert not (tmp_path / "logs").exists()


def test_worker_progress_lines_are_rendered_and_the_rest_passed_on(caplog, monkeypatch):
    from ray._private import worker as ray_worker

    dispatcher = ray_worker.global_worker_stdstream_dispatcher
    forwarded = []
    monkeypatch.setattr(dispatcher, "handlers", [("ray_print_logs", forwarded.append)])
    monkeypatch.setattr(console.CONSOLE, "epoch_every", 1)
    console.route_worker_output()
    console.route_worker_output()  # twice: still one router, not one wrapped in another
    assert len(dispatcher.handlers) == 1

    event = {"epoch": 4, "epochs": 10, "train_loss": 0.5, "val_loss": 0.25, "val_auroc": 0.875,
             "val_accuracy": None, "epoch_seconds": 1.5, "resumed_from_epoch": None, "stopped_early": False}
    line = console.PROGRESS_MARK + json.dumps(event)
    with caplog.at_level(logging.INFO, logger="medray.progress"):
        dispatcher.emit({"pid": 7, "is_err": False, "lines": ["Reporting training result 5", line]})
    assert [b["lines"] for b in forwarded] == [["Reporting training result 5"]]
    assert [r.getMessage() for r in caplog.records] == [
        "epoch   5/10  train_loss 0.5000  val_loss 0.2500  val_auroc 0.8750  val_acc   n/a  1.5s"]


def test_every_kth_epoch_line_and_the_last(caplog, monkeypatch):
    monkeypatch.setattr(console.CONSOLE, "epoch_every", 10)
    with caplog.at_level(logging.INFO, logger="medray.progress"):
        for epoch in range(25):
            console.render_progress({"epoch": epoch, "epochs": 25, "stopped_early": False})
    assert [int(r.getMessage().split()[1].split("/")[0]) for r in caplog.records] == [1, 10, 20, 25]


def test_a_long_ray_error_is_summarized_with_the_rest_in_the_log(tmp_path, monkeypatch):
    log_path = tmp_path / "medray.log"
    with open(log_path, "w") as log_file:
        monkeypatch.setattr(console.CONSOLE, "log_file", log_file)
        monkeypatch.setattr(console.CONSOLE, "log_path", log_path)
        assert console.summarized("one line only") == "one line only"
        assert console.summarized("TrainingFailedError: worker 0\n  File x\nValueError: y") == \
            f"TrainingFailedError: worker 0 (details: {log_path})"
    assert "ValueError: y" in log_path.read_text()
