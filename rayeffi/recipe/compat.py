"""Which strategy x precision x technique combinations run, in one table.

Every rule that forbids a combination lives here, with its reason and its fix, and is
checked in one place (:func:`check_compatibility`, called when a stage is validated).
So ``load_recipe``, ``rayeffi run``, ``rayeffi submit`` and every Tune trial's stage
variant agree on what is allowed. Rules that need the built model (a pipeline's split
points, spatial tiles of a convolution) are the strategies' driver-side checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

ANY = "*"


@dataclass(frozen=True)
class Rule:
    """One forbidden combination: every named slot matches and ``when`` holds."""

    reason: str
    fix: str
    strategy: str = ANY
    precisions: tuple[str, ...] = (ANY,)
    technique: str = ANY
    tasks: tuple[str, ...] = (ANY,)
    when: Callable[[Any], bool] | None = None
    """A further condition on the stage (None: the slots alone decide)."""
    option: str = ""
    """The stage option ``when`` looks for, as the message names it (e.g. ``optimizer.max_grad_norm``)."""

    def matches_slots(self, strategy: str, precision: str, techniques: set[str]) -> bool:
        return (
            self.strategy in (ANY, strategy)
            and (ANY in self.precisions or precision in self.precisions)
            and (self.technique == ANY or self.technique in techniques)
        )

    def matches(self, stage: Any) -> bool:
        techniques = {config.name for config in stage.technique_configs}
        return (self.matches_slots(stage.parallel.strategy, stage.precision.policy, techniques)
                and (ANY in self.tasks or stage.task.name in self.tasks)
                and (self.when is None or self.when(stage)))

    def describe(self) -> str:
        slots = [f"parallel.strategy {self.strategy}" if self.strategy != ANY else "",
                 f"precision {'/'.join(self.precisions)}" if ANY not in self.precisions else "",
                 f"technique {self.technique}" if self.technique != ANY else "",
                 f"task {'/'.join(self.tasks)}" if ANY not in self.tasks else "",
                 self.option]
        return " with ".join(slot for slot in slots if slot)


def _sharded_intra_layer(stage: Any) -> bool:
    config = stage.parallel
    return (config.conv == "channels" and stage.model.name == "cnn") or config.fc == "split"


def _caches_teacher_logits(stage: Any) -> bool:
    return any(getattr(config, "cache", False) for config in stage.technique_configs)


def _has_hints(stage: Any) -> bool:
    return any(getattr(config, "hints", ()) for config in stage.technique_configs)


def _adds_a_loss_term(stage: Any) -> bool:
    return any(config.adds_loss for config in stage.technique_configs)


def _clips(stage: Any) -> bool:
    return stage.optimizer.max_grad_norm is not None


def _accumulates(stage: Any) -> bool:
    return stage.optimizer.accumulate_steps > 1


def _per_step_schedule(stage: Any) -> bool:
    return stage.optimizer.schedule.per_step


def _stops_early(stage: Any) -> bool:
    return stage.early_stop is not None


def _user_metrics(stage: Any) -> bool:
    return bool(stage.task.metrics)


def _every_steps(stage: Any) -> bool:
    return stage.eval_every_steps is not None or stage.checkpoint_every_steps is not None


def _tuned_every_steps(stage: Any) -> bool:
    return stage.tune is not None and _every_steps(stage)


_EVERY_STEPS = "eval_every_steps / checkpoint_every_steps"


def _compiles(stage: Any) -> bool:
    return stage.compile is not None


def _checkpoints_activations(stage: Any) -> bool:
    return stage.activation_checkpointing is not None


RULES: tuple[Rule, ...] = (
    Rule(strategy="pipeline", technique="distill",
         reason="does not run kind 'distill' (the distillation loss needs the student's whole output and the "
                "teacher on one worker)",
         fix="train the student with parallel.strategy=data_parallel"),
    Rule(strategy="pipeline", when=_adds_a_loss_term,
         reason="computes the task loss in its last stage only, so a technique that adds a loss term would be "
                "left out of the step",
         fix="use parallel.strategy=data_parallel for a stage whose techniques add a loss"),
    Rule(strategy="intra_layer", precisions=("bf16", "fp16", "fp16-master"),
         reason="runs fp32 only (its collectives were tested in FP32)", fix="set precision=fp32"),
    Rule(strategy="intra_layer", technique="dsd", when=_sharded_intra_layer,
         reason="chooses magnitude masks per whole layer, but parallel.conv=channels / parallel.fc=split leave "
                "each rank a shard",
         fix="use parallel.conv=spatial with parallel.fc=none, or data_parallel"),
    Rule(strategy="param_server", precisions=("fp16-master",),
         reason="the servers already hold the FP32 masters",
         fix="use precision=fp16 (FP16 compute, FP16 gradients on the wire)"),
    Rule(technique="dsd", precisions=("fp16-master",),
         reason="is not supported yet (the masks act on the model's weights; FP32 masters would bring pruned "
                "values back)",
         fix="use fp32, bf16 or fp16"),
    Rule(technique="distill", precisions=("fp16-master",), when=_has_hints,
         reason="hints are not supported (hint adapters join the optimizer after the FP32 masters are made)",
         fix="use fp32, bf16 or fp16, or remove the hints"),
    Rule(strategy="intra_layer", tasks=("language_modeling", "token_classification", "regression"),
         reason="splits the layers of one-class-per-row MLPs and CNNs only",
         fix="use parallel.strategy=data_parallel or pipeline for this task"),
    Rule(technique="distill", tasks=("regression",),
         reason="distils class distributions (a teacher's soft targets), which a regression has none of",
         fix="use task classification, or train the student without distill"),
    Rule(technique="distill", tasks=("language_modeling", "token_classification"), when=_caches_teacher_logits,
         reason="caches one row of teacher logits per example, and per-token logits are seq_len x vocabulary "
                "per row",
         fix="set distill.cache: false (the teacher runs in the step)"),
    Rule(strategy="intra_layer", when=_clips, option="optimizer.max_grad_norm",
         reason="clips the norm of the whole model's gradients, and each rank holds shards of some layers and "
                "copies of others (the norm would need a reduction this strategy does not make)",
         fix="remove optimizer.max_grad_norm, or use parallel.strategy=data_parallel"),
    Rule(strategy="pipeline", when=_accumulates, option="optimizer.accumulate_steps",
         reason="already splits each step into parallel.num_microbatches micro-batches",
         fix="raise parallel.num_microbatches instead of optimizer.accumulate_steps"),
    Rule(strategy="intra_layer", when=_accumulates, option="optimizer.accumulate_steps",
         reason="is not supported yet (its groups gather each step's rows; accumulation was not tested there)",
         fix="remove optimizer.accumulate_steps, or use parallel.strategy=data_parallel"),
    Rule(tasks=("language_modeling", "token_classification"), when=_accumulates, option="optimizer.accumulate_steps",
         reason="would average per-micro-batch token means, which is not the whole batch's mean over its real "
                "tokens",
         fix="remove optimizer.accumulate_steps (lower data.batch_size or data.seq_len to save memory)"),
    Rule(strategy="param_server", when=_clips, option="optimizer.max_grad_norm",
         reason="would clip each worker's gradient by its own norm before the servers combine them, not the "
                "global batch's gradient as data parallelism does",
         fix="remove optimizer.max_grad_norm, or use parallel.strategy=data_parallel"),
    Rule(strategy="param_server", when=_accumulates, option="optimizer.accumulate_steps",
         reason="is not supported yet (accumulation before a push was not tested against the servers' updates)",
         fix="remove optimizer.accumulate_steps, or set parallel.push_every to send fewer, larger updates"),
    Rule(strategy="param_server", when=_per_step_schedule, option="optimizer.schedule.warmup_steps",
         reason="publishes one lr per epoch to the servers",
         fix="use a per-epoch schedule (warmup_epochs)"),
    Rule(strategy="pipeline", when=_user_metrics, option="task.metrics",
         reason="evaluates on its last stage and sends back only the task's own sums",
         fix="remove task.metrics, or use parallel.strategy=data_parallel"),
    Rule(strategy="param_server", when=_stops_early, option="early_stop",
         reason="runs its epochs from the driver (stages/param_server.py), which does not stop early (the "
                "decision is made in the Ray Train loop)",
         fix="remove early_stop, or use parallel.strategy=data_parallel"),
    Rule(strategy="param_server", when=_every_steps, option=_EVERY_STEPS,
         reason="runs its epochs from the driver (stages/param_server.py), which validates once per epoch and "
                "checkpoints its shards every parallel.checkpoint_every server updates",
         fix="remove the key (the servers already checkpoint every parallel.checkpoint_every updates), or use "
             "parallel.strategy=data_parallel"),
    Rule(strategy="pipeline", when=_every_steps, option=_EVERY_STEPS,
         reason="is not supported yet (validation and checkpoints within an epoch were tested with data "
                "parallelism only)",
         fix="remove the key, or use parallel.strategy=data_parallel"),
    Rule(strategy="intra_layer", when=_every_steps, option=_EVERY_STEPS,
         reason="is not supported yet (validation and checkpoints within an epoch were tested with data "
                "parallelism only)",
         fix="remove the key, or use parallel.strategy=data_parallel"),
    Rule(strategy="pipeline", when=_compiles, option="compile",
         reason="is not supported yet (each stage runs its units one micro-batch at a time with tensors sent "
                "between stages; compiled units there were not tested)",
         fix="remove compile, or use parallel.strategy=data_parallel"),
    Rule(strategy="intra_layer", when=_compiles, option="compile",
         reason="is not supported yet (its split layers call collectives inside the forward, which would break "
                "the graph at every layer)",
         fix="remove compile, or use parallel.strategy=data_parallel"),
    Rule(strategy="param_server", when=_compiles, option="compile",
         reason="is not supported yet (its gradient workers load pulled weights into the model between steps; "
                "compiled there was not tested)",
         fix="remove compile, or use parallel.strategy=data_parallel"),
    Rule(strategy="pipeline", when=_checkpoints_activations, option="activation_checkpointing",
         reason="is not supported yet (its stages call the model's units one by one, not the blocks "
                "activation_checkpointing wraps)",
         fix="remove activation_checkpointing, or raise parallel.num_microbatches to cut activation memory"),
    Rule(strategy="intra_layer", when=_checkpoints_activations, option="activation_checkpointing",
         reason="is not supported yet (it builds the model again with split layers, which the wrapped blocks do not reach)",
         fix="remove activation_checkpointing, or use parallel.strategy=data_parallel"),
    Rule(strategy="param_server", when=_checkpoints_activations, option="activation_checkpointing",
         reason="is not supported yet (checkpointed blocks were not tested on its gradient workers)",
         fix="remove activation_checkpointing, or use parallel.strategy=data_parallel"),
    Rule(when=_tuned_every_steps, option=f"tune with {_EVERY_STEPS}",
         reason="would report to Tune between epochs (its schedulers count every report as a training "
                "iteration), and a trial never resumes from a checkpoint",
         fix="remove the key from the tuned stage, or tune with whole epochs and set it on a later stage"),
)
"""Every forbidden combination; anything not listed here runs."""


def check_compatibility(stage: Any) -> None:
    """Raise ValueError naming the first rule ``stage`` breaks, its reason and its fix."""
    for rule in RULES:
        if rule.matches(stage):
            raise ValueError(f"{rule.describe()}: {rule.reason}: {rule.fix}")


def forbidden_slots(strategy: str, precision: str, techniques: set[str]) -> Rule | None:
    """The first rule that forbids these slots whatever the rest of the stage says, or None."""
    return next((rule for rule in RULES if rule.when is None and rule.matches_slots(strategy, precision, techniques)),
                None)


def compatibility_table() -> list[dict[str, str]]:
    """The rules as rows (for the docs and ``rayeffi validate``)."""
    return [{"combination": rule.describe(), "reason": rule.reason, "fix": rule.fix} for rule in RULES]
