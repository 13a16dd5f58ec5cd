// medray's web page: a clinician tries a served model.
//
// Everything here goes through the same API as any client (/v1/models, /v1/models/NAME/predict
// with the bearer token), so the page has no powers of its own and no side door. The token
// lives in sessionStorage (this tab only, gone when it closes); nothing typed or uploaded is
// stored, logged or sent anywhere but this server. No third-party code: the page works offline.
"use strict";

const TOKEN_KEY = "medray.token";
// Where the application is mounted (its route prefix, "" at the root): the API lies beside the page.
const ROOT = document.documentElement.dataset.root || "";
const state = { models: [] };

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function $(id) {
  return document.getElementById(id);
}

// An element with attributes and children; strings become text nodes (never HTML).
function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = "Bearer " + token;
  let response;
  try {
    response = await fetch(ROOT + path, { ...options, headers, cache: "no-store" });
  } catch (error) {
    throw new ApiError(0, "The server could not be reached.");
  }
  let body = null;
  try {
    body = await response.json();
  } catch (error) {
    body = null;
  }
  if (!response.ok) {
    const message = body && (body.detail || body.error);
    throw new ApiError(response.status, message || `The server answered ${response.status}.`);
  }
  return body;
}

function predict(model, instance) {
  return api(`/v1/models/${encodeURIComponent(model.name)}/predict`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ instances: [instance], explain: true }),
  });
}

// Signing in and the model list ---------------------------------------------------------

async function loadModels() {
  try {
    state.models = (await api("/v1/models")).models;
  } catch (error) {
    if (error.status === 401) {
      const refused = sessionStorage.getItem(TOKEN_KEY) !== null;
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin(refused ? "The token was refused: " + error.message : null);
    } else {  // not a token problem: say what the server said, with no form to retry in
      showLogin(error.message);
      $("login-form").hidden = true;
    }
    return;
  }
  $("login").hidden = true;
  $("logout").hidden = sessionStorage.getItem(TOKEN_KEY) === null;
  renderModelList();
  route();
}

function showLogin(problem) {
  for (const id of ["models", "try"]) $(id).hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("login-form").hidden = false;
  showProblem($("login-problem"), problem);
  $("token").focus();
}

async function signIn(event) {
  event.preventDefault();
  const token = $("token").value.trim();
  $("token").value = "";
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  await loadModels();
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  state.models = [];
  $("model-list").replaceChildren();
  location.hash = "";
  showLogin(null);
}

const METRIC_NAMES = {
  auroc: "AUROC", accuracy: "accuracy", sensitivity: "sensitivity", specificity: "specificity",
  ece_calibrated: "calibration error (ECE)",
};

function fixed(value, digits = 3) {
  return typeof value === "number" ? value.toFixed(digits) : "n/a";
}

function percent(value) {
  return (100 * value).toFixed(1) + "%";
}

function metricRows(card) {
  const metrics = (card && card.test_metrics) || {};
  const rows = [];
  for (const [key, name] of Object.entries(METRIC_NAMES)) {
    if (typeof metrics[key] !== "number") continue;
    let shown = fixed(metrics[key]);
    if (key === "auroc" && Array.isArray(metrics.auroc_ci)) {
      shown += ` (95% CI ${fixed(metrics.auroc_ci[0])}-${fixed(metrics.auroc_ci[1])})`;
    }
    rows.push(el("tr", {}, el("th", { scope: "row" }, name), el("td", { dataset: { metric: key } }, shown)));
  }
  if (!rows.length) return el("p", { class: "muted" }, "No test metrics were registered with this version.");
  const caption = "Test split" + (typeof metrics.n === "number" ? `, n = ${metrics.n}` : "");
  return el("table", { class: "metrics" }, el("caption", {}, caption), el("tbody", {}, rows));
}

function renderModelList() {
  const cards = state.models.map((model) => {
    const card = model.card || {};
    return el("article", { class: "card", dataset: { model: model.name } },
      el("h3", {}, `${model.name} `, el("span", { class: "version" }, `v${model.version}`)),
      el("p", { class: "muted" }, `${model.modality} · ${model.family} · dataset ${model.dataset} · classes: `
        + model.classes.join(", ")),
      el("p", { class: "intended" }, card.intended_use || "No intended use was registered with this version."),
      metricRows(card),
      el("a", { class: "button", href: `#model/${encodeURIComponent(model.name)}` }, "Try this model"));
  });
  $("model-list").replaceChildren(...(cards.length ? cards : [el("p", {}, "No model is served.")]));
}

function route() {
  const match = location.hash.match(/^#model\/(.+)$/);
  const model = match && state.models.find((m) => m.name === decodeURIComponent(match[1]));
  if (model) showModel(model);
  else {
    $("try").hidden = true;
    $("models").hidden = false;
  }
}

// One model: its input form --------------------------------------------------------------

function showModel(model) {
  $("models").hidden = true;
  $("try").hidden = false;
  $("answer").hidden = true;
  showProblem($("problem"), null);
  $("try-title").textContent = `${model.name} v${model.version}`;
  const threshold = typeof model.threshold === "number" ? `, threshold ${fixed(model.threshold)} on P(${model.classes[1]})` : "";
  const coverage = typeof model.coverage === "number" ? `, prediction sets at ${percent(model.coverage)} coverage` : "";
  $("try-summary").textContent = `${model.modality} model (${model.family})${threshold}${coverage}.`;
  const form = $("input-form");
  const build = FORMS[model.input.type];
  form.replaceChildren();
  form.onsubmit = null;
  if (!build) {
    form.append(el("p", {}, "This page has no form for this model's input; use the API."));
    return;
  }
  const read = build(model, form);
  form.append(el("button", { type: "submit", id: "predict" }, "Predict"));
  form.onsubmit = async (event) => {
    event.preventDefault();
    showProblem($("problem"), null);
    $("answer").hidden = true;
    const button = $("predict");
    button.disabled = true;
    try {
      const instance = await read();
      const answer = await predict(model, instance);
      showAnswer(model, answer.predictions[0], instance);
    } catch (error) {
      showProblem($("problem"), error.message);
    } finally {
      button.disabled = false;
    }
  };
}

class InputProblem extends Error {}

function field(label, input, hint) {
  const id = input.id;
  return el("div", { class: "field" }, el("label", { for: id }, label), input,
    hint ? el("small", { id: id + "-hint" }, hint) : null);
}

function fileText(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new InputProblem("The file could not be read."));
    reader.readAsText(file);
  });
}

function fileBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).replace(/^data:[^,]*,/, ""));
    reader.onerror = () => reject(new InputProblem("The file could not be read."));
    reader.readAsDataURL(file);
  });
}

// `typical`: the training split's mean +- 2 sd; `range`: what the model accepts at all.
function rangeHint(feature) {
  const parts = [];
  if (Array.isArray(feature.typical)) parts.push(`typical in training ${feature.typical[0]} to ${feature.typical[1]}`);
  if (Array.isArray(feature.range)) parts.push(`accepted ${feature.range[0]} to ${feature.range[1]}`);
  if (feature.unit) parts.push(feature.unit);
  return parts.join(" · ");
}

// A number or category input per feature; `read()` gives {name: value or null}.
function featureInputs(features, form, prefix) {
  const inputs = features.map((feature, index) => {
    const id = `${prefix}-${index}`;
    let input;
    if (Array.isArray(feature.categories)) {
      input = el("select", { id, name: feature.name },
        el("option", { value: "" }, "unknown"), feature.categories.map((c) => el("option", { value: c }, c)));
    } else {
      input = el("input", { id, name: feature.name, type: "number", step: "any", inputmode: "decimal",
                            "aria-describedby": id + "-hint" });
      if (Array.isArray(feature.range)) {
        input.min = feature.range[0];
        input.max = feature.range[1];
      }
    }
    form.append(field(feature.name, input, Array.isArray(feature.categories)
      ? "one of the categories seen in training" : rangeHint(feature)));
    return [feature, input];
  });
  return () => {
    const record = {};
    for (const [feature, input] of inputs) {
      if (input.value === "") {
        if (input.validity && input.validity.badInput) throw new InputProblem(`${feature.name}: not a number`);
        record[feature.name] = null;  // unknown: the model imputes it as it did in training
      } else {
        record[feature.name] = Array.isArray(feature.categories) ? input.value : Number(input.value);
      }
    }
    return record;
  };
}

function numbersIn(text) {
  return text.split(/[\s,;]+/).filter((t) => t !== "").map(Number);
}

const FORMS = {
  image(model, form) {
    const input = el("input", { id: "image-file", type: "file", required: true,
                                accept: ".png,.jpg,.jpeg,.dcm,.dicom,image/png,image/jpeg,application/dicom" });
    const shape = model.input;
    form.append(field("Image (PNG, JPEG or DICOM)", input,
      `the model sees it as ${shape.width} x ${shape.height} pixels, ${shape.channels === 1 ? "greyscale" : "colour"}`));
    return async () => {
      if (!input.files.length) throw new InputProblem("Choose an image file first.");
      return fileBase64(input.files[0]);
    };
  },

  signal(model, form) {
    const shape = model.input;
    const text = el("textarea", { id: "signal-values", rows: 6, spellcheck: "false",
                                  placeholder: "numbers separated by commas, spaces or new lines" });
    const upload = el("input", { id: "signal-file", type: "file", accept: ".csv,.txt,text/csv,text/plain" });
    upload.addEventListener("change", async () => {
      if (upload.files.length) text.value = await fileText(upload.files[0]);
    });
    const ranges = (shape.value_ranges || []).map((r) => `${r[0]} to ${r[1]}`).join("; ");
    form.append(field(`Series: ${shape.length} time steps` + (shape.channels > 1 ? `, ${shape.channels} values each (one line per step)` : ""),
      text, ranges ? `training range ${ranges}` : null));
    form.append(field("or a CSV / text file", upload));
    return async () => {
      if (shape.channels === 1) return numbersIn(text.value);
      return text.value.split(/\n/).map((line) => line.trim()).filter((line) => line).map(numbersIn);
    };
  },

  record(model, form) {
    return featureInputs(model.input.features, form, "feature");
  },

  patient_timeseries(model, form) {
    const statics = featureInputs(model.input.statics, form, "static");
    const upload = el("input", { id: "observations-file", type: "file", required: true, accept: ".csv,text/csv" });
    const names = model.input.variables.map((v) => v.name).join(", ");
    form.append(field("Observations (CSV with columns time, variable, value)", upload,
      `time as HH:MM or minutes from admission, the first ${model.input.window_minutes / 60} hours; variables: ${names}`));
    return async () => {
      if (!upload.files.length) throw new InputProblem("Choose the observations CSV first.");
      return { static: statics(), observations: observationsFrom(await fileText(upload.files[0])) };
    };
  },

  text(model, form) {
    const text = el("textarea", { id: "note", rows: 10, maxlength: model.input.max_characters, required: true });
    form.append(field("Note", text, model.input.truncation));
    return async () => ({ text: text.value });
  },
};

// The observations CSV as the API takes it; problems name the line and the column, not the cell.
function observationsFrom(csv) {
  const lines = csv.split(/\r?\n/).filter((line) => line.trim() !== "");
  if (!lines.length) throw new InputProblem("observations file: it is empty");
  const header = lines[0].split(",").map((h) => h.trim().toLowerCase());
  const where = Object.fromEntries(["time", "variable", "value"].map((c) => [c, header.indexOf(c)]));
  const missing = Object.keys(where).filter((c) => where[c] < 0);
  if (missing.length) throw new InputProblem(`observations file: the header lacks ${missing.join(", ")}`);
  return lines.slice(1).map((line, index) => {
    const cells = line.split(",").map((c) => c.trim());
    const value = Number(cells[where.value]);
    if (cells[where.value] === undefined || cells[where.value] === "" || !Number.isFinite(value)) {
      throw new InputProblem(`observations file: line ${index + 2}: value is not a number`);
    }
    const time = cells[where.time] || "";
    return { time: time.includes(":") ? time : Number(time), variable: cells[where.variable], value };
  });
}

// The answer ----------------------------------------------------------------------------------

function showProblem(node, message) {
  node.textContent = message || "";
  node.hidden = !message;
}

function showAnswer(model, prediction, instance) {
  const reasons = [];
  if (prediction.out_of_distribution) reasons.push("the input is unlike the data the model was trained on");
  if (Array.isArray(prediction.prediction_set) && prediction.prediction_set.length > 1) {
    reasons.push(`the model is unsure: its prediction set at ${percent(prediction.coverage)} coverage holds `
      + `${prediction.prediction_set.length} classes`);
  }
  const refer = prediction.refer_to_clinician || prediction.out_of_distribution;
  const referral = $("referral");
  referral.hidden = !refer;
  referral.textContent = refer ? "Refer to a clinician: " + (reasons.join("; ") || "the model says so") + "." : "";

  $("label").textContent = prediction.label;
  const rows = model.classes.map((name) => {
    const raw = prediction.probabilities[name];
    const calibrated = prediction.calibrated_probabilities[name];
    return el("tr", { dataset: { class: name } }, el("th", { scope: "row" }, name),
      el("td", { class: "raw", dataset: { value: raw } }, percent(raw)),
      el("td", { class: "calibrated", dataset: { value: calibrated } }, bar(calibrated), percent(calibrated)));
  });
  $("probabilities").tBodies[0].replaceChildren(...rows);

  const set = prediction.prediction_set;
  $("prediction-set").textContent = Array.isArray(set)
    ? `Conformal prediction set at ${percent(prediction.coverage)} coverage: {${set.join(", ")}}`
    : "This version gives no prediction set.";
  $("prediction-set").dataset.set = Array.isArray(set) ? JSON.stringify(set) : "";
  const ood = $("ood");
  ood.dataset.flag = String(prediction.out_of_distribution);
  if (prediction.out_of_distribution === null || prediction.out_of_distribution === undefined) {
    ood.textContent = "Out of distribution: not checked (this version has no detector).";
  } else {
    ood.textContent = `Out of distribution: ${prediction.out_of_distribution ? "yes" : "no"}`
      + (typeof prediction.ood_score === "number" ? ` (score ${fixed(prediction.ood_score)}`
         + (model.ood && typeof model.ood.threshold === "number" ? `; flagged above ${fixed(model.ood.threshold)})` : ")")
        : "")
      + (prediction.ood_reasons && prediction.ood_reasons.length ? ": " + prediction.ood_reasons.join("; ") : "");
  }
  $("picture").replaceChildren();
  $("why").replaceChildren();
  const explanation = prediction.explanation;
  const draw = explanation && EXPLANATIONS[explanation.type];
  if (draw) draw(explanation, instance, model);
  $("answer").hidden = false;
}

function bar(value) {
  const fill = el("span", { class: "fill" });
  fill.style.width = `${Math.max(0, Math.min(1, value)) * 100}%`;  // CSSOM, allowed by the page's CSP
  return el("span", { class: "bar", "aria-hidden": "true" }, fill);
}

// Colour for a weight in [0, 1]: transparent blue to opaque red, as heat maps are read.
function heat(value) {
  const v = Math.max(0, Math.min(1, value));
  return [Math.round(255 * Math.min(1, 2 * v)), Math.round(255 * (1 - Math.abs(2 * v - 1))),
          Math.round(255 * Math.max(0, 1 - 2 * v))];
}

function loadImage(source) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = reject;
    image.src = source;
  });
}

const EXPLANATIONS = {
  async grad_cam(explanation) {
    const map = explanation.map;
    const height = map.length;
    const width = map[0].length;
    const scale = Math.max(1, Math.floor(320 / Math.max(width, height)));
    const canvas = el("canvas", { id: "overlay", width: width * scale, height: height * scale,
                                  role: "img", "aria-label": "the image as the model saw it, with the Grad-CAM overlay" });
    const toggle = el("input", { id: "show-overlay", type: "checkbox", checked: true });
    $("picture").append(canvas, el("label", { class: "toggle" }, toggle, " show where the model looked (Grad-CAM)"));
    const picture = await loadImage("data:image/png;base64," + explanation.model_input_png);
    const heatmap = document.createElement("canvas");
    heatmap.width = width;
    heatmap.height = height;
    const pixels = heatmap.getContext("2d").createImageData(width, height);
    map.forEach((row, y) => row.forEach((value, x) => {
      const [r, g, b] = heat(value);
      pixels.data.set([r, g, b, Math.round(150 * value)], 4 * (y * width + x));
    }));
    heatmap.getContext("2d").putImageData(pixels, 0, 0);
    const paint = () => {
      const context = canvas.getContext("2d");
      context.imageSmoothingEnabled = false;
      context.drawImage(picture, 0, 0, canvas.width, canvas.height);
      if (toggle.checked) {
        context.imageSmoothingEnabled = true;
        context.drawImage(heatmap, 0, 0, canvas.width, canvas.height);
      }
      canvas.dataset.overlay = toggle.checked ? "grad_cam" : "none";
    };
    toggle.addEventListener("change", paint);
    paint();
    if (!map.some((row) => row.some((value) => value > 0))) {
      $("picture").append(el("p", { class: "muted" }, "Grad-CAM found no region that raised this class's score."));
    }
  },

  saliency(explanation, instance) {
    if (explanation.per_time_step) drawSeries(instance, explanation.per_time_step);
    if (explanation.top) {
      $("why").append(el("h3", {}, "What weighed most"), el("ol", { class: "top" },
        explanation.top.map((t) => el("li", {}, `hour ${t.hour.toFixed(1)}: ${t.variable} (${fixed(t.weight)})`))));
    }
  },

  attention(explanation) {
    const ranked = Object.entries(explanation.features).sort((a, b) => b[1] - a[1]).slice(0, 10);
    const top = ranked.length ? ranked[0][1] : 1;
    $("why").append(el("h3", {}, "Features the model attended to most"), el("table", { class: "attention" },
      el("tbody", {}, ranked.map(([name, weight]) => el("tr", {}, el("th", { scope: "row" }, name),
        el("td", {}, bar(weight / top), fixed(weight)))))));
  },

  token_attributions(explanation) {
    const tokens = explanation.tokens;
    const top = Math.max(1e-12, ...tokens.map((t) => Math.abs(t.weight)));
    const note = el("p", { class: "tokens", id: "attributions" });
    tokens.forEach((t, index) => {
      const piece = t.token.startsWith("##");  // a word's continuation: no space before it
      if (index > 0 && !piece) note.append(" ");
      const span = el("span", { title: `weight ${fixed(t.weight)}` }, piece ? t.token.slice(2) : t.token);
      const strength = Math.abs(t.weight) / top;
      span.style.backgroundColor = t.weight >= 0 ? `rgba(220, 38, 38, ${0.6 * strength})` : `rgba(37, 99, 235, ${0.6 * strength})`;
      note.append(span);
    });
    $("why").append(el("h3", {}, "Words that moved the answer (red: towards the label, blue: against)"), note);
    if (explanation.truncated) {
      $("why").append(el("p", { class: "muted" }, "The note was longer than the model reads; the rest was not used."));
    }
  },
};

function drawSeries(series, weights) {
  const values = series.map((v) => (Array.isArray(v) ? v[0] : v));
  const canvas = el("canvas", { id: "series", width: 640, height: 220, role: "img",
                                "aria-label": "the series, shaded by how much each time step weighed" });
  $("picture").append(canvas);
  const context = canvas.getContext("2d");
  const low = Math.min(...values);
  const high = Math.max(...values);
  const top = Math.max(1e-12, ...weights);
  const step = canvas.width / values.length;
  weights.forEach((w, i) => {
    context.fillStyle = `rgba(220, 38, 38, ${0.5 * (w / top)})`;
    context.fillRect(i * step, 0, Math.ceil(step), canvas.height);
  });
  context.strokeStyle = "#0f172a";
  context.lineWidth = 2;
  context.beginPath();
  values.forEach((v, i) => {
    const y = canvas.height - 10 - ((v - low) / Math.max(1e-12, high - low)) * (canvas.height - 20);
    if (i === 0) context.moveTo(i * step + step / 2, y);
    else context.lineTo(i * step + step / 2, y);
  });
  context.stroke();
  canvas.dataset.overlay = "saliency";
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", signIn);
  $("logout").addEventListener("click", signOut);
  $("back").addEventListener("click", (event) => {
    event.preventDefault();
    location.hash = "";
  });
  window.addEventListener("hashchange", route);
  loadModels();
});
