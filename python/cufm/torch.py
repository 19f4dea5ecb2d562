"""cuFM for PyTorch users: the fused flow-matching loss for a model of your own, and cuFM models as
``nn.Module``s and back.

``import cufm`` does not import torch; ``import cufm.torch`` does, and needs it installed.

- :func:`flow_matching_loss` draws a training step's t and eps with cuFM's Philox streams, builds
  x_t, runs your model on (x_t, t) and returns the MSE against u = x1 - eps, whose backward is
  cuFM's fused gradient. On CUDA tensors it runs cuFM's kernels (``fm_prepare``, ``fm_loss_grad``)
  on the tensors' memory, on the current stream, with no host round trip; on CPU tensors the CPU
  backend's twins, which give the same draws bit for bit. The draws are those of
  ``cufm.Trainer.step(x1)`` at the same seed and step.
- :func:`to_torch` turns a ``cufm.Model`` into the equivalent ``nn.Sequential`` over the model's
  input row (:func:`model_input` builds it from x, t and labels; :class:`Velocity` wraps both);
  :func:`from_torch` does the reverse.
- :func:`velocity` evaluates a ``cufm.VelocityField`` on a tensor, a CUDA one in place.

GELU is the tanh approximation in cuFM, so :func:`to_torch` gives ``nn.GELU(approximate="tanh")``
and :func:`from_torch` refuses the exact ``nn.GELU()``.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Union

import numpy as np
import torch
from torch import nn

from . import _cufm

__all__ = [
    "Velocity",
    "flow_matching_loss",
    "from_torch",
    "model_input",
    "to_torch",
    "velocity",
]

_ACTIVATIONS = {"silu": nn.SiLU, "relu": nn.ReLU, "gelu": lambda: nn.GELU(approximate="tanh")}


def _check_x1(x1: torch.Tensor) -> torch.Tensor:
    if not isinstance(x1, torch.Tensor):
        raise TypeError(f"x1 must be a torch.Tensor, got {type(x1).__name__}")
    if x1.dim() != 2:
        raise ValueError(f"x1 must be a 2-D tensor [B, D], got shape {list(x1.shape)}")
    if not x1.is_floating_point():
        raise TypeError(f"x1 must be a floating-point tensor, got {x1.dtype}")
    if x1.device.type not in ("cpu", "cuda"):
        raise ValueError(f"x1 must be on the CPU or a CUDA device, got {x1.device}")
    return x1.detach().to(torch.float32).contiguous()


def _step_tensor(step: Union[int, torch.Tensor], device: torch.device) -> torch.Tensor:
    """The step index as an int64 [1] tensor on `device` (a CUDA tensor counter is used as is)."""
    if isinstance(step, torch.Tensor):
        if step.numel() != 1 or step.dtype != torch.int64:
            raise ValueError("step must be an int or an int64 tensor of one element")
        return step.reshape(1).to(device).contiguous()
    if int(step) < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return torch.tensor([int(step)], dtype=torch.int64, device=device)


class _FlowMse(torch.autograd.Function):
    """loss = mean((v - u)^2) with u regenerated from the draws; backward: cuFM's dL/dv."""

    @staticmethod
    def forward(ctx, v, x1, step, draws, noise_row=None):  # noqa: D401 - autograd's signature
        vc = v.detach().to(torch.float32).contiguous()
        grad = torch.empty_like(vc)
        if x1.is_cuda:
            loss = torch.empty(1, dtype=torch.float32, device=x1.device)
            ws = torch.zeros(
                _cufm.fm_loss_grad_workspace_bytes(x1.shape[0], x1.shape[1]),
                dtype=torch.uint8,
                device=x1.device,
            )
            stream = torch.cuda.current_stream(x1.device).cuda_stream
            _cufm.fm_loss_grad(x1, vc, grad, loss, ws, step, stream, noise_row=noise_row, **draws)
            loss = loss.reshape(())
        else:
            value = _cufm.flow_mse(x1, vc, grad, step=int(step.item()), **draws)
            loss = torch.tensor(value, dtype=torch.float32)
        ctx.save_for_backward(grad)
        ctx.v_dtype = v.dtype
        return loss.to(v.dtype)

    @staticmethod
    def backward(ctx, grad_loss):
        (grad,) = ctx.saved_tensors
        return (grad * grad_loss.to(grad.dtype)).to(ctx.v_dtype), None, None, None, None


def flow_matching_loss(
    model: Callable[..., torch.Tensor],
    x1: torch.Tensor,
    *,
    seed: int = 0,
    step: Union[int, torch.Tensor] = 0,
    labels: Optional[torch.Tensor] = None,
    num_classes: int = 0,
    label_dropout: float = 0.0,
    sigma_min: float = 0.0,
    time_sampling: str = "uniform",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    context: Optional[torch.Tensor] = None,
    context_dropout: float = 0.0,
    coupling: str = "independent",
    ot_reg: float = 0.05,
) -> torch.Tensor:
    """The flow-matching loss of ``model`` on the batch ``x1`` [B, D], for ``loss.backward()``.

    Draws training step ``step``'s t [B] and eps [B, D] (Philox, keyed by ``seed``), builds
    x_t = t x1 + (1 - (1 - sigma_min) t) eps and calls ``model(x_t, t)`` (``model(x_t, t, labels)``
    when ``num_classes > 0``: the labels [B] in [0, num_classes] after per-row dropout to the null
    class ``num_classes``; None: all null). With ``context`` [B, K] (each row's condition, e.g. the
    observation of simulation-based inference) the model is also given ``context=`` (the rows'
    contexts, zeroed where dropped) and ``context_null=`` (a bool [B] mask of the rows that take the
    null context, drawn with probability ``context_dropout``), as :class:`Velocity` takes them.
    Returns mean((v - u)^2), u = x1 - (1 - sigma_min) eps, as a 0-d tensor whose backward into v is
    cuFM's fused 2 (v - u) / (B D).

    ``coupling`` "exact" or "sinkhorn" (with ``ot_reg``) pairs the batch's rows with the step's noise
    by minibatch optimal transport first (:func:`cufm.couple`; within each label after dropout; not
    with a context), as ``TrainConfig(coupling=...)`` does: row i then takes another row's eps.

    CUDA x1: everything runs on the current stream, nothing is read back to the host (``step``
    may be an int64 CUDA tensor you increment, for CUDA graphs). CPU x1: the CPU backend (with a
    coupling, the loss on the paired noise is computed by PyTorch from cuFM's draws and pairs).
    Use a new ``step`` for every training step, or every step sees the same draws.
    """
    x1c = _check_x1(x1)
    B, D = x1c.shape
    draws = dict(
        seed=int(seed),
        sigma_min=float(sigma_min),
        time_sampling=time_sampling,
        logit_mean=float(logit_mean),
        logit_std=float(logit_std),
    )
    conditional = num_classes > 0
    if labels is not None and not conditional:
        raise ValueError("labels given, but num_classes is 0")
    lab = None
    if conditional:
        lab = (
            torch.full((B,), num_classes, dtype=torch.int32, device=x1c.device)
            if labels is None
            else labels.detach().to(device=x1c.device, dtype=torch.int32).contiguous()
        )
        if lab.shape != (B,):
            raise ValueError(f"labels must have shape [{B}], got {list(lab.shape)}")
    ctx = None
    if context is not None:
        ctx = context.detach().to(device=x1c.device, dtype=torch.float32).contiguous()
        if ctx.dim() != 2 or ctx.shape[0] != B or ctx.shape[1] < 1:
            raise ValueError(f"context must have shape [{B}, K], got {list(ctx.shape)}")
    elif context_dropout != 0.0:
        raise ValueError("context_dropout given without a context")
    K = 0 if ctx is None else ctx.shape[1]
    if coupling not in ("independent", "exact", "sinkhorn"):
        raise ValueError(f"coupling must be 'independent', 'exact' or 'sinkhorn', got {coupling!r}")
    coupled = coupling != "independent"
    if coupled and ctx is not None:
        raise ValueError(
            f"coupling {coupling!r} is not available with a context: the noise paired with a point would "
            "depend on the other points' contexts"
        )

    def call(x_t, t, lab, c, null):
        args = (x_t, t, lab.long()) if conditional else (x_t, t)
        return model(*args, context=c, context_null=null) if ctx is not None else model(*args)

    step_t = _step_tensor(step, x1c.device)
    labels_out = torch.empty(B, dtype=torch.int32, device=x1c.device) if conditional else None
    if x1c.is_cuda:
        with torch.cuda.device(x1c.device):
            width = D + 1 + (K + 1 if K else 0) + (num_classes + 1 if conditional else 0)
            inp = torch.empty(B, width, dtype=torch.float32, device=x1c.device)
            t = torch.empty(B, dtype=torch.float32, device=x1c.device)
            stream = torch.cuda.current_stream(x1c.device).cuda_stream
            noise_row = None
            if coupled:
                noise_row = torch.empty(B, dtype=torch.int32, device=x1c.device)
                ws = torch.empty(
                    _cufm.fm_couple_workspace_bytes(B, D, coupling, int(num_classes)),
                    dtype=torch.uint8,
                    device=x1c.device,
                )
                _cufm.fm_couple(
                    x1c,
                    noise_row,
                    ws,
                    step_t,
                    stream,
                    lab,
                    kind=coupling,
                    reg=float(ot_reg),
                    num_classes=int(num_classes),
                    label_dropout=float(label_dropout),
                    **draws,
                )
            _cufm.fm_prepare(
                x1c,
                inp,
                t,
                step_t,
                stream,
                lab,
                labels_out,
                num_classes=int(num_classes),
                label_dropout=float(label_dropout),
                context=ctx,
                context_dropout=float(context_dropout),
                noise_row=noise_row,
                **draws,
            )
            x_t = inp[:, :D]
            c = inp[:, D + 1 : D + 1 + K] if K else None
            null = inp[:, D + 1 + K] > 0.5 if K else None
            v = call(x_t, t, labels_out, c, null)
            return _FlowMse.apply(_check_v(v, B, D), x1c, step_t, draws, noise_row)
    x_t = torch.empty(B, D, dtype=torch.float32)
    t = torch.empty(B, dtype=torch.float32)
    eps = torch.empty(B, D, dtype=torch.float32) if coupled else None
    dropped = torch.zeros(B, dtype=torch.uint8) if K else None
    _cufm.prepare_flow(
        x1c,
        x_t,
        t,
        lab,
        labels_out,
        eps,
        step=int(step_t.item()),
        num_classes=int(num_classes),
        label_dropout=float(label_dropout),
        context_dropout=float(context_dropout),
        context_dropped=dropped,
        **draws,
    )
    null = dropped.bool() if K else None
    c = ctx.masked_fill(null[:, None], 0.0) if K else None
    if coupled:
        pairs = _cufm.couple(
            x1c.numpy(),
            eps.numpy(),
            groups=labels_out.numpy() if conditional else None,
            kind=coupling,
            reg=float(ot_reg),
            seed=int(seed),
            step=int(step_t.item()),
        )
        eps = eps[torch.from_numpy(pairs.astype("int64"))]
        keep = 1.0 - float(sigma_min)
        x_t = t[:, None] * x1c + (1.0 - keep * t[:, None]) * eps
        v = _check_v(call(x_t, t, labels_out, c, null), B, D)
        return torch.mean((v.to(torch.float32) - (x1c - keep * eps)) ** 2).to(v.dtype)
    v = call(x_t, t, labels_out, c, null)
    return _FlowMse.apply(_check_v(v, B, D), x1c, step_t, draws)


def _check_v(v, B: int, D: int) -> torch.Tensor:
    if not isinstance(v, torch.Tensor) or tuple(v.shape) != (B, D):
        shape = list(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
        raise ValueError(f"the model must return a tensor of shape [{B}, {D}], got {shape}")
    return v


def model_input(
    config: "_cufm.MlpConfig",
    x: torch.Tensor,
    t: Union[float, torch.Tensor],
    labels: Optional[torch.Tensor] = None,
    context: Optional[torch.Tensor] = None,
    context_null: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The model's input rows [x | time features | context | null indicator | one-hot], as cuFM
    builds them.

    Time features: raw t (``time_features == 0``), or sin(2 pi 2^j t), cos(2 pi 2^j t) for
    j < time_features / 2, interleaved. A model with ``context_dim = K`` gets the context ([K] for
    every row or [n, K]; None: the null context) and an indicator, 1 for the rows that take the null
    context (zeros in its K columns: ``context_null``, a bool [n] mask, or all rows when ``context``
    is None) and 0 otherwise. Conditional models get a one-hot of num_classes + 1 entries (the last
    is the null class; labels None: all null).
    """
    n = x.shape[0]
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    t = t.expand(n) if t.dim() == 0 else t.reshape(n)
    parts = [x]
    k = config.time_features
    if k == 0:
        parts.append(t[:, None])
    else:
        feats = []
        for j in range(k // 2):
            turns = t * float(2**j)
            frac = turns - torch.floor(turns)
            feats += [torch.sin(2 * math.pi * frac), torch.cos(2 * math.pi * frac)]
        parts.append(torch.stack(feats, dim=1))
    K = config.context_dim
    if K > 0:
        if context is None:
            c = torch.zeros(n, K, dtype=x.dtype, device=x.device)
            null = torch.ones(n, dtype=torch.bool, device=x.device)
        else:
            c = context.to(device=x.device, dtype=x.dtype).reshape(-1, K).expand(n, K)
            null = (
                torch.zeros(n, dtype=torch.bool, device=x.device)
                if context_null is None
                else context_null.to(device=x.device, dtype=torch.bool).reshape(n)
            )
            c = c.masked_fill(null[:, None], 0.0)
        parts += [c, null.to(x.dtype)[:, None]]
    elif context is not None:
        raise ValueError("a context given, but the model has none (context_dim = 0)")
    if config.num_classes > 0:
        c = config.num_classes
        lab = (
            torch.full((n,), c, dtype=torch.long, device=x.device)
            if labels is None
            else labels.to(device=x.device, dtype=torch.long)
        )
        parts.append(nn.functional.one_hot(lab, c + 1).to(x.dtype))
    return torch.cat(parts, dim=1)


def to_torch(model: "_cufm.Model") -> nn.Sequential:
    """The equivalent ``nn.Sequential`` of Linear layers and activations, over the model's input row.

    Feed it ``model_input(model.config, x, t, labels)``; its output is v(x, t, labels). GELU comes
    out as ``nn.GELU(approximate="tanh")``, cuFM's GELU. The weights are copies.
    """
    cfg = model.config
    params = np.asarray(model.params)
    layers = []
    widths = [cfg.input_dim()] + list(cfg.hidden) + [cfg.data_dim]
    offset = 0
    for i in range(len(widths) - 1):
        lin = nn.Linear(widths[i], widths[i + 1])
        n_w = widths[i] * widths[i + 1]
        with torch.no_grad():
            w = params[offset : offset + n_w].reshape(widths[i + 1], widths[i])
            lin.weight.copy_(torch.from_numpy(w.copy()))
            offset += n_w
            lin.bias.copy_(torch.from_numpy(params[offset : offset + widths[i + 1]].copy()))
            offset += widths[i + 1]
        layers.append(lin)
        if i < len(widths) - 2:
            layers.append(_ACTIVATIONS[cfg.activation]())
    return nn.Sequential(*layers)


def _activation_name(module: nn.Module) -> str:
    if isinstance(module, nn.SiLU):
        return "silu"
    if isinstance(module, nn.ReLU):
        return "relu"
    if isinstance(module, nn.GELU):
        if module.approximate != "tanh":
            raise ValueError(
                "nn.GELU() is exact GELU; cuFM's GELU is the tanh approximation: use "
                "nn.GELU(approximate='tanh')"
            )
        return "gelu"
    raise ValueError(f"unsupported layer {type(module).__name__}: cuFM's MLPs use SiLU, ReLU or GELU(tanh)")


def from_torch(
    net: nn.Sequential, data_dim: int, time_features: int = 0, num_classes: int = 0, context_dim: int = 0
) -> "_cufm.Model":
    """A ``cufm.Model`` from an ``nn.Sequential`` of Linear layers with one activation kind between them.

    The first Linear must take the model's input row (``data_dim`` + time features + the
    context's context_dim + 1 entries + the one-hot's num_classes + 1 entries) and the last must
    return ``data_dim`` values.
    """
    if not isinstance(net, nn.Sequential):
        raise TypeError(f"from_torch takes an nn.Sequential, got {type(net).__name__}")
    mods = list(net)
    linears = mods[0::2]
    acts = mods[1::2]
    if len(mods) % 2 == 0 or not all(isinstance(m, nn.Linear) for m in linears):
        raise ValueError("from_torch: expected Linear, activation, Linear, ..., Linear")
    if any(m.bias is None for m in linears):
        raise ValueError("from_torch: every Linear needs a bias")
    names = {_activation_name(a) for a in acts}
    if len(names) > 1:
        raise ValueError(f"from_torch: one activation kind throughout, got {sorted(names)}")
    for a, b in zip(linears, linears[1:]):
        if a.out_features != b.in_features:
            raise ValueError(f"from_torch: a Linear of {a.out_features} outputs feeds one of {b.in_features} inputs")
    cfg = _cufm.MlpConfig(
        data_dim=data_dim,
        hidden=[m.out_features for m in linears[:-1]],
        activation=names.pop() if names else "silu",
        time_features=time_features,
        num_classes=num_classes,
        context_dim=context_dim,
    )
    if linears[0].in_features != cfg.input_dim():
        raise ValueError(
            f"from_torch: the first Linear takes {linears[0].in_features} inputs; the model's input row "
            f"has {cfg.input_dim()} (data_dim + time features + context and indicator + one-hot)"
        )
    if linears[-1].out_features != data_dim:
        raise ValueError(f"from_torch: the last Linear returns {linears[-1].out_features} values, not {data_dim}")
    flat = []
    for m in linears:
        flat += [m.weight.detach().float().cpu().reshape(-1), m.bias.detach().float().cpu().reshape(-1)]
    return _cufm.Model(cfg, torch.cat(flat).numpy())


class Velocity(nn.Module):
    """v(x, t, labels, context) as an ``nn.Module``: :func:`model_input` then :func:`to_torch`'s
    Sequential."""

    def __init__(self, model: "_cufm.Model"):
        super().__init__()
        self.config = model.config
        self.net = to_torch(model)

    def forward(
        self,
        x: torch.Tensor,
        t,
        labels: Optional[torch.Tensor] = None,
        context: Optional[torch.Tensor] = None,
        context_null: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        return self.net(model_input(self.config, x, t, labels, context, context_null))


def velocity(
    field: "_cufm.VelocityField",
    t: float,
    x: torch.Tensor,
    labels: Optional[torch.Tensor] = None,
    context: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``field(t, x, labels, context=context)`` on tensors: CUDA tensors are used in place (a GPU
    field, the current stream, no host round trip); a CPU tensor's memory is read without a copy.
    context: [n, K] (None: the null context). Returns a tensor on x's device."""
    xc = x.detach().to(torch.float32).contiguous()
    lab = None if labels is None else labels.detach().to(device=xc.device, dtype=torch.int32).contiguous()
    ctx = None if context is None else context.detach().to(device=xc.device, dtype=torch.float32).contiguous()
    out = torch.empty_like(xc)
    if xc.is_cuda:
        with torch.cuda.device(xc.device):
            field(t, xc, lab, out, torch.cuda.current_stream(xc.device).cuda_stream, context=ctx)
    else:
        field(t, xc, lab, out, context=ctx)
    return out
