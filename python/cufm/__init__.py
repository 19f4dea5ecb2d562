"""cuFM from Python: flow-matching training and sampling on the GPU or the CPU.

The classes and functions are the C++ API's (include/cufm/), bound with nanobind: ``MlpConfig``,
``TrainConfig``, ``Model``, ``Dataset``/``make_toy``, ``Trainer`` (fit, step on a caller's batch,
save), ``sample``, ``Sampler`` (keeps a GPU run's set-up between calls), ``integrate`` (from the caller's points, either direction), ``log_prob``
(log-likelihoods; ``sample(..., with_log_prob=True)`` too), ``VelocityField``,
``loss_and_grad``, ``load_checkpoint`` and the metrics; for a model of your own, ``prepare_flow`` and
``flow_mse`` (host arrays) and the CUDA kernels ``fm_prepare`` and ``fm_loss_grad`` (device arrays, in
place), which ``cufm.torch.flow_matching_loss`` wraps.

Arrays: numpy arrays or anything with DLPack (PyTorch tensors), float32 and C-contiguous without a
copy; other dtypes and strides are converted once, and what cannot be converted is refused with a
TypeError. Results come back as numpy arrays that own their memory (``torch.from_numpy`` wraps them
without a copy); ``cufm.torch`` returns tensors, CUDA ones in place. Errors are ``cufm.Error`` (a
``ValueError``) with the C++ message. ``import cufm`` does not import torch.

The CPU backend's threads (GNU OpenMP's, its own loops' and OpenBLAS's) read their wait policy once,
when the runtime loads. Unless OMP_WAIT_POLICY or GOMP_SPINCOUNT is set already, ``import cufm`` sets
GOMP_SPINCOUNT=1000 in the process's environment before it loads the extension (and with it the
runtime), so that waiting threads sleep soon instead of spinning on cores that other work needs
(``cpu_thread_wait_policy()`` says what is set; it cannot act if the runtime was loaded before).
"""

import os as _os

if "OMP_WAIT_POLICY" not in _os.environ and "GOMP_SPINCOUNT" not in _os.environ:
    _os.environ["GOMP_SPINCOUNT"] = "1000"

from ._cufm import (  # noqa: F401,E402
    Dataset,
    Error,
    MlpConfig,
    Model,
    Sampler,
    Trainer,
    TrainConfig,
    VelocityField,
    build_summary,
    couple,
    cpu_bf16_unavailable_reason,
    cpu_thread_wait_policy,
    cuda_built,
    energy_distance,
    flow_mse,
    fm_loss_grad,
    fm_loss_grad_workspace_bytes,
    fm_prepare,
    integrate,
    load_checkpoint,
    load_npy_dataset,
    log_prob,
    loss_and_grad,
    make_toy,
    prepare_flow,
    sample,
    sliced_wasserstein2,
    version,
)

__version__ = version()
