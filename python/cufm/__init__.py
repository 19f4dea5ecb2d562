"""cuFM from Python: flow-matching training and sampling on the GPU or the CPU.

The classes and functions are the C++ API's (include/cufm/), bound with nanobind: ``MlpConfig``,
``TrainConfig``, ``Model``, ``Dataset``/``make_toy``, ``Trainer`` (fit, step on a caller's batch,
save), ``sample``, ``integrate`` (from the caller's points, either direction), ``VelocityField``,
``loss_and_grad``, ``load_checkpoint`` and the metrics. Arrays are numpy float32 (int32 labels).
Errors are ``cufm.Error`` (a ``ValueError``) with the C++ message.
"""

from ._cufm import (  # noqa: F401
    Dataset,
    Error,
    MlpConfig,
    Model,
    Trainer,
    TrainConfig,
    VelocityField,
    build_summary,
    cuda_built,
    energy_distance,
    integrate,
    load_checkpoint,
    load_npy_dataset,
    loss_and_grad,
    make_toy,
    sample,
    sliced_wasserstein2,
    version,
)

__version__ = version()
