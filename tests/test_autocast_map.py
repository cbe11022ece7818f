"""The autocast map and the backward underflow counter, from real steps under the plugins runs use, on the CPU.

Every dtype the map is checked against is measured here, in the test, with torch.autocast itself.
"""

from __future__ import annotations

import copy
import json

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from amp_core.inside import autocast_map
from amp_core.inside.autocast_map import module_table, plugin_for, probe_map, summarize, take
from amp_core.inside.backward_underflow import MagnitudeCounter, binade_series, shares, underflow_rows
from amp_core.inside.op_recorder import record_step
from amp_core.training.model import DemoMLP, synthetic_loader

AUTOCAST = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}
SMALL = dict(hidden=32, depth=2, batch_size=16)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def measured(device: str, dtype: torch.dtype, fn) -> torch.dtype:
    """The dtype `fn()` returns under torch.autocast(device, dtype): measured, not looked up."""
    with torch.autocast(device, dtype=dtype, cache_enabled=False):
        return fn().dtype


class LinearNorm(pl.LightningModule):
    """Linear -> LayerNorm -> Linear, to see a layer norm under autocast."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 16)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 3)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.head(self.norm(self.lin(x))), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def forward_ops(ops, module):
    return [
        o for o in ops if o["phase"] == "forward" and o["module"] == module and not o["view"] and o["op"] != "_to_copy"
    ]


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_linear_and_layer_norm_run_in_the_dtypes_autocast_gives_them(precision):
    dtype = AUTOCAST[precision]
    x = torch.randn(4, 8)
    lin, norm = nn.Linear(8, 16), nn.LayerNorm(16)
    linear_dtype = measured("cpu", dtype, lambda: lin(x))
    norm_dtype = measured("cpu", dtype, lambda: norm(lin(x)))
    plugin, _ = plugin_for(precision)
    step = record_step(LinearNorm(), (x, torch.tensor([0, 1, 2, 0])), plugin)
    (matmul,) = forward_ops(step["ops"], "lin")
    assert matmul["op"] == "addmm" and matmul["out_dtype"] == str(linear_dtype).removeprefix("torch.")
    norm_ops = forward_ops(step["ops"], "norm")
    assert [o["op"] for o in norm_ops] == ["native_layer_norm"]
    assert norm_ops[0]["out_dtype"] == str(norm_dtype).removeprefix("torch.")
    assert matmul["flops"] == 2 * 4 * 8 * 16
    if norm_dtype == torch.float32:  # autocast kept it in fp32: the summary lists it
        assert (
            "native_layer_norm"
            in summarize({"ops": step["ops"], "device": "cpu", "precision": precision})["fp32_forward_ops"]
        )


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_mlp_map_under_each_precision(precision):
    dtype = AUTOCAST[precision]
    name = str(dtype).removeprefix("torch.")
    m = take("mlp", precision, **SMALL)
    json.dumps(m, allow_nan=False)  # what the child process prints
    s = summarize(m)
    assert s["device"] == "cpu" and m["autocast_dtype"] == name
    x = torch.randn(SMALL["batch_size"], 64)
    first = nn.Linear(64, SMALL["hidden"])
    linear_dtype = str(measured("cpu", dtype, lambda: first(x))).removeprefix("torch.")
    assert [o["out_dtype"] for o in forward_ops(m["ops"], "net.0")] == [linear_dtype]
    # the loss: cross_entropy under autocast (its own autocast rule, not log_softmax's)
    logits, labels = torch.randn(4, 10, dtype=dtype), torch.tensor([0, 1, 2, 3])
    loss_dtype = measured("cpu", dtype, lambda: nn.functional.cross_entropy(logits, labels))
    loss_ops = forward_ops(m["ops"], "loss_fn")
    assert loss_ops and loss_ops[-1]["out_dtype"] == str(loss_dtype).removeprefix("torch.")
    if loss_dtype == torch.float32:
        assert set(o["op"] for o in loss_ops) <= set(s["fp32_forward_ops"])
    # FLOPs of the Linear layers, forward and backward, as the model counts them, less the gradient of
    # the input batch (it needs none, and autograd does not compute it).
    model = DemoMLP(hidden=SMALL["hidden"], depth=SMALL["depth"])
    assert (
        s["flops"] == model.matmul_flops_per_step(SMALL["batch_size"]) - 2 * SMALL["batch_size"] * 64 * SMALL["hidden"]
    )
    assert s["share_flops_16bit"] == (1.0 if linear_dtype == name else 0.0)
    linears = sum(isinstance(layer, nn.Linear) for layer in model.net)
    assert s["casts"]["forward"][f"float32 → {name}"] >= linears  # every Linear's weight is cast
    assert s["ops"]["forward"] > 0 and s["ops"]["backward"] > 0 and s["ops"]["optimizer"] > 0
    assert (m["loss_scale"] is not None) == (precision == "16-mixed")


def test_backward_ops_are_attributed_to_modules():
    m = take("mlp", "16-mixed", **SMALL)
    model = DemoMLP(hidden=SMALL["hidden"], depth=SMALL["depth"])
    known = {name or "DemoMLP" for name, _ in model.named_modules()} | {"(autograd)", "(GradScaler.scale)"}
    backward = [o for o in m["ops"] if o["phase"] == "backward"]
    assert {o["module"] for o in backward} <= known
    # the input layer's weight gradient: an mm in backward, under the node autograd made for its addmm
    first = [o for o in backward if o["module"] == "net.0"]
    assert any(o["op"] == "mm" and o["node"] == "AddmmBackward0" for o in first)
    assert any(o["node"] == "AccumulateGrad" for o in first)
    rows = {(r["phase"], r["module"]): r for r in module_table(m)}
    assert rows[("backward", "net.0")]["FLOPs"] == 2 * SMALL["batch_size"] * 64 * SMALL["hidden"]


def test_the_map_leaves_model_optimizer_and_rng_untouched():
    model = DemoMLP(hidden=16, depth=2)
    optimizer = model.configure_optimizers()
    x, y = next(iter(synthetic_loader(8, batches=1)))
    model.loss_fn(model(x), y).backward()
    optimizer.step()  # the optimizer has state now (AdamW's moments and step)
    weights = copy.deepcopy(model.state_dict())
    grads = [p.grad.clone() for p in model.parameters()]
    opt_state = copy.deepcopy(optimizer.state_dict())
    rng = torch.get_rng_state()
    plugin, _ = plugin_for("16-mixed")
    scaler_state = plugin.scaler.state_dict()
    step = record_step(model, (x, y), plugin, optimizer=optimizer)
    assert step["ops"]
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))
    after = optimizer.state_dict()
    assert after["param_groups"] == opt_state["param_groups"]
    for i, state in opt_state["state"].items():
        assert all(torch.equal(v, after["state"][i][k]) for k, v in state.items())
    assert torch.equal(rng, torch.get_rng_state())
    assert plugin.scaler.state_dict() == scaler_state


def test_underflow_counts_on_a_tensor_of_known_proportions():
    values = [0.0] * 40 + [2.0**-20] * 20 + [2.0**-15] * 10 + [2.0**-3] * 20 + [1.0] * 8 + [float("inf"), float("nan")]
    t = torch.tensor(values, dtype=torch.float16)
    counter = MagnitudeCounter()
    counter.add(t)
    entry = counter.by_dtype["float16"]
    assert shares(entry) == {"zero": 0.4, "subnormal": 0.3, "nonfinite": 0.02}
    edges, counts = binade_series(entry)
    assert edges[0] == -24 and edges[-1] == 15  # fp16: smallest subnormal 2^-24, largest binade 2^15
    assert {e: c for e, c in zip(edges, counts) if c} == {-20: 20, -15: 10, -3: 20, 0: 8}
    bf = MagnitudeCounter()
    bf.add(torch.tensor([2.0**-130, 2.0**-100, 0.0, 1.0], dtype=torch.bfloat16))
    assert shares(bf.by_dtype["bfloat16"]) == {"zero": 0.25, "subnormal": 0.25, "nonfinite": 0.0}


def test_underflow_on_a_real_step_at_scale_one_and_at_the_run_scale():
    m = take("mlp", "16-mixed", **SMALL)
    one, run = (m["underflow"][k]["by_dtype"]["float16"] for k in ("scale_1", "run_scale"))
    assert m["underflow"]["run_scale"]["scale"] == 2.0**16 and m["underflow"]["scale_1"]["scale"] == 1.0
    # every value of every 16-bit backward output (not views) is counted once, at both scales
    expected = sum(
        o["numel"] for o in m["ops"] if o["phase"] == "backward" and o["out_dtype"] == "float16" and not o["view"]
    )
    for entry in (one, run):
        assert entry["values"] == expected
        assert sum(entry["counts"]) + entry["zeros"] + entry["nonfinite"] == entry["values"]
    assert shares(one)["zero"] >= shares(run)["zero"]
    assert (
        shares(one)["subnormal"] > shares(run)["subnormal"]
    )  # the loss scale lifts small gradients out of the subnormals
    labels = [r["measured"] for r in underflow_rows(m["underflow"])]
    assert labels == ["at loss scale 1 (no scaling)", "at the run's loss scale"]


def test_cli_prints_the_summary_and_rejects_bad_input(capsys):
    assert (
        autocast_map.main(
            ["--workload", "mlp", "--precision", "bf16-mixed", "--hidden", "16", "--depth", "1", "--batch-size", "8"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "mlp under bf16-mixed on cpu" in out and "net.0" in out
    assert autocast_map.main(["--workload", "nope"]) == 2
    assert "workload must be one of mlp" in capsys.readouterr().err
    assert autocast_map.main(["--precision", "17-mixed"]) == 2
    assert "error:" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert autocast_map.main(["--device", "cuda"]) == 2
        assert "needs a CUDA GPU" in capsys.readouterr().err


def test_probe_map_runs_a_child_process_and_keeps_the_map(tmp_path, monkeypatch):
    settings = {"hidden": 16, "depth": 1, "batch_size": 8}
    m = probe_map("mlp", "bf16-mixed", "cpu", settings=settings, cache_dir=tmp_path)
    assert "error" not in m and m["precision"] == "bf16-mixed" and m["settings"]["hidden"] == 16
    assert len(list(tmp_path.glob("mlp-bf16-mixed-cpu-*.json"))) == 1

    def no_child(*args, **kwargs):
        raise AssertionError("a kept map must not start a child process")

    monkeypatch.setattr(autocast_map.subprocess, "run", no_child)
    assert probe_map("mlp", "bf16-mixed", "cpu", settings=settings, cache_dir=tmp_path) == m
    monkeypatch.undo()
    bad = probe_map("nope", "bf16-mixed", "cpu", cache_dir=tmp_path)
    assert "workload must be one of" in bad["error"]
    assert not list(tmp_path.glob("nope-*"))


@needs_cuda
@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_cuda_map(precision):
    dtype = AUTOCAST[precision]
    m = take("mlp", precision, "cuda", **SMALL)
    x = torch.randn(SMALL["batch_size"], 64, device="cuda")
    first = nn.Linear(64, SMALL["hidden"]).cuda()
    linear_dtype = str(measured("cuda", dtype, lambda: first(x))).removeprefix("torch.")
    assert [o["out_dtype"] for o in forward_ops(m["ops"], "net.0")] == [linear_dtype]
    assert m["device"] == "cuda" and m["device_name"] == torch.cuda.get_device_name()
    assert summarize(m)["ops"]["backward"] > 0


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_gpt_map_under_each_precision(precision):
    """The transformer workload: its Linear layers and layer norms ran in the dtypes autocast gives them here."""
    dtype = AUTOCAST[precision]
    m = take("gpt", precision, layers=1, heads=2, width=16, context=8, batch_size=2)
    json.dumps(m, allow_nan=False)
    assert m["workload"] == "gpt" and m["settings"]["width"] == 16
    x = torch.randn(2, 8, 16)
    lin, norm = nn.Linear(16, 48), nn.LayerNorm(16)
    linear_dtype = str(measured("cpu", dtype, lambda: lin(x))).removeprefix("torch.")
    norm_dtype = str(measured("cpu", dtype, lambda: norm(x))).removeprefix("torch.")
    attn_in = [o for o in forward_ops(m["ops"], "blocks.0.attn.c_attn")]
    assert attn_in and attn_in[0]["out_dtype"] == linear_dtype
    (ln,) = forward_ops(m["ops"], "blocks.0.ln_1")
    assert ln["op"] == "native_layer_norm" and ln["out_dtype"] == norm_dtype
    s = summarize(m)
    assert s["ops"]["forward"] > 0 and s["ops"]["backward"] > 0 and 0 < s["share_flops_16bit"] <= 1


def test_user_model_map_and_its_errors():
    """Your own LightningModule (a test file, not a built-in) is mapped; a bad import path is one MapError line."""
    m = take(
        "user",
        "bf16-mixed",
        model="tests.user_models.tiny_net:TinyRegressor",
        data="tests.user_models.tiny_net:PointsData",
    )
    assert m["workload"] == "user" and m["settings"]["model"].endswith("TinyRegressor")
    assert summarize(m)["ops"]["backward"] > 0
    with pytest.raises(autocast_map.MapError, match="no attribute 'Nope'"):
        take("user", "16-mixed", model="tests.user_models.tiny_net:Nope")


def test_a_model_too_large_to_map_is_refused_in_one_line():
    """Found by the random-interaction test: a map of the largest MLP the settings allow ran for minutes."""
    problem = autocast_map.size_problem("mlp", {"hidden": 65536, "depth": 64})
    assert problem and "choose a smaller model" in problem
    assert autocast_map.size_problem("mlp", {}) is None and autocast_map.size_problem("gpt", {}) is None
    assert (
        autocast_map.size_problem("user", {"model": "x:y"}) is None
    )  # your own model: its size is not known before import
    with pytest.raises(autocast_map.MapError, match="choose a smaller model"):
        take("gpt", "16-mixed", width=8192, layers=48)
