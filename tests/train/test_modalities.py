"""The modality registry: one module per modality, and nothing outside it that branches on
a modality's name."""

import ast
import json

import numpy as np
import pandas as pd
import pytest

from medray.cluster.errors import ConfigError
from medray.train.data.preprocess import Preprocessor
from medray.train.modalities import MODALITIES, modality
from medray.train.models import InputSpec
from support.project import PROJECT

SCANNED = ("cluster", "train", "tune", "serve", "medray")
REGISTRY = PROJECT / "train" / "modalities"


def test_the_registry_refuses_an_unknown_modality_naming_the_choices():
    with pytest.raises(ConfigError, match=r"^unknown input modality 'video'; choose one of: image, signal, tabular, "
                                          r"timeseries, text$"):
        modality("video")
    assert [modality(name).name for name in ("image", "signal", "tabular")] == ["image", "signal", "tabular"]


# Each modality's stored rows, schema, and one transformed value worked out by hand.
_AGES = [40.0, 60.0, np.nan, 50.0]


def _patients(*rows):
    """Stored timeseries columns for patients given as ([(minutes, variable, value)], age)."""
    def lists(k, dtype):
        column = np.empty(len(rows), dtype=object)
        column[:] = [np.asarray([o[k] for o in obs], dtype=dtype) for obs, _ in rows]
        return column
    return pd.DataFrame({"obs_minutes": lists(0, np.float32), "obs_variable": lists(1, np.int16),
                         "obs_value": lists(2, np.float32),
                         "static_Age": np.asarray([age for _, age in rows], dtype=np.float64)})


STORED = {
    # pixels 0 and 255: mean 0.5, std 0.5 -> pixel 255 becomes +1
    "image": ({"column": "image", "shape": [2, 2], "dtype": "uint8"},
              np.array([np.zeros((2, 2)), np.full((2, 2), 255)], dtype=np.uint8), (1, 0, 0, 0), 1.0),
    # values 1..6 in one channel: mean 3.5, std sqrt(35/12) -> 6 becomes 2.5 / 1.7078
    "signal": ({"column": "signal", "shape": [3], "dtype": "float64"},
               np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), (1, 2, 0), 2.5 / np.sqrt(35 / 12)),
    # median 50 fills the gap; mean 50, std sqrt(50) -> age 60 becomes 10 / sqrt(50)
    "tabular": ({"features": [{"name": "age", "type": "numeric"},
                              {"name": "smoker", "type": "categorical", "categories": ["no", "yes"]}]},
                pd.DataFrame({"age": _AGES, "smoker": ["no", "yes", None, "no"]}), (1, 0), 10 / np.sqrt(50)),
    # HR 80, 100 (patient 0, steps 0 and 1) and 90: mean 90, std sqrt(200/3) -> 100 at step 1
    "timeseries": ({"variables": [{"name": "HR", "range": [0, 300]}, {"name": "Temp", "range": None}],
                    "statics": [{"name": "Age", "column": "static_Age", "categories": None}],
                    "reference_scores": [], "window_minutes": 180},
                   _patients(([(10, 0, 80), (70, 0, 100), (75, 1, 37.5)], 70.0), ([(0, 0, 90)], np.nan)),
                   (0, 1, 0, 0), 10 / np.sqrt(200 / 3)),
}


@pytest.mark.parametrize("name", list(STORED))
def test_fit_saved_and_loaded_transforms_to_the_same_numbers(name):
    schema, rows, index, expected = STORED[name]
    fitted = Preprocessor.fit({"modality": name, "schema": schema}, rows)
    InputSpec(name, tuple(fitted.input_shape))  # the fitted shape has the modality's axes
    # A checkpoint's data.json holds to_dict as plain JSON.
    loaded = Preprocessor.from_dict(json.loads(json.dumps(fitted.to_dict(), allow_nan=False)))
    assert loaded == fitted
    out = loaded.transform(rows)
    assert out.dtype == np.float32 and out.shape == (len(rows), *fitted.input_shape)
    np.testing.assert_array_equal(out, fitted.transform(rows))
    assert out[index] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name", list(STORED))
def test_a_stored_row_sent_as_a_request_transforms_as_in_training(name):
    schema, rows, _, _ = STORED[name]
    kind = modality(name)
    fitted = Preprocessor.fit({"modality": name, "schema": schema}, rows)
    instances = [kind.request_instance(rows, row, schema) for row in range(len(rows))]
    json.dumps(instances, allow_nan=False)  # what a client can send
    np.testing.assert_array_equal(fitted.transform(kind.decode(fitted, instances)), fitted.transform(rows))


# No branching on a modality's name outside the registry -------------------------------


def _strings(node: ast.AST) -> list[str]:
    """The string constants `node` is, or holds as a tuple, list or set."""
    items = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
    return [i.value for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str)]


def _names_modality(node: ast.AST) -> bool:
    """`modality`, `x.modality`, `x["modality"]` or `x.get("modality")`."""
    if isinstance(node, ast.Name):
        return "modality" in node.id.lower()
    if isinstance(node, ast.Attribute):
        return "modality" in node.attr.lower()
    if isinstance(node, ast.Subscript):
        return _strings(node.slice) == ["modality"]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
        return bool(node.args) and _strings(node.args[0]) == ["modality"]
    return False


def _is_import_kind(node: ast.AST) -> bool:
    """`request.kind`: an import request's source kind (`csv`, `events`, `text`, ...)."""
    return (isinstance(node, ast.Attribute) and node.attr == "kind" and isinstance(node.value, ast.Name)
            and node.value.id == "request")


def modality_dispatch(source: str) -> list[int]:
    """Lines that choose code by a modality's name: a comparison of a modality (or of a
    registered modality's name) with a string, a table with entries for two or more
    modalities (a dict literal or `dict(...)`), or a `match` on a modality. One name as
    a key is a column (`{"image": tensor_column(...)}`), not a table."""
    names = set(MODALITIES)
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            if _is_import_kind(node.left):  # `medray data import text` names a source kind, not a modality
                continue
            operands = [node.left, *node.comparators]
            strings = [s for o in operands for s in _strings(o)]
            if names & set(strings) or (strings and any(_names_modality(o) for o in operands)):
                found.append(node.lineno)
        elif isinstance(node, ast.Dict):
            if len(names & {s for key in node.keys if key is not None for s in _strings(key)}) >= 2:
                found.append(node.lineno)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
            if len(names & {k.arg for k in node.keywords}) >= 2:
                found.append(node.lineno)
        elif isinstance(node, ast.Match):
            values = [p.value for c in node.cases for p in ast.walk(c.pattern) if isinstance(p, ast.MatchValue)]
            if _names_modality(node.subject) or names & {s for v in values for s in _strings(v)}:
                found.append(node.lineno)
    return found


@pytest.mark.parametrize("source, lines", [
    ('AUGMENTERS = {"image": a, "signal": b}', [1]),
    ('SHAPES = dict(image=(1,), tabular=(2,))', [1]),
    ('if manifest["modality"] in ("image", "signal"):\n    pass', [1]),
    ('x = 1\nif self.modality != "tabular":\n    pass', [2]),
    ('ok = kind == "video" or modality.get("modality") == "x"', [1]),
    ('match spec.modality:\n    case "image":\n        pass', [1]),
    ('Split(pa.table({"image": tensor_column(x)}), y)', []),
    ('if input_spec.modality != family.modality:\n    pass', []),
    ('ImportedDataset(modality="signal", classes=[])', []),
    ('if request.kind == "text":\n    pass', []),
    ('if kind == "text":\n    pass', [1]),
])
def test_the_dispatch_check_finds_what_it_should(source, lines):
    assert modality_dispatch(source) == lines


def test_no_code_outside_the_registry_branches_on_a_modality_name():
    offenders = [
        f"{path.relative_to(PROJECT)}:{line}"
        for folder in SCANNED
        for path in sorted((PROJECT / folder).rglob("*.py"))
        if REGISTRY not in path.parents
        for line in modality_dispatch(path.read_text())
    ]
    assert offenders == [], "ask the modality (medray.train.modalities) instead of branching on its name"
