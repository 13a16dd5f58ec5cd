"""The demo's report: the results table beside the published numbers, each served
model's answers on its test split, and report.html with the plots (results.json beside)."""

from __future__ import annotations

import html
import json
import time
from pathlib import Path
from typing import Any

from medray.cluster.storage import Storage

PLOTS = ("roc.png", "reliability.png", "confusion_matrix.png", "decision_curve.png", "learning_curves.png",
         "ood_scores.png")


def results_table(results: list[dict[str, Any]]) -> str:
    names = [r["dataset"] + (" (SYNTHETIC)" if r["synthetic"] else "") for r in results]
    width = max([len("dataset"), *map(len, names)]) + 2
    lines = [f"{'dataset':<{width}}{'model':<34}{'test AUROC (95% CI)':<24}{'acc':>6}  {'registry':<32}published"]
    for name, r in zip(names, results):
        auroc = _auroc_text(r)
        accuracy = "n/a" if r["test_accuracy"] is None else f"{r['test_accuracy']:.3f}"
        published = "(not comparable: synthetic data)" if r["synthetic"] else r["published"]
        lines.append(f"{name:<{width}}{r['model']:<34}{auroc:<24}{accuracy:>6}  {r['promotion']:<32}{published}")
    return "\n".join(lines)


def _auroc_text(result: dict[str, Any]) -> str:
    """Test AUROC with its 95% interval, as both tables show it."""
    ci = result["test_auroc_ci"] or [None, None]
    if result["test_auroc"] is None:
        return "n/a"
    return f"{result['test_auroc']:.3f}" + (f" ({ci[0]:.2f}-{ci[1]:.2f})" if ci[0] is not None else "")


def served_cases(name: str, predictions: list[dict[str, Any]], truths: list[str]) -> dict[str, Any]:
    """How a served model did on its test split, and the lines that show it: counts, then
    one case of each kind there is (right, referred, wrong)."""
    referred = [i for i, p in enumerate(predictions) if p.get("refer_to_clinician")]
    answered = [i for i, p in enumerate(predictions) if not p.get("refer_to_clinician")]
    right = [i for i in answered if predictions[i]["label"] == truths[i]]
    wrong = [i for i in answered if predictions[i]["label"] != truths[i]]
    version = predictions[0]["version"] if predictions else None
    share = f", {len(right) / len(answered):.0%} of them right" if answered else ""
    lines = [f"  {name} v{version}, {len(truths)} test cases: {len(answered)} answered{share}; "
             f"{len(referred)} referred to a clinician (prediction set of more than one class, or out of "
             f"distribution: {sum(bool(p.get('out_of_distribution')) for p in predictions)})"]
    cases = []
    for kind, pool in (("right", right), ("referred", referred), ("wrong", wrong)):
        if not pool:
            continue
        i = pool[0]
        p = predictions[i]
        if kind == "referred":
            why = " (out of distribution)" if p.get("out_of_distribution") else ""
            answer = f"set {{{', '.join(p['prediction_set'])}}}{why} -> refer to clinician"
        else:
            answer = f"{p['label']} (p {p['calibrated_probabilities'][p['label']]:.2f}) -> {kind.upper() if kind == 'wrong' else kind}"
        lines.append(f"    case {i:>3}: true {truths[i]:<22} answer {answer}")
        cases.append({"case": i, "kind": kind, "truth": truths[i], "prediction": p})
    return {"line": "\n".join(lines), "cases": cases, "test_cases": len(truths), "answered": len(answered),
            "referred": len(referred), "right": len(right)}


CAPTIONS = {"roc.png": "ROC with its 95% bootstrap band and the operating point",
            "reliability.png": "reliability: predicted against observed, with a histogram of predictions",
            "confusion_matrix.png": "confusion matrix at the threshold: counts and row percentages",
            "decision_curve.png": "decision curve: net benefit against treat all and treat none",
            "learning_curves.png": "learning curves, the selected epoch marked",
            "ood_scores.png": "out-of-distribution scores and the threshold"}
STYLE = """body{font:15px/1.45 system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#0f172a}
table{border-collapse:collapse;margin:0.5em 0 1.5em}th,td{border:1px solid #cbd5e1;padding:4px 8px;text-align:left;
vertical-align:top}th{background:#f1f5f9}td.number{text-align:right;font-variant-numeric:tabular-nums}
figure{display:inline-block;margin:4px;vertical-align:top;width:370px}figcaption{font-size:0.85em;color:#475569}
pre{background:#f1f5f9;padding:1em;overflow-x:auto}.synthetic{color:#b45309}"""


def _cell(value: Any, digits: int = 3) -> str:
    return '<td class="number">' + ("n/a" if value is None else f"{value:.{digits}f}") + "</td>"


def _results_rows(results: list[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        auroc = _auroc_text(r)
        published = "(not comparable: synthetic data)" if r["synthetic"] else r["published"]
        name = html.escape(r["dataset"]) + (' <span class="synthetic">(synthetic)</span>' if r["synthetic"] else "")
        rows.append(f"<tr><td>{name}</td><td>{html.escape(r['model'])}</td><td class=\"number\">{auroc}</td>"
                    f"{_cell(r['test_accuracy'])}{_cell(r.get('test_auprc'))}{_cell(r.get('test_brier'))}"
                    f"{_cell(r.get('test_calibration_slope'), 2)}<td>{html.escape(r['promotion'])}</td>"
                    f"<td>{html.escape(published)}</td></tr>")
    return "".join(rows)


def write_report(storage: Storage, folder: Path, results: list[dict], search: dict, served: dict,
                 synthetic: list[str]) -> Path:
    """report.html: the results as a table beside the published numbers, each model's
    plots, the search's trials, the serving answers; the plots copied beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    sections = []
    for r in results:
        run_key = storage.key_of(r["run"])
        plots = []
        report_key = f"{run_key}/report" if storage.exists(f"{run_key}/report/roc.png") else None
        if report_key is None and r["version"]:  # a search: the registry version holds the plots
            report_key = f"models/{r['dataset']}/versions/{r['version']}"
        for plot in PLOTS:
            if report_key and storage.exists(f"{report_key}/{plot}"):
                target = folder / f"{r['dataset']}-{plot}"
                target.write_bytes(storage.read_bytes(f"{report_key}/{plot}"))
                plots.append(f'<figure><img src="{target.name}" width="360" alt="{plot[:-4]}">'
                             f"<figcaption>{CAPTIONS[plot]}</figcaption></figure>")
        published = "not comparable: synthetic data" if r["synthetic"] else r["published"]
        sections.append(f"<h3>{html.escape(r['dataset'])}{' (synthetic)' if r['synthetic'] else ''}: "
                        f"{html.escape(r['model'])}</h3><p>registry: {html.escape(r['promotion'])}; published: "
                        f"{html.escape(published)}</p>{''.join(plots)}")
    trial_rows = "".join(
        f"<tr><td>{t['trial']}</td><td class=\"number\">{t['epochs_run']}</td>"
        f"{_cell(t[search['metric']], 4)}"
        f"<td>{'ASHA' if t['stopped_by_asha'] else 'patience' if t['stopped_by_patience'] else '-'}</td>"
        f"<td>{html.escape(json.dumps(t['config']))}</td></tr>" for t in search["trials"])
    samples = html.escape("\n".join(s["line"] for s in served["samples"]))
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>medray demo</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head><body>
<h1>medray demo</h1><p>storage {html.escape(storage.root)}; generated {time.strftime('%Y-%m-%d %H:%M')}</p>
{'<p><b>Synthetic stand-ins</b> (no real file, no network): ' + html.escape(', '.join(synthetic)) + '</p>' if synthetic else ''}
<h2>Results (test split; threshold and temperature fitted on validation)</h2>
<table id="results"><thead><tr><th>dataset</th><th>model</th><th>AUROC (95% CI)</th><th>accuracy</th><th>AUPRC</th>
<th>Brier</th><th>calibration slope</th><th>registry</th><th>published</th></tr></thead>
<tbody>{_results_rows(results)}</tbody></table>
<h2>Plots</h2>{''.join(sections)}
<h2>Search {html.escape(search['search'])}</h2><table id="trials"><thead><tr><th>trial</th><th>epochs</th>
<th>{html.escape(search['metric'])}</th><th>stopped</th><th>config</th></tr></thead><tbody>{trial_rows}</tbody></table>
<h2>Serving</h2><p>{html.escape(served['url'] or 'nothing served')}</p><pre>{samples}</pre></body></html>"""
    path = folder / "report.html"
    path.write_text(page)
    (folder / "results.json").write_text(json.dumps({"results": results, "search": search["search"]}, indent=2,
                                                    default=str))
    return path.resolve()


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"
