"""One real training step recorded op by op: what every aten op ran in, forward and backward.

`record_step(module, batch, plugin)` is the seam every workload plugs into: any LightningModule, one
batch, and the precision plugin a run would use (`trainer.strategy.precision_plugin`). It deep-copies
the module (and the optimizer's state, if given), so the caller's model, weights, gradients,
optimizer and global RNG are left as they were, then runs `training_step` inside the plugin's
`train_step_context()` (autocast for the mixed precisions), scales the loss with the plugin's
GradScaler (a copy of its state), runs backward, and steps the optimizer through the scaler.

What sees the ops: a `TorchDispatchMode`, below autograd and autocast, so every aten op that really
runs is seen with the dtypes it ran in (the casts autocast inserts appear as `_to_copy`).

Module paths: forward pre-hooks and hooks on every submodule keep a stack of the modules running.
Backward ops run in no module, so they are attributed through autograd's graph: a
`TorchFunctionMode` (above autograd) labels every graph node created during forward with the
module that was running, walking back from each new output to the nodes already labelled (nodes
created inside a composite function get its label too); a pre-hook on each node then sets the
label while that node runs in backward. AccumulateGrad nodes are labelled with their parameter's
module. Ops autograd runs before any node (the seed gradient) are labelled "(autograd)".
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.flop_counter import flop_registry

from amp_core.inside.backward_underflow import MagnitudeCounter

OUTSIDE = "(training_step)"
SIXTEEN_BIT = (torch.float16, torch.bfloat16)
_ALIASING = {torch.ops.aten.detach.default, torch.ops.aten.alias.default}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _is_view(func: Any) -> bool:
    return bool(getattr(func, "is_view", False)) or func in _ALIASING


class _Recording:
    """The state of one recorded step: ops, the module stack, node labels, the phase."""

    def __init__(self, root_name: str, param_owner: dict[int, str]):
        self.ops: list[dict[str, Any]] = []
        self.phase = "forward"
        self.stack: list[str] = []
        self.root_name = root_name
        self.outside = OUTSIDE
        self.param_owner = param_owner
        self.node_label: dict[Any, tuple[str, str]] = {}
        self.backward_at: tuple[str, str] = ("(autograd)", "")
        self.magnitudes: MagnitudeCounter | None = None

    def module(self) -> str:
        return self.stack[-1] if self.stack else self.outside

    # ----------------------------------------------------------- graph labels (forward)
    def label_graph(self, node: Any) -> None:
        todo = [node]
        while todo:
            n = todo.pop()
            if n is None or n in self.node_label:
                continue
            name = type(n).__name__
            if name == "AccumulateGrad":
                label = (self.param_owner.get(id(n.variable), self.root_name), name)
            else:
                label = (self.module(), name)
            self.node_label[n] = label
            n.register_prehook(lambda grad_outputs, label=label: self._enter_node(label))
            todo.extend(next_node for next_node, _ in n.next_functions)

    def _enter_node(self, label: tuple[str, str]) -> None:
        self.backward_at = label

    # ----------------------------------------------------------- one aten op
    def record(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        floats = [t for t in outputs if t.is_floating_point()]
        flops = None
        if func._overloadpacket in flop_registry:
            try:
                flops = int(flop_registry[func._overloadpacket](*args, **kwargs, out_val=out))
            except Exception:  # an argument form torch's FLOP formula does not handle: the FLOPs stay unknown
                flops = None
        log2_max, nonfinite = None, False
        with torch.no_grad():
            peaks = [float(t.detach().abs().max()) for t in floats if t.numel()]
        if peaks:
            peak = max(peaks) if not any(math.isnan(p) for p in peaks) else math.nan
            nonfinite = not math.isfinite(peak)
            log2_max = math.log2(peak) if math.isfinite(peak) and peak > 0 else None
        view = _is_view(func)
        if self.phase == "backward":
            module, node = self.backward_at
        else:
            module, node = self.module(), ""
        if self.phase == "backward" and not view and self.magnitudes is not None:
            for t in floats:
                if t.dtype in SIXTEEN_BIT:
                    self.magnitudes.add(t)
        self.ops.append(
            {
                "phase": self.phase,
                "op": func._overloadpacket.__name__,
                "module": module,
                "node": node,
                "in_dtypes": [_dtype_name(t.dtype) for t in inputs],
                "out_dtype": _dtype_name(outputs[0].dtype) if outputs else None,
                "flops": flops,
                "log2_max": log2_max,
                "nonfinite": nonfinite,
                "view": view,
                "numel": sum(t.numel() for t in outputs),
            }
        )


class _AtenRecorder(TorchDispatchMode):
    def __init__(self, recording: _Recording):
        super().__init__()
        self.recording = recording

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.recording.record(func, args, kwargs, out)
        return out


class _GraphLabeller(TorchFunctionMode):
    def __init__(self, recording: _Recording):
        super().__init__()
        self.recording = recording

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.grad_fn is not None:
                self.recording.label_graph(t.grad_fn)
        return out


@contextmanager
def _module_hooks(model: torch.nn.Module, recording: _Recording) -> Iterator[None]:
    def leave(module: Any, args: Any, output: Any) -> None:  # returns None: a hook's return value replaces the output
        recording.stack.pop()

    handles = []
    for name, m in model.named_modules():
        path = name or recording.root_name
        handles.append(m.register_forward_pre_hook(lambda mod, args, path=path: recording.stack.append(path)))
        handles.append(m.register_forward_hook(leave, always_call=True))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _optimizer_of(model: Any) -> torch.optim.Optimizer:
    """The first optimizer `configure_optimizers()` returns, in any of the shapes Lightning accepts."""
    conf = model.configure_optimizers()
    while not isinstance(conf, torch.optim.Optimizer):
        if isinstance(conf, dict):
            conf = conf["optimizer"]
        elif isinstance(conf, (list, tuple)) and conf:
            conf = conf[0]
        else:
            raise TypeError(f"configure_optimizers() returned {type(conf).__name__}, not an optimizer")
    return conf


def _scaler_copy(plugin: Any, loss_scale: float | None) -> Any:
    """A GradScaler with the plugin's state (and `loss_scale` instead of its scale, if given)."""
    scaler = getattr(plugin, "scaler", None)
    if scaler is None:
        return None
    state = scaler.state_dict()
    if loss_scale is not None:
        state["scale"] = float(loss_scale)
    twin = torch.amp.GradScaler(scaler._device)
    twin.load_state_dict(state)
    return twin


def _loss_of(output: Any) -> torch.Tensor:
    loss = output.get("loss") if isinstance(output, dict) else output
    if not isinstance(loss, torch.Tensor):
        raise TypeError("training_step returned no loss tensor: nothing to run backward on")
    return loss


def record_step(
    module: Any,
    batch: Any,
    plugin: Any,
    optimizer: torch.optim.Optimizer | None = None,
    device: str | torch.device = "cpu",
    magnitudes: MagnitudeCounter | None = None,
    loss_scale: float | None = None,
) -> dict[str, Any]:
    """Run one training step of a copy of `module` under `plugin` and record it (see the module docstring).

    `optimizer`: the caller's optimizer, whose state the copy starts from (else a fresh one from
    `configure_optimizers()`). `magnitudes`: counts the 16-bit outputs of backward ops. `loss_scale`:
    scale the loss by this instead of the plugin's scale (with a GradScaler only). Returns
    {"ops": [...], "loss_scale" (the scale backward ran at), "device", "loss"}.
    """
    device = torch.device(device)
    model = copy.deepcopy(module).to(device)
    model.train()
    model.zero_grad(set_to_none=True)
    opt = _optimizer_of(model)
    if optimizer is not None:
        opt.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    scaler = _scaler_copy(plugin, loss_scale)
    scale_used = float(scaler.get_scale()) if scaler is not None else None
    batch = tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, batch)
    owner = {id(p): name.rpartition(".")[0] or type(model).__name__ for name, p in model.named_parameters()}
    rec = _Recording(type(model).__name__, owner)
    rec.magnitudes = magnitudes
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), _module_hooks(model, rec):
        with _AtenRecorder(rec), _GraphLabeller(rec), plugin.train_step_context():
            loss = _loss_of(model.training_step(batch, 0))
        with _AtenRecorder(rec), _GraphLabeller(rec):
            rec.phase, rec.outside = "loss scaling", "(GradScaler.scale)"
            scaled = scaler.scale(loss) if scaler is not None else loss
        rec.phase = "backward"
        with _AtenRecorder(rec):
            scaled.backward()
        rec.phase, rec.outside = "optimizer", "(optimizer step)"
        with _AtenRecorder(rec):
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
    return {
        "ops": rec.ops,
        "loss_scale": scale_used,
        "device": str(device),
        "loss": float(loss.detach().float()),
    }
