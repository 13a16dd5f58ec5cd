"""Model presets for clinical time series (B, T, V, 3): GRU-D against the paper's formulas,
the time transformer's masking and attention, the signal presets on time series, the
registry's choices and errors, stored configs, and learning a small synthetic task."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medray.cluster.errors import ConfigError
from support.training import train_to_accuracy
from medray.train.models import (
    InputSpec,
    ModelConfigError,
    build_model,
    build_model_from_config,
    model_config_for,
)

STEP_DAYS = 1 / 24  # one hourly step, in days: delta's unit
ICU = InputSpec("timeseries", (48, 5, 3))
TIMESERIES_PRESETS = [("rnn", "seed"), ("rnn", "bigru"), ("rnn", "grud"), ("attention", "time_transformer")]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    # As in test_models.py: one intra-op thread is steady on a shared runner.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(family, preset, spec=ICU, num_classes=2, seed=0):
    torch.manual_seed(seed)
    return build_model(family, preset, spec, num_classes)


def _grid(observations: dict[tuple[int, int], float], steps: int, variables: int) -> np.ndarray:
    """(T, V, 3) from {(step, variable): standardised value}, by the modality's definition:
    the value forward-filled (0 before the first observation), the mask, and GRU-D's
    delta_0 = 0, delta_t = step + delta_{t-1} if unobserved at t-1 else step (days)."""
    grid = np.zeros((steps, variables, 3))
    for v in range(variables):
        last = delta = 0.0
        for t in range(steps):
            if t > 0:
                delta = STEP_DAYS if grid[t - 1, v, 1] else delta + STEP_DAYS
            if (t, v) in observations:
                last = observations[t, v]
                grid[t, v, 1] = 1.0
            grid[t, v, 0], grid[t, v, 2] = last, delta
    return grid


def _random_patients(n, steps, variables, seed, rate=0.3):
    """Per patient {(step, variable): value}: each variable observed in each hour with
    probability `rate`, values standard normal; the last variable is a static (step 0)."""
    rng = np.random.default_rng(seed)
    patients = []
    for _ in range(n):
        seen = rng.random((steps, variables - 1)) < rate
        obs = {(t, v): float(rng.normal()) for t, v in zip(*np.nonzero(seen))}
        obs[0, variables - 1] = float(rng.normal())
        patients.append(obs)
    return patients


def _batch(patients, steps, variables):
    return torch.tensor(np.stack([_grid(p, steps, variables) for p in patients]), dtype=torch.float32)


# --- GRU-D ------------------------------------------------------------------------


def _sigmoid(a):
    return 1 / (1 + np.exp(-a))


def test_grud_state_follows_the_papers_formulas_step_by_step():
    steps, variables, hidden = 3, 2, 4
    # Variable 0 observed at steps 0 and 2 (missing at 1); variable 1 only at step 1.
    observations = {(0, 0): 1.5, (2, 0): -0.7, (1, 1): 2.0}
    x = torch.tensor(_grid(observations, steps, variables)[None])  # (1, 3, 2, 3)
    rng = np.random.default_rng(3)
    # Decay per variable: variable 0 decays at step 1; variable 1's w * delta + b stays
    # below 0 at step 2, where the max(0, .) keeps its last value undecayed.
    w_x, b_x = np.array([4.0, 0.5]), np.array([-0.05, -0.2])
    W_h, b_h = rng.normal(size=(hidden, variables)) * 3, rng.normal(size=hidden) * 0.1
    # The paper's GRU-D weights per gate g in (r, z, n): W_g on x_hat, V_g on the mask,
    # U_g on the decayed state, and biases.
    W, V, U = ({g: rng.normal(size=(hidden, cols)) for g in "rzn"} for cols in (variables, variables, hidden))
    b_in, b_hid = ({g: rng.normal(size=hidden) for g in "rzn"} for _ in range(2))

    model = build_model("rnn", "grud", InputSpec("timeseries", (steps, variables, 3)), 2,
                        {"hidden_size": hidden}).double().eval()
    encoder = model.encoder
    with torch.no_grad():
        encoder.input_decay_weight.copy_(torch.tensor(w_x))
        encoder.input_decay_bias.copy_(torch.tensor(b_x))
        encoder.hidden_decay.weight.copy_(torch.tensor(W_h))
        encoder.hidden_decay.bias.copy_(torch.tensor(b_h))
        # GRUCell's rows are the (r, z, n) gates; its input is [x_hat, m].
        encoder.cell.weight_ih.copy_(torch.tensor(np.concatenate([np.hstack([W[g], V[g]]) for g in "rzn"])))
        encoder.cell.weight_hh.copy_(torch.tensor(np.concatenate([U[g] for g in "rzn"])))
        encoder.cell.bias_ih.copy_(torch.tensor(np.concatenate([b_in[g] for g in "rzn"])))
        encoder.cell.bias_hh.copy_(torch.tensor(np.concatenate([b_hid[g] for g in "rzn"])))
        state = encoder(x)[0].numpy()

    # The reference reads the raw observations, not the model's value channel.
    h, x_last, delta = np.zeros(hidden), np.zeros(variables), np.zeros(variables)
    m_prev = np.zeros(variables)
    for t in range(steps):
        if t > 0:
            delta = np.where(m_prev == 1, STEP_DAYS, delta + STEP_DAYS)
        m = np.array([float((t, v) in observations) for v in range(variables)])
        x_t = np.array([observations.get((t, v), 0.0) for v in range(variables)])
        gamma_x = np.exp(-np.maximum(0, w_x * delta + b_x))
        x_hat = m * x_t + (1 - m) * (gamma_x * x_last + (1 - gamma_x) * 0.0)  # x_mean = 0
        gamma_h = np.exp(-np.maximum(0, W_h @ delta + b_h))
        h_hat = gamma_h * h
        gate = {g: W[g] @ x_hat + V[g] @ m + b_in[g] for g in "rzn"}
        r = _sigmoid(gate["r"] + U["r"] @ h_hat + b_hid["r"])
        z = _sigmoid(gate["z"] + U["z"] @ h_hat + b_hid["z"])
        # torch's GRU: the reset gate scales U h + b (the paper: U (r * h)), and z keeps
        # the old state (the paper's z, relabelled 1 - z).
        candidate = np.tanh(gate["n"] + r * (U["n"] @ h_hat + b_hid["n"]))
        h = (1 - z) * candidate + z * h_hat
        x_last = np.where(m == 1, x_t, x_last)
        m_prev = m
    # The decays and their clipping matter here (else the test could not tell them apart
    # from a plain GRU or an unclipped exp).
    assert np.abs(gamma_h - 1).max() > 0.1 and (W_h @ delta + b_h < 0).any()
    np.testing.assert_allclose(state, h, rtol=0, atol=1e-6)


def test_grud_input_decay_leaves_observed_values_and_forgets_old_ones():
    model = _model("rnn", "grud").eval()
    encoder = model.encoder
    with torch.no_grad():
        encoder.input_decay_weight.fill_(2.0)
        encoder.input_decay_bias.fill_(0.0)
    x = _batch(_random_patients(4, 48, 5, seed=1), 48, 5)
    observed = x.clone()
    observed[..., 1] = 1.0  # every variable observed at every step, with old deltas
    observed[..., 2] = 5.0
    with torch.no_grad():
        torch.testing.assert_close(encoder.decayed_inputs(observed), observed[..., 0], rtol=0, atol=0)
        stale = x.clone()
        stale[..., 1] = 0.0  # nothing observed, each value last seen 1,000 days ago
        stale[..., 2] = 1000.0
        assert encoder.decayed_inputs(stale).abs().max() < 1e-12  # back to the mean, 0
        fresh = stale.clone()
        fresh[..., 2] = 0.0  # no time passed: the last observation, undecayed
        torch.testing.assert_close(encoder.decayed_inputs(fresh), x[..., 0])


# --- The time transformer --------------------------------------------------------


def _time_transformer_input(n, steps, variables, empty_step, seed=0):
    """Random patients with nothing observed at `empty_step` (forward-filled values and
    grown deltas only, as the grid has it)."""
    patients = _random_patients(n, steps, variables, seed, rate=0.5)
    for obs in patients:
        for key in [k for k in obs if k[0] == empty_step]:
            del obs[key]
    return _batch(patients, steps, variables)


def test_time_transformer_ignores_what_an_empty_step_holds():
    model = _model("attention", "time_transformer").eval()
    x = _time_transformer_input(6, 48, 5, empty_step=7)
    assert x[:, 7, :, 1].sum() == 0
    changed = x.clone()
    changed[:, 7, :, 0] += 10.0
    changed[:, 7, :, 2] += 3.0
    seen = x.clone()
    seen[:, 8, :, 0] += 10.0  # the same change at an observed step does show
    with torch.no_grad():
        logits = model(x)
        torch.testing.assert_close(model(changed), logits)
        torch.testing.assert_close(model.features_and_logits(changed)[0], model.features_and_logits(x)[0])
        assert not torch.allclose(model(seen), logits)


def test_time_transformer_attention_is_a_distribution_over_observed_steps():
    model = _model("attention", "time_transformer").eval()
    x = _time_transformer_input(6, 48, 5, empty_step=7)
    x[0, 0, :, 1] = 0.0  # patient 0: nothing at step 0, which still stays a token
    with torch.no_grad():
        weights = model.attention_weights(x)
    assert weights.shape == (6, 48)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(6))
    empty = x[..., 1].sum(dim=-1) == 0
    empty[:, 0] = False
    assert empty[:, 7].all() and empty.sum() > 6  # step 7, and some random empty steps
    assert (weights[empty] == 0).all()
    assert (weights[~empty] > 0).all()
    assert not torch.allclose(weights[1], weights[2])


def test_time_transformer_takes_shorter_series_and_refuses_longer_ones():
    model = _model("attention", "time_transformer", num_classes=3).eval()
    with torch.no_grad():
        assert model(_batch(_random_patients(4, 48, 5, seed=2), 48, 5)).shape == (4, 3)
        short = _batch(_random_patients(4, 20, 5, seed=2), 20, 5)
        assert model(short).shape == (4, 3)
        assert model.attention_weights(short).shape == (4, 20)
        with pytest.raises(ValueError, match="at most 48 steps, got 60"):
            model(_batch(_random_patients(1, 60, 5, seed=2), 60, 5))


def _randomize(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    model.double().eval()
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.copy_(0.3 * torch.randn(tensor.shape, generator=gen, dtype=tensor.dtype))
    return model


def test_time_transformer_matches_a_reference_with_empty_steps_masked():
    spec = InputSpec("timeseries", (10, 4, 3))
    model = _randomize(_model("attention", "time_transformer", spec))
    sd, heads = model.state_dict(), 4
    x = _time_transformer_input(3, 10, 4, empty_step=3, seed=5).double()
    B, T, D = 3, 10, 64

    def norm(h, prefix):
        return F.layer_norm(h, (D,), sd[f"{prefix}.weight"], sd[f"{prefix}.bias"])

    tokens = x.reshape(B, T, 12) @ sd["encoder.tokenizer.weight"].T + sd["encoder.tokenizer.bias"]
    h = torch.cat([tokens + sd["encoder.time_embedding"], sd["encoder.cls"].expand(B, 1, D)], dim=1)
    keys = torch.cat([x[..., 1].sum(-1) > 0, torch.ones(B, 1, dtype=torch.bool)], dim=1)
    keys[:, 0] = True
    for i in range(2):
        p = f"encoder.blocks.{i}"
        a = h if i == 0 else norm(h, f"{p}.attention_norm")
        q, k, v = (a @ sd[f"{p}.attention.in_proj_weight"].T + sd[f"{p}.attention.in_proj_bias"]).chunk(3, -1)
        q, k, v = (t.reshape(B, T + 1, heads, D // heads).transpose(1, 2) for t in (q, k, v))
        scores = (q @ k.transpose(-1, -2) / (D // heads) ** 0.5).masked_fill(~keys[:, None, None, :], -torch.inf)
        weights = scores.softmax(dim=-1)  # (B, heads, T+1, T+1)
        mixed = (weights @ v).transpose(1, 2).reshape(B, T + 1, D)
        h = h + mixed @ sd[f"{p}.attention.out_proj.weight"].T + sd[f"{p}.attention.out_proj.bias"]
        value, gate = (norm(h, f"{p}.ffn_norm") @ sd[f"{p}.ffn.0.weight"].T + sd[f"{p}.ffn.0.bias"]).chunk(2, -1)
        h = h + (value * gate.relu()) @ sd[f"{p}.ffn.3.weight"].T + sd[f"{p}.ffn.3.bias"]
    cls = norm(h[:, -1], "encoder.readout.0").relu()
    from_cls = weights.mean(dim=1)[:, -1, :-1]
    with torch.no_grad():
        torch.testing.assert_close(model(x), cls @ sd["head.weight"].T + sd["head.bias"])
        torch.testing.assert_close(model.attention_weights(x), from_cls / from_cls.sum(-1, keepdim=True))


# --- The signal presets on time series ------------------------------------------------


@pytest.mark.parametrize("preset", ["seed", "bigru"])
def test_signal_presets_read_each_steps_variables_flattened(preset):
    model = _model("rnn", preset).eval()
    as_signal = _model("rnn", preset, InputSpec("signal", (48, 15))).eval()
    as_signal.load_state_dict(model.state_dict())  # the same weights: 5 variables x 3 channels
    x = _batch(_random_patients(3, 48, 5, seed=4), 48, 5)
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (3, 2)
        torch.testing.assert_close(logits, as_signal(x.reshape(3, 48, 15)))
        assert model.features_and_logits(x)[0].shape == (3, 64)


# --- The registry -------------------------------------------------------------------


@pytest.mark.parametrize("family,preset,spec,needles", [
    ("rnn", "grud", InputSpec("signal", (96, 1)),
     ["'rnn'", "'grud'", "takes timeseries", "not 'signal'", "for signal use: cnn (inception_time); rnn (seed, bigru)"]),
    ("attention", "time_transformer", InputSpec("tabular", (13,)),
     ["'attention'", "'time_transformer'", "takes timeseries", "not 'tabular'",
      "for tabular use: attention (seed, ft_transformer)"]),
    ("cnn", "resnet", ICU,
     ["'cnn'", "'resnet'", "not 'timeseries'", "rnn (seed, bigru, grud); attention (time_transformer)"]),
    ("rnn", "grud", InputSpec("timeseries", (48, 5, 2)), ["grud", "value, mask, delta", "in_channels=2"]),
])
def test_registry_refuses_a_preset_for_an_input_it_does_not_take(family, preset, spec, needles):
    with pytest.raises(ModelConfigError) as raised:
        model_config_for(family, preset, spec, 2)
    assert isinstance(raised.value, ConfigError)
    for needle in needles:
        assert needle in str(raised.value), (needle, str(raised.value))


def test_configs_record_the_time_series_shape():
    assert dataclasses.asdict(model_config_for("rnn", "grud", ICU, 2)) == {
        "preset": "grud", "seq_len": 48, "in_channels": 3, "num_classes": 2, "num_variables": 5,
        "vocab_size": None, "embedding_dim": None,
        "hidden_size": 64, "num_layers": None, "input_proj_size": None, "conv_channels": None,
        "conv_kernel": None, "conv_layers": None, "conv_pool": None, "dense_units": 64, "dropout": 0.3,
    }
    transformer = model_config_for("attention", "time_transformer", ICU, 2)
    assert (transformer.num_features, transformer.seq_len, transformer.num_variables,
            transformer.in_channels) == (None, 48, 5, 3)
    assert model_config_for("rnn", "seed", InputSpec("signal", (96, 1)), 2).num_variables is None


@pytest.mark.parametrize("family,preset", TIMESERIES_PRESETS)
def test_time_series_models_rebuild_from_their_stored_config(family, preset):
    model = _model(family, preset)
    stored = json.loads(json.dumps(dataclasses.asdict(model.config)))
    torch.manual_seed(123)
    rebuilt = build_model_from_config(family, stored)
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.config == model.config
    x = _batch(_random_patients(4, 48, 5, seed=6), 48, 5)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), rebuilt.eval()(x))


# Configs as checkpoints stored them before the registry took time series (no
# num_variables in RNNConfig; num_features but no seq_len etc. in AttentionConfig).
STORED_BEFORE = [
    ("rnn", InputSpec("signal", (96, 1)), {
        "preset": "bigru", "seq_len": 96, "in_channels": 1, "num_classes": 2, "hidden_size": 64,
        "num_layers": 2, "input_proj_size": 0, "conv_channels": 0, "conv_kernel": 7, "conv_layers": 1,
        "conv_pool": 1, "dense_units": 64, "dropout": 0.2}),
    ("rnn", InputSpec("signal", (96, 1)), {
        "preset": "seed", "seq_len": 96, "in_channels": 1, "num_classes": 2, "hidden_size": 128,
        "num_layers": 1, "input_proj_size": None, "conv_channels": None, "conv_kernel": None,
        "conv_layers": None, "conv_pool": None, "dense_units": 64, "dropout": 0.0}),
    ("attention", InputSpec("tabular", (13,)), {
        "preset": "ft_transformer", "num_features": 13, "num_classes": 2, "dims": None, "dropout": None,
        "d_token": 64, "n_layers": 3, "n_heads": 8, "ffn_factor": 4 / 3, "attention_dropout": 0.2,
        "ffn_dropout": 0.1, "residual_dropout": 0.0}),
    ("attention", InputSpec("tabular", (13,)), {
        "preset": "seed", "num_features": 13, "num_classes": 2, "dims": [128, 64], "n_heads": 4,
        "dropout": 0.0, "d_token": None, "n_layers": None, "ffn_factor": None,
        "attention_dropout": None, "ffn_dropout": None, "residual_dropout": None}),
]


@pytest.mark.parametrize("family,spec,stored", STORED_BEFORE, ids=lambda v: v.get("preset") if isinstance(v, dict) else None)
def test_configs_stored_before_time_series_rebuild_unchanged(family, spec, stored):
    today = _model(family, stored["preset"], spec)
    rebuilt = build_model_from_config(family, stored)
    assert rebuilt.config == today.config
    rebuilt.load_state_dict(today.state_dict())  # strict: the same layers and shapes
    x = torch.randn(3, *spec.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), today.eval()(x))


# --- Learning ---------------------------------------------------------------------


@pytest.mark.parametrize("family,preset", [("rnn", "grud"), ("attention", "time_transformer")])
def test_learns_whether_a_variable_was_ever_observed_above_a_level(family, preset):
    """The label is whether variable 0 was ever seen above 1.5 (about 4 in 10 patients):
    what one observation among forward-filled hours decides, as a lab's peak would."""
    steps, variables = 24, 4
    patients = _random_patients(256, steps, variables, seed=7)
    x = _batch(patients, steps, variables)
    y = torch.tensor([int(any(v > 1.5 for (t, var), v in p.items() if var == 0)) for p in patients])
    assert 0.25 < y.float().mean() < 0.6
    model = _model(family, preset, InputSpec("timeseries", (steps, variables, 3)))
    accuracy, step = train_to_accuracy(model, x, y, lr=1e-2, target=0.95)
    assert accuracy > 0.9, f"{family}/{preset}: {accuracy:.0%} after {step} steps"
