"""The precision policy slot of the step (Micikevicius et al., "Mixed Precision Training", 2018):
exactly one policy per stage, owned by the parallel strategy.

- :mod:`.policies`        ``Precision`` (FP32) and ``BF16``, ``FP16``, ``FP16Master``: the hooks the
                          step calls (autocast, backward, unscale, step, state); ``PRECISIONS``
- :mod:`.loss_scaling`    dynamic loss scaling, overflow checks (pure functions)
- :mod:`.master_weights`  FP16 weights with FP32 masters (pure functions)
- :mod:`.telemetry`       underflow and skipped-step figures the policies report

Adding a policy: a class in ``policies.py`` and one line in ``PRECISIONS``; rows in
``recipe/compat.py`` for what it cannot run with.
"""

from rayeffi.precision.policies import (
    BF16,
    FP16,
    FP32,
    PRECISIONS,
    FP16Master,
    Precision,
    build_precision,
    fp32_layers,
    needs_onednn_off,
    reduced_precision_autocast,
)

__all__ = ["BF16", "FP16", "FP16Master", "FP32", "PRECISIONS", "Precision", "build_precision", "fp32_layers",
           "needs_onednn_off", "reduced_precision_autocast"]
