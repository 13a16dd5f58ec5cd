"""Hostile input to ServedModel (issue 11): every number is finite and inside the range
the checkpoint's preprocessing accepts, every file goes through the bounded decoder,
the body parser bounds depth and digits, and the model's own outputs are checked.
Each answer is a valid prediction or one InputError naming the field, never the value."""

import base64
import dataclasses
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydicom import uid

from support.hostile_files import deflated_dicom, dicom_bytes, encapsulated, encoded, png_bomb, peak_bytes
from medray.serve.model import InputError, ServedModel
from medray.cluster.bounded_json import MAX_JSON_DEPTH, parse_json_body
from medray.train.data.preprocess import Preprocessor
from medray.train.modalities.image import decode_limits

CANARY = 987654.321


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """As a serving replica runs; on a busy machine more threads mostly wait on each other."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models(tmp_path_factory, real_inputs):
    """The three served champions, from checkpoints saved without a fitted range (as
    every checkpoint before issue 11 was). Module-wide: no test changes them."""
    from medray.cluster.storage import Storage
    from support.serving import make_registry

    folder = tmp_path_factory.mktemp("hostile")
    registry = make_registry(Storage(f"file://{folder / 'store'}"), folder, real_inputs)
    return {name: ServedModel.from_registry(registry, name, 1) for name in ("ultrasound", "ecg", "records")}


@pytest.fixture(scope="module")
def fitted(models, real_inputs, shared_data):
    """The signal and record models with preprocessing fitted on their training data."""
    names, data = real_inputs["feature_names"], real_inputs["all_records"]
    table = Preprocessor.fit({"modality": "tabular", "schema": {"features": [{"name": n, "type": "numeric"}
                                                                            for n in names]}},
                             {n: data[:, i] for i, n in enumerate(names)})
    ecg_train = np.loadtxt(shared_data / "ECG200_TRAIN.txt")[:, 1:]
    signal = Preprocessor.fit({"modality": "signal", "schema": {"column": "signal"}}, ecg_train)

    def with_preprocessor(model, pre):
        return dataclasses.replace(model, bundle=dataclasses.replace(model.bundle, preprocessor=pre))

    return {"records": with_preprocessor(models["records"], table), "ecg": with_preprocessor(models["ecg"], signal),
            "ecg_train": ecg_train}


def record(real_inputs, **changes):
    values = dict(zip(real_inputs["feature_names"], map(float, real_inputs["records"][0])))
    values.update(changes)
    return values


def refused(model, instances, message):
    with pytest.raises(InputError, match=message) as error:
        model.predict(model.decode(instances))
    assert "987654" not in str(error.value) and "Doe" not in str(error.value)
    return str(error.value)


# Row 1: numbers far outside anything the model was trained on ------------------------
def test_a_finite_but_absurd_feature_is_refused_naming_the_field(models, fitted, real_inputs):
    for model in (models["records"], fitted["records"]):
        refused(model, [record(real_inputs), record(real_inputs, **{"mean radius": 1e300})],
                r"instances\[1\]\.mean radius: must lie in \[")
        refused(model, [record(real_inputs, **{"mean radius": -1e300})], r"instances\[0\]\.mean radius: must lie")


def test_the_fitted_range_is_a_wide_multiple_of_the_training_range(fitted, real_inputs):
    model, data = fitted["records"], real_inputs["all_records"]
    low, high = data[:, 0].min(), data[:, 0].max()  # mean radius, about 7 to 28
    span = high - low
    accepted = model.bundle.preprocessor.accepted_range("mean radius")
    assert accepted[0] <= low - 10 * span and accepted[1] >= high + 10 * span
    assert accepted[1] - accepted[0] <= 23 * span  # rounded outward by at most one unit per side
    (answer,) = model.predict(model.decode([record(real_inputs, **{"mean radius": float(high + 5 * span)})]))
    assert answer["label"] in ("benign", "malignant")
    refused(model, [record(real_inputs, **{"mean radius": accepted[1] + 1})], r"mean radius: must lie in")
    refused(model, [record(real_inputs, **{"mean radius": CANARY})], r"mean radius: must lie in")
    listed = {f["name"]: f["range"] for f in model.info()["input"]["features"]}
    assert listed["mean radius"] == list(accepted)


def test_an_int_past_float64_in_a_record_is_refused(models, real_inputs):
    refused(models["records"], [record(real_inputs, **{"mean radius": 10**400})],
            r"instances\[0\]\.mean radius: is too large")


# Row 1, second half: the outputs are checked too ------------------------------------
def test_a_non_finite_output_never_becomes_a_label(models, real_inputs):
    model = models["records"]
    # An old checkpoint takes anything float32 can normalise; 1e37 overflows inside the
    # network. Only the output check stands between that and a label.
    assert model.bundle.preprocessor.accepted_range("mean radius")[1] > 1e37
    extreme = model.decode([record(real_inputs, **{"mean radius": 1e37})])
    assert not np.isfinite(model.bundle.model(extreme.tensor).detach().numpy()).all()
    refused(model, [record(real_inputs, **{"mean radius": 1e37})], r"instances\[0\]: the model gave no usable answer")
    with pytest.raises(InputError, match=r"instances\[1\]: the model gave no usable answer"):
        model.answers(np.array([[0.5, -0.5], [np.nan, 0.0]]))
    # One request's unusable answer refuses that request alone, indexed within it.
    good = model.decode([record(real_inputs)])
    results = model.predict_requests([good, extreme, good])
    assert "error" not in results[0] and results[0] == results[2]
    (alone,), (batched,) = model.predict(good), results[0]["predictions"]
    assert batched["label"] == alone["label"]  # batched float32 sums differ in the last bits
    assert list(batched["probabilities"].values()) == pytest.approx(list(alone["probabilities"].values()), abs=1e-6)
    assert results[1] == {"error": "instances[0]: the model gave no usable answer for this input (non-finite "
                                   "output); it is refused rather than labelled"}


# Row 2: signals ----------------------------------------------------------------------
def test_a_signal_of_huge_values_is_refused_not_clamped(models, fitted, real_inputs):
    for model in (models["ecg"], fitted["ecg"]):
        refused(model, [[1e308] * 96], r"instances\[0\]: values must lie in \[")
        refused(model, [real_inputs["signals"][0].tolist(), [-1e39] * 96], r"instances\[1\]: values must lie in")
    train = fitted["ecg_train"]
    low, high = fitted["ecg"].bundle.preprocessor.accepted_range(0)
    assert low < train.min() - 10 * np.ptp(train) and high > train.max() + 10 * np.ptp(train)
    refused(fitted["ecg"], [[0.0] * 95 + [high * 1.01]], r"instances\[0\]: values must lie in")
    assert fitted["ecg"].info()["input"]["value_ranges"] == [[low, high]]


# Row 3: the body parser --------------------------------------------------------------
@pytest.mark.parametrize("body, message", [
    (b"[" * 100_000 + b"]" * 100_000, f"nest deeper than {MAX_JSON_DEPTH} levels"),
    (b'{"instances": [' + b"[" * 40 + b"1" + b"]" * 40 + b"]}", "nest deeper than"),
    (b'{"instances": [' + b"9" * 5000 + b"]}", "integer longer than 320 digits"),
    (b'{"instances": [{"mean radius": ' + str(10**400).encode() + b"}]}", "integer longer than 320 digits"),
    (b'{"instances": [1, 2', "body: must be JSON"),
    (b"\xff\xfe{}", "body: must be JSON \\(UTF-8\\)"),
])
def test_the_body_parser_refuses_what_json_loads_would_crash_on(body, message):
    with pytest.raises(InputError, match=message):
        parse_json_body(body)


def test_the_body_parser_reads_ordinary_bodies_and_ignores_brackets_in_strings():
    body = {"instances": [[[1, 2.5], [3, 4]], {"a": None, "b": "[[[[ \\\" {{{{" * 40}], "explain": True}
    assert parse_json_body(json.dumps(body).encode()) == body
    assert parse_json_body(str(10**300).encode()) == 10**300


def test_huge_ints_and_deep_lists_already_parsed_are_input_errors(models):
    deep = [1.0]
    for _ in range(100_000):
        deep = [deep]
    refused(models["ultrasound"], [deep], r"instances\[0\]: must be a rectangular")
    refused(models["ultrasound"], [[[10**400] * 28] * 28], r"instances\[0\]: holds a number too large")
    refused(models["ecg"], [[10**400] * 96], r"instances\[0\]: holds a number too large")


# Row 4: booleans are not numbers -----------------------------------------------------
def test_booleans_are_not_pixel_or_signal_values(models, real_inputs):
    image = real_inputs["images"][0].tolist()
    image[3][5] = True
    refused(models["ultrasound"], [image], r"instances\[0\]: must be a rectangular, non-empty array of numbers")
    refused(models["ultrasound"], [[[1, True]]], r"instances\[0\]: must be a rectangular")
    signal = real_inputs["signals"][0].tolist()
    signal[7] = False
    refused(models["ecg"], [signal], r"instances\[0\]: must be a rectangular")
    refused(models["records"], [record(real_inputs, **{"mean radius": True})], r"mean radius: must be a number")


# Rows 5-8: image files ---------------------------------------------------------------
def test_a_png_bomb_is_refused_before_decoding_even_sixteen_at_once(models):
    model = models["ultrasound"]
    bomb = png_bomb(14000, 14000)
    with pytest.raises(InputError, match=r"^file is larger than the 16777216-pixel limit$"):
        model.decode_file(bomb)
    assert decode_limits(model.bundle.preprocessor).max_pixels == 4096 * 4096  # 64 x 28 x 28 is under the floor
    sixteen = [base64.b64encode(bomb).decode()] * 16
    assert peak_bytes(lambda: pytest.raises(InputError, model.decode, sixteen)) < 5_000_000
    with pytest.raises(InputError, match=r"^instances\[0\] is larger than the 16777216-pixel limit$"):
        model.decode(sixteen)
    below_pillows_threshold = png_bomb(5000, 5000)  # Pillow alone would decode these 25 M pixels
    with pytest.raises(InputError, match="pixel limit"):
        model.decode_file(below_pillows_threshold)


@pytest.mark.parametrize("format", ["BMP", "GIF", "TIFF", "WEBP", "ICO", "PPM", "TGA"])
def test_only_png_jpeg_and_dicom_files_are_taken(models, real_inputs, format):
    data = encoded(real_inputs["images"][0], format)
    model = models["ultrasound"]
    with pytest.raises(InputError, match=r"^file is corrupt or not an image \(only PNG, JPEG and DICOM"):
        model.decode_file(data)
    with pytest.raises(InputError, match=r"^instances\[0\] is corrupt or not an image"):
        model.decode([base64.b64encode(data).decode()])
    png = model.decode_file(encoded(real_inputs["images"][0], "PNG"))
    assert png.tensor.shape == (1, 1, 28, 28)  # the documented formats still decode


def test_a_deflated_dicom_is_refused_from_its_header(models):
    bomb = deflated_dicom(32 << 20)  # a few KB that inflate to 32 MiB
    assert len(bomb) < 100_000
    model = models["ultrasound"]
    assert peak_bytes(lambda: pytest.raises(InputError, model.decode_file, bomb)) < 8_000_000
    with pytest.raises(InputError, match="file uses a DICOM transfer syntax medray does not decode"):
        model.decode_file(bomb)


@pytest.mark.parametrize("case, message", [
    ("multi_frame_rgb", "file is a multi-frame colour DICOM"),
    ("junk_jpeg2000", "file has DICOM pixel data that cannot be decoded"),
    ("junk_rle", "file has DICOM pixel data that does not match its Rows and Columns"),
    ("nan_slope", "file has a DICOM RescaleSlope that is not a finite number"),
])
def test_broken_dicoms_are_input_errors_not_500s_or_blank_images(models, case, message):
    import warnings

    pixels = np.random.default_rng(3).integers(0, 256, (28, 28))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns while writing the invalid values on purpose
        data = {
            "multi_frame_rgb": lambda: dicom_bytes(np.zeros((3, 28, 28, 3)), frames=3, samples=3),
            "junk_jpeg2000": lambda: dicom_bytes(syntax=uid.JPEG2000Lossless, rows=28, columns=28,
                                                 pixel_data=encapsulated(b"\xff\x4f\xff\x51" + b"\x07" * 300)),
            "junk_rle": lambda: dicom_bytes(syntax=uid.RLELossless, rows=28, columns=28,
                                            pixel_data=encapsulated(b"\x01\x00\x00\x00" + b"\x07" * 300)),
            "nan_slope": lambda: dicom_bytes(pixels, RescaleSlope="NaN", RescaleIntercept="0"),
        }[case]()
    with pytest.raises(InputError, match=message) as error:
        models["ultrasound"].decode_file(data)
    assert "Doe" not in str(error.value) and "PID" not in str(error.value)
    good = models["ultrasound"].decode_file(dicom_bytes(pixels))
    assert good.tensor.shape == (1, 1, 28, 28)


# Properties: arbitrary JSON values ---------------------------------------------------
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-10**400, 10**400),
                    st.floats(), st.floats(-1e308, 1e308), st.text(max_size=12))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=12)


def answer_or_input_error(model: ServedModel, instances) -> None:
    try:
        answers = model.predict(model.decode(instances))
    except InputError as error:
        assert str(error) and "Traceback" not in str(error)
        event("refused")
        return
    event("answered")
    assert len(answers) == len(instances)
    for answer in answers:
        assert answer["label"] in model.bundle.classes
        assert all(0 <= p <= 1 for p in answer["calibrated_probabilities"].values())


def through_the_ingress(model: ServedModel, instances) -> None:
    """The same instances as the ingress gets them: serialised, then the bounded parser."""
    try:
        body = parse_json_body(json.dumps({"instances": instances}).encode())
    except InputError:
        return
    answer_or_input_error(model, body["instances"])


PROPERTY = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


MODELS = ["ultrasound", "ecg", "records", "fitted ecg", "fitted records"]
EXTREMES = st.sampled_from([10**400, -10**309, 1e300, -1e308, 3e38, 1e37, True, float("nan"), "7", None, [], {}])


@PROPERTY
@given(which=st.sampled_from(MODELS), choice=st.sampled_from([0, 1, 1, 1, 2]), instance=json_values,
       tweaks=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**6),
                                 st.one_of(st.floats(0, 255), EXTREMES, json_values)), min_size=1, max_size=3))
def test_arbitrary_json_into_each_modality_is_an_answer_or_an_input_error(models, fitted, real_inputs, which, choice,
                                                                          instance, tweaks):
    model = fitted[which.split()[1]] if which.startswith("fitted") else models[which]
    if choice == 1:  # a valid instance with a few values (or record keys) replaced by arbitrary JSON
        instance = {"image": real_inputs["images"][0].tolist(), "signal": real_inputs["signals"][0].tolist(),
                    "tabular": record(real_inputs)}[model.modality]
        names = real_inputs["feature_names"]
        for row, column, value in tweaks:
            if isinstance(instance, dict):
                instance[names[row % len(names)] if column % 5 else f"x{column}"] = value
            elif model.modality == "image":  # not instance[0]: an earlier tweak may have made a signal's a list
                instance[row % len(instance)][column % len(instance[0])] = value
            else:
                instance[row % len(instance)] = value
    instances = instance if choice == 2 else [instance]  # 2: the whole `instances` arbitrary
    answer_or_input_error(model, instances)
    through_the_ingress(model, instances)


@PROPERTY
@given(body=st.one_of(st.binary(max_size=300), json_values.map(lambda v: json.dumps(v).encode()),
                      st.text(alphabet='[]{}",:\\0123456789.-eE truefalsn', max_size=200).map(str.encode)))
def test_arbitrary_bytes_as_a_body_parse_or_are_an_input_error(body):
    try:
        parse_json_body(body)
    except InputError as error:
        assert str(error).startswith("body: ")
