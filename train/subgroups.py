"""How a model does for subgroups of patients: the test metrics broken down by an
attribute (`eval.subgroups`), each with its interval, and the worst subgroup's value of
each, which the promotion gate can require a minimum of (`subgroups.worst.auroc`).

A subgroup is named by its attribute and a value or a condition ("sex = 1", "age >= 65",
"age < 65"), never by a patient: an attribute without a condition may hold at most
`MAX_GROUPS` distinct values (a code, a category), so a continuous measure must be given
a cut-off. Pure functions over arrays; the attributes come from the modality
(`Modality.attributes`).
"""

from __future__ import annotations

import operator
import re
from typing import Any

import numpy as np

from medray.cluster.errors import ConfigError
from medray.train.evaluate import auroc_with_ci, brier_score, classification_metrics, wilson_interval

MAX_GROUPS = 20
CONDITION = re.compile(r"^\s*(?P<name>[^<>=!]+?)\s*(?P<op>>=|<=|==|!=|>|<)\s*(?P<value>[-+]?\d+(\.\d+)?)\s*$")
OPERATORS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq,
             "!=": operator.ne}
NEGATED = {">=": "<", "<=": ">", ">": "<=", "<": ">=", "==": "!=", "!=": "=="}
WORST = ("auroc", "accuracy", "sensitivity", "specificity")
"""The figures whose lowest subgroup value is reported (and can be gated on)."""


def subgroup_masks(spec: str, attributes: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`spec` ("sex", "age >= 65") as {subgroup label: boolean row mask}. Rows whose
    attribute is unknown (NaN, None) belong to no subgroup."""
    match = CONDITION.match(spec)
    name = (match["name"] if match else spec).strip()
    if name not in attributes:
        known = ", ".join(attributes) or "none (this modality's cases carry no attributes)"
        raise ConfigError(f"eval.subgroups: '{name}' is not an attribute of the cases; they have: {known}")
    values = np.asarray(attributes[name], dtype=object)
    known_rows = np.array([v is not None and not (isinstance(v, float) and np.isnan(v)) for v in values])
    if match:
        try:
            numbers = np.array([float(v) if k else np.nan for v, k in zip(values, known_rows)])
        except (TypeError, ValueError):
            raise ConfigError(f"eval.subgroups: '{name}' is not numeric, so '{spec}' cannot be evaluated; "
                              "give the name alone to take each of its values") from None
        cut, op = float(match["value"]), match["op"]
        holds = OPERATORS[op](np.where(known_rows, numbers, 0.0), cut) & known_rows
        shown = match["value"]
        return {f"{name} {op} {shown}": holds, f"{name} {NEGATED[op]} {shown}": known_rows & ~holds}
    labels = [_label(v) for v in values[known_rows]]
    distinct = sorted(set(labels))
    if len(distinct) > MAX_GROUPS:
        raise ConfigError(f"eval.subgroups: '{name}' has {len(distinct)} distinct values (at most {MAX_GROUPS}); "
                          f"give a condition such as '{name} >= NUMBER'")
    texts = np.array([_label(v) if k else None for v, k in zip(values, known_rows)], dtype=object)
    return {f"{name} = {value}": texts == value for value in distinct}


def _label(value: Any) -> str:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def evaluate_subgroups(specs: list[str], attributes: dict[str, np.ndarray], y_true: np.ndarray, probs: np.ndarray,
                       threshold: float | None, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Per subgroup of each spec: n, positives, AUROC with its bootstrap interval,
    accuracy, sensitivity and specificity at the model's threshold (binary; argmax beyond)
    with Wilson intervals, and the Brier score; `worst`: the lowest defined value of each
    of `WORST` over the subgroups."""
    y = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    groups = []
    for spec in specs:
        for label, mask in subgroup_masks(spec, attributes).items():
            groups.append({"attribute": spec, "subgroup": label,
                           **_figures(y[mask], probs[mask], threshold, n_boot, seed)})
    worst = {key: min((g[key] for g in groups if g[key] is not None), default=None) for key in WORST}
    return {"groups": groups, "worst": worst}


def _share(hits: int, total: int) -> tuple[float | None, list[float | None]]:
    return (hits / total if total else None), wilson_interval(hits, total)


def _figures(y: np.ndarray, probs: np.ndarray, threshold: float | None, n_boot: int, seed: int) -> dict[str, Any]:
    n = int(y.size)
    if n == 0:
        return {"n": 0, "positives": 0, "auroc": None, "auroc_ci": [None, None], "accuracy": None,
                "accuracy_ci": [None, None], "sensitivity": None, "sensitivity_ci": [None, None],
                "specificity": None, "specificity_ci": [None, None], "brier": None}
    binary = probs.shape[1] == 2
    # The decisions as the whole split's metrics make them (threshold or argmax); the
    # counts behind each share come from its confusion matrix, for the Wilson intervals.
    counts = np.asarray(classification_metrics(y, probs, threshold if binary else None)["confusion_matrix"])
    auroc = auroc_with_ci(y, probs, n_boot=n_boot, seed=seed)
    accuracy, accuracy_ci = _share(int(np.trace(counts)), n)
    sensitivity, sensitivity_ci = _share(int(counts[1, 1]), int(counts[1].sum())) if binary else (None, [None, None])
    specificity, specificity_ci = _share(int(counts[0, 0]), int(counts[0].sum())) if binary else (None, [None, None])
    return {"n": n, "positives": int((y == 1).sum()), "auroc": auroc["value"],
            "auroc_ci": [auroc["low"], auroc["high"]], "accuracy": accuracy, "accuracy_ci": accuracy_ci,
            "sensitivity": sensitivity, "sensitivity_ci": sensitivity_ci, "specificity": specificity,
            "specificity_ci": specificity_ci, "brier": brier_score(y, probs)}
