"""The web page at /ui in a real browser (headless Chromium, tests/support/browser.py)
against a live Serve app on 127.0.0.1 with a token: signing in, the model cards, a real
BreastMNIST test image answered with its Grad-CAM overlay and the API's own answer, a
WDBC record typed into the form built from the model's schema, an ECG series pasted, a
wrong token and a corrupt upload refused with the API's messages, a narrow screen, and
nothing typed reaching the logs. Each page's screenshot is saved (test-artifacts/)."""

import base64
import io
import secrets
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from medray.cluster.config import DataConfig, load_config
from medray.train.data.preprocess import Preprocessor
from support.browser import screenshot, start_chromium, system_browser
from support.serving import IMAGE, SIGNAL, register, serve_overrides, tabular_preprocessor

pytestmark = pytest.mark.integration

PORT = 8314
TOKEN = "tok-" + secrets.token_hex(16)
AUTH = {"Authorization": f"Bearer {TOKEN}"}
OVERRIDES = serve_overrides(PORT)
INTENDED = "Decision support for classifying {} data. Not for use as the sole basis of a diagnosis."
CANARY = 17.123457
"""A value typed into the form that no log may hold."""


def _icu_preprocessor() -> Preprocessor:
    """An ICU-stay model's preprocessing, fitted on three made-up stays (heart rate,
    temperature over 3 hours, age), as training fits it on stored rows."""
    stays = [([(10, 0, 80.0), (70, 0, 100.0), (75, 1, 37.5)], 70.0), ([(0, 0, 90.0), (130, 1, 38.4)], 55.0),
             ([(20, 0, 120.0), (100, 1, 36.9)], 81.0)]

    def column(k, dtype):
        values = np.empty(len(stays), dtype=object)
        values[:] = [np.asarray([o[k] for o in observations], dtype=dtype) for observations, _ in stays]
        return values

    rows = pd.DataFrame({"obs_minutes": column(0, np.float32), "obs_variable": column(1, np.int16),
                         "obs_value": column(2, np.float32), "static_Age": [age for _, age in stays]})
    schema = {"variables": [{"name": "HR", "range": [0, 300]}, {"name": "Temp", "range": [25, 45]}],
              "statics": [{"name": "Age", "column": "static_Age", "categories": None}],
              "reference_scores": [], "window_minutes": 180}
    return Preprocessor.fit({"modality": "timeseries", "schema": schema}, rows)


def _note_preprocessor() -> Preprocessor:
    """A note model's preprocessing: a word tokenizer fitted on a few made-up notes."""
    notes = ["chest pain and shortness of breath", "fever and cough for three days", "no chest pain today",
             "cough and fever again"] * 3
    return Preprocessor.fit({"modality": "text", "schema": {"column": "text"}},
                            pd.DataFrame({"text": np.asarray(notes, dtype=object)}), DataConfig(),
                            np.array([0, 1] * 6))


def _card(name: str, modality: str) -> str:
    return f"# Model card: {name}\n\n## Intended use\n{INTENDED.format(modality)}\n\n## Data\n- rows: 1\n"


@pytest.fixture(scope="module")
def page(ray_session, s3_endpoint, tmp_path_factory, real_inputs):
    """The app with three champions (model cards and test metrics as promotion registers
    them) and one browser."""
    system_browser()  # skip (or fail, under CI) before anything starts
    import boto3

    from medray.cluster.storage import Storage
    from medray.serve import app as serve_app
    from medray.serve.app import deploy, down

    bucket = "medray-web-page"
    boto3.client("s3").create_bucket(Bucket=bucket)
    storage = Storage(f"s3://{bucket}/root")
    folder = tmp_path_factory.mktemp("models")
    metrics = {"test": {"auroc": 0.912, "auroc_ci": [0.85, 0.96], "accuracy": 0.878, "sensitivity": 0.9,
                        "specificity": 0.83, "n": 156}}
    units = {"mean radius": "mm"}
    for name, family, preset, preprocessor, seed in [
            ("ultrasound", "cnn", "resnet", IMAGE, 1), ("ecg", "rnn", "bigru", SIGNAL, 2),
            ("records", "attention", "seed",
             tabular_preprocessor(real_inputs["feature_names"], real_inputs["all_records"], units, extremes=True), 3),
            ("icu", "rnn", "bigru", _icu_preprocessor(), 4), ("notes", "rnn", "bigru", _note_preprocessor(), 5)]:
        register(storage, folder, name, family, preset, preprocessor, ["benign", "malignant"], seed,
                 card=_card(name, preprocessor.modality), metadata={"metrics": metrics, "dataset": name})
    patch = pytest.MonkeyPatch()
    patch.setenv("MEDRAY_API_TOKEN", TOKEN)
    patch.setattr(serve_app, "TOKEN_FILE", tmp_path_factory.mktemp("home") / "serve-token")
    browser = None
    try:
        deployed = deploy(load_config(None, OVERRIDES), storage)
        browser = start_chromium()
        browser.set_script_timeout(30)
        with httpx.Client(base_url=deployed["url"], timeout=60, headers=AUTH) as api:
            yield {"url": deployed["page"], "browser": browser, "api": api, "metrics": metrics}
    finally:
        if browser is not None:
            browser.quit()
        down()
        patch.undo()


def _wait(browser, condition, timeout: float = 30.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout).until(condition)


def _visible(browser, css: str):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen

    return _wait(browser, seen.visibility_of_element_located((By.CSS_SELECTOR, css)))


def _find(browser, css: str):
    from selenium.webdriver.common.by import By

    return browser.find_element(By.CSS_SELECTOR, css)


def _sign_in(page, token: str = TOKEN) -> None:
    browser = page["browser"]
    browser.get(page["url"])
    browser.execute_script("sessionStorage.clear()")
    browser.get(page["url"])
    _visible(browser, "#token").send_keys(token)
    _find(browser, "#login-form button").click()


def _open_model(page, name: str) -> None:
    browser = page["browser"]
    if not _find(browser, "#models").is_displayed() and not _find(browser, "#try").is_displayed():
        _sign_in(page)
        _visible(browser, ".card")
    browser.get(f"{page['url']}#model/{name}")
    _visible(browser, "#predict")


def _submit(browser) -> None:
    """Press Predict and wait until the page shows an answer or a problem (from a blank
    label, so an earlier answer on the page does not count)."""
    browser.execute_script("document.getElementById('label').textContent = ''")
    _find(browser, "#predict").click()
    _wait(browser, lambda b: b.execute_script(
        "return document.getElementById('label').textContent !== '' || !document.getElementById('problem').hidden"))


def _shown_answer(browser) -> dict:
    """The answer as the page shows it: label, per-class values from the table's data."""
    _visible(browser, "#answer")
    rows = browser.find_elements("css selector", "#probabilities tbody tr")
    return {
        "label": _find(browser, "#label").text,
        "probabilities": {r.get_attribute("data-class"): float(r.find_element("css selector", ".raw")
                                                               .get_attribute("data-value")) for r in rows},
        "calibrated_probabilities": {r.get_attribute("data-class"): float(r.find_element("css selector", ".calibrated")
                                                                          .get_attribute("data-value")) for r in rows},
        "referral": _find(browser, "#referral").is_displayed(),
        "set": _find(browser, "#prediction-set").get_attribute("data-set"),
    }


def _assert_shows(shown: dict, answer: dict) -> None:
    assert shown["label"] == answer["label"]
    for key in ("probabilities", "calibrated_probabilities"):
        assert shown[key].keys() == answer[key].keys()
        for name, value in answer[key].items():
            assert shown[key][name] == pytest.approx(value, abs=1e-6)
    assert shown["referral"] == bool(answer.get("refer_to_clinician") or answer.get("out_of_distribution"))
    assert shown["set"] == ("" if answer.get("prediction_set") is None
                            else str(answer["prediction_set"]).replace("'", '"').replace(", ", ","))


def _api_answer(page, name: str, instance) -> dict:
    response = page["api"].post(f"/v1/models/{name}/predict", json={"instances": [instance], "explain": True})
    assert response.status_code == 200, response.text
    return response.json()["predictions"][0]


def test_the_page_is_served_open_and_its_data_is_not(page):
    with httpx.Client(timeout=30) as anonymous:
        base = page["url"].removesuffix("/ui")
        shell = anonymous.get(page["url"])
        assert shell.status_code == 200 and shell.headers["content-type"].startswith("text/html")
        policy = shell.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "script-src 'self'" in policy
        assert anonymous.get(f"{page['url']}/medray.js").headers["content-type"].startswith("text/javascript")
        assert anonymous.get(f"{page['url']}/medray.css").status_code == 200
        # No script or style from elsewhere: the page works with no internet.
        assert "http" not in shell.text.replace('xmlns="http', "")
        # The data stays behind the token, and the page opens no other path.
        assert anonymous.get(f"{base}/v1/models").status_code == 401
        assert anonymous.get(f"{page['url']}/secrets.txt").status_code == 401


def test_a_wrong_token_is_refused(page):
    browser = page["browser"]
    _sign_in(page, "not-the-token")
    problem = _visible(browser, "#login-problem")
    assert "refused" in problem.text and "bearer token" in problem.text
    assert not _find(browser, "#models").is_displayed()
    assert browser.execute_script("return sessionStorage.getItem('medray.token')") is None
    screenshot(browser, "sign-in-refused")


def test_signing_in_lists_the_models_with_their_cards(page):
    browser = page["browser"]
    _sign_in(page)
    _visible(browser, ".card")
    cards = browser.find_elements("css selector", ".card")
    assert sorted(c.get_attribute("data-model") for c in cards) == ["ecg", "icu", "notes", "records", "ultrasound"]
    ultrasound = _find(browser, '.card[data-model="ultrasound"]')
    assert "v1" in ultrasound.find_element("css selector", "h3").text
    assert INTENDED.format("image") in ultrasound.text
    assert ultrasound.find_element("css selector", '[data-metric="auroc"]').text == "0.912 (95% CI 0.850-0.960)"
    assert "n = 156" in ultrasound.text
    # The token lives in this tab's session only.
    assert browser.execute_script("return sessionStorage.getItem('medray.token')") == TOKEN
    assert browser.execute_script("return localStorage.length") == 0
    screenshot(browser, "models")


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _overlay_pixels(browser) -> str:
    return browser.execute_script("return document.getElementById('overlay').toDataURL()")


def test_an_uploaded_image_is_answered_as_the_api_answers_with_its_grad_cam_overlay(page, real_inputs, tmp_path):
    browser = page["browser"]
    png = _png(real_inputs["images"][1])
    upload = tmp_path / "case.png"
    upload.write_bytes(png)
    _open_model(page, "ultrasound")
    _find(browser, "#image-file").send_keys(str(upload))
    _find(browser, "#predict").click()
    _wait(browser, lambda b: b.execute_script(
        "const c = document.getElementById('overlay'); return c && c.dataset.overlay === 'grad_cam'"))
    answer = _api_answer(page, "ultrasound", base64.b64encode(png).decode())
    assert np.max(answer["explanation"]["map"]) == 1  # a map with something to show
    _assert_shows(_shown_answer(browser), answer)
    screenshot(browser, "image-answer")
    # The overlay is drawn: switching it off changes the picture, back on restores it.
    with_overlay = _overlay_pixels(browser)
    _find(browser, "#show-overlay").click()
    assert _find(browser, "#overlay").get_attribute("data-overlay") == "none"
    assert _overlay_pixels(browser) != with_overlay
    _find(browser, "#show-overlay").click()
    assert _overlay_pixels(browser) == with_overlay


def test_a_dicom_unlike_the_training_images_is_shown_with_a_referral(page, tmp_path):
    from pydicom.data import get_testdata_file

    browser = page["browser"]
    ct = Path(get_testdata_file("CT_small.dcm")).read_bytes()  # a CT slice; the model was trained on ultrasound
    upload = tmp_path / "slice.dcm"
    upload.write_bytes(ct)
    _open_model(page, "ultrasound")
    _find(browser, "#image-file").send_keys(str(upload))
    _submit(browser)
    answer = _api_answer(page, "ultrasound", base64.b64encode(ct).decode())
    assert answer["out_of_distribution"] is True
    _assert_shows(_shown_answer(browser), answer)
    referral = _find(browser, "#referral")
    assert referral.is_displayed() and "unlike the data the model was trained on" in referral.text
    assert _find(browser, "#ood").get_attribute("data-flag") == "true"
    assert "file metadata Modality differs from the training set's" in _find(browser, "#ood").text
    screenshot(browser, "dicom-referred")


def test_a_corrupt_upload_shows_the_apis_422_message(page, tmp_path):
    browser = page["browser"]
    corrupt = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    upload = tmp_path / "broken.png"
    upload.write_bytes(corrupt)
    _open_model(page, "ultrasound")
    _find(browser, "#image-file").send_keys(str(upload))
    _submit(browser)
    problem = _visible(browser, "#problem")
    expected = page["api"].post("/v1/models/ultrasound/predict",
                                json={"instances": [base64.b64encode(corrupt).decode()], "explain": True})
    assert expected.status_code == 422
    assert problem.text == expected.json()["detail"]
    assert not _find(browser, "#answer").is_displayed()
    screenshot(browser, "image-refused")


def test_a_health_record_typed_into_the_form_is_answered_as_the_api_answers(page, real_inputs):
    browser = page["browser"]
    names = real_inputs["feature_names"]
    record = dict(zip(names, map(float, real_inputs["records"][1])))
    record["mean radius"] = CANARY
    _open_model(page, "records")
    inputs = browser.find_elements("css selector", "#input-form input")
    assert [i.get_attribute("name") for i in inputs] == names
    # Beside each field, as the model's schema gives them: the training split's mean +- 2
    # sd, the range the model accepts, the unit.
    radius = real_inputs["all_records"][:, 0]
    typical = [max(0.0, float(f"{radius.mean() + k * radius.std():.3g}")) for k in (-2, 2)]
    assert _find(browser, "#feature-0-hint").text == f"typical in training {typical[0]:g} to {typical[1]:g} · accepted -210 to 240 · mm"
    for element in inputs:
        element.send_keys(repr(record[element.get_attribute("name")]))
    _submit(browser)
    _visible(browser, "#why table")
    _assert_shows(_shown_answer(browser), _api_answer(page, "records", record))
    screenshot(browser, "record-answer")
    # A field left empty is sent as unknown (null), which the model imputes.
    browser.find_elements("css selector", "#input-form input")[3].clear()
    _submit(browser)
    _assert_shows(_shown_answer(browser), _api_answer(page, "records", {**record, names[3]: None}))


def test_an_ecg_series_pasted_is_plotted_with_its_saliency(page, real_inputs):
    browser = page["browser"]
    series = [float(v) for v in real_inputs["signals"][0]]
    _open_model(page, "ecg")
    box = _find(browser, "#signal-values")
    browser.execute_script("arguments[0].value = arguments[1]", box, ", ".join(map(repr, series)))
    _find(browser, "#predict").click()
    _wait(browser, lambda b: b.execute_script(
        "const c = document.getElementById('series'); return c && c.dataset.overlay === 'saliency'"))
    _assert_shows(_shown_answer(browser), _api_answer(page, "ecg", series))
    screenshot(browser, "ecg-answer")
    # Too short a series: the API's message, not a broken plot.
    browser.execute_script("arguments[0].value = '1, 2, 3'", box)
    _submit(browser)
    problem = _visible(browser, "#problem")
    expected = page["api"].post("/v1/models/ecg/predict", json={"instances": [[1.0, 2.0, 3.0]], "explain": True})
    assert expected.status_code == 422 and problem.text == expected.json()["detail"]


def test_an_icu_stay_uploaded_as_csv_is_answered_as_the_api_answers(page, tmp_path):
    browser = page["browser"]
    upload = tmp_path / "stay.csv"
    upload.write_text("time,variable,value\n00:15,HR,88\n01:05,HR,104\n01:30,Temp,38.1\n95,HR,97\n")
    _open_model(page, "icu")
    _find(browser, "#static-0").send_keys("67")
    _find(browser, "#observations-file").send_keys(str(upload))
    _submit(browser)
    _visible(browser, "#why ol")
    stay = {"static": {"Age": 67.0}, "observations": [
        {"time": "00:15", "variable": "HR", "value": 88.0}, {"time": "01:05", "variable": "HR", "value": 104.0},
        {"time": "01:30", "variable": "Temp", "value": 38.1}, {"time": 95, "variable": "HR", "value": 97.0}]}
    _assert_shows(_shown_answer(browser), _api_answer(page, "icu", stay))
    screenshot(browser, "icu-answer")
    # A variable the model does not know: the API's message, naming the field, not the value.
    upload.write_text("time,variable,value\n00:15,Lactate,2.5\n")
    _find(browser, "#observations-file").send_keys(str(upload))
    _submit(browser)
    expected = page["api"].post("/v1/models/icu/predict", json={"instances": [
        {"static": {"Age": 67.0}, "observations": [{"time": "00:15", "variable": "Lactate", "value": 2.5}]}]})
    assert expected.status_code == 422 and _visible(browser, "#problem").text == expected.json()["detail"]


def test_a_note_is_answered_with_its_words_highlighted(page):
    browser = page["browser"]
    note = "Fever and cough for three days, no chest pain."
    _open_model(page, "notes")
    _find(browser, "#note").send_keys(note)
    _submit(browser)
    highlighted = _visible(browser, "#attributions")
    answer = _api_answer(page, "notes", {"text": note})
    _assert_shows(_shown_answer(browser), answer)
    spans = highlighted.find_elements("css selector", "span")
    assert [s.text for s in spans] == [t["token"].removeprefix("##") for t in answer["explanation"]["tokens"]]
    strongest = max(answer["explanation"]["tokens"], key=lambda t: abs(t["weight"]))
    assert any(s.get_attribute("title") == f"weight {strongest['weight']:.3f}" for s in spans)
    screenshot(browser, "note-answer")


def test_the_page_fits_a_narrow_screen(page, real_inputs, tmp_path):
    browser = page["browser"]
    browser.set_window_size(390, 844)
    try:
        _sign_in(page)
        _visible(browser, ".card")
        overflow = "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
        assert browser.execute_script(overflow) <= 0
        screenshot(browser, "models-narrow")
        upload = tmp_path / "case.png"
        upload.write_bytes(_png(real_inputs["images"][0]))
        _open_model(page, "ultrasound")
        _find(browser, "#image-file").send_keys(str(upload))
        _find(browser, "#predict").click()
        _visible(browser, "#overlay")
        assert browser.execute_script(overflow) <= 0
        screenshot(browser, "image-answer-narrow")
    finally:
        browser.set_window_size(1280, 1000)


def test_nothing_typed_reaches_the_logs(page):
    time.sleep(2)  # let the log files flush (the record test typed CANARY)
    import ray

    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    leaked = [p.name for p in logs.rglob("*") if p.is_file() and repr(CANARY).encode() in p.read_bytes()]
    assert not leaked
