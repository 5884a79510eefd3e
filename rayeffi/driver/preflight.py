"""The checks a run makes before Ray starts, shared by ``rayeffi run``, ``rayeffi validate`` and the
Python API: every stage's data, model contract, precision, step options, starting weights and
strategy/technique checks, the links between stages, the address and the GPUs asked for.

Everything that can be checked without Ray is checked here, so a bad input costs no cluster
time and leaves nothing behind; each failure is one ``UserError`` naming the key and the fix.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from rayeffi.data.sources import DataSource, resolve_source, sample_rows
from rayeffi.task import build_task
from rayeffi.errors import UserError
from rayeffi.models import check_model
from rayeffi.models.checkpointing import checkpoint_blocks
from rayeffi.models.inputs import INPUT_PREFIX, check_named_inputs
from rayeffi.parallel import STRATEGY_CHECKS
from rayeffi.recipe.models import Recipe, StageConfig
from rayeffi.recipe.paths import use_import_paths
from rayeffi.stages.ray_session import check_address, ray_is_initialized
from rayeffi.techniques import TECHNIQUES
from rayeffi.weights.read import FORMATS as WEIGHT_FORMATS
from rayeffi.precision import fp32_layers, needs_onednn_off, reduced_precision_autocast
from rayeffi.precision.recurrent import run_lstms_in_fp32
from rayeffi.driver.precision_check import PrecisionChoice, check_precision
from rayeffi.models.compiled import compiled_gradient_mismatch


def preflight(recipe: Recipe, out_dir: Path, address: str | None = None,
              choices: dict[str, PrecisionChoice] | None = None) -> list[DataSource]:
    """Every check a run makes before Ray starts; returns each stage's data source.

    ``run_recipe`` and ``rayeffi validate`` both call this, so validate passes exactly what
    run would start: each stage (:func:`check_stage`), the links between stages, the
    address, and, without an address, the GPUs the stages ask for against this machine (or
    the Ray this process already joined). With an address, the caller checks the cluster's
    GPUs with :func:`check_gpus` once it has joined it. ``choices`` receives each stage's
    precision check (``driver/precision_check.py``): the policy ``auto`` resolved to, the times.
    """
    use_import_paths(recipe.folders)  # the recipe's modules import with no PYTHONPATH (recipe/paths.py)
    stage_names = {stage.name for stage in recipe.stages}
    sources = [check_stage(stage, out_dir, stage_names, choices) for stage in recipe.stages]
    check_stage_links(recipe.stages, sources)
    last = recipe.stages[-1]
    if last.data.test_path:  # scored after the last stage: its columns and shape checked now
        from rayeffi.evaluate import test_source

        test_source(last, sources[-1].info, last.data.test_path, out_dir / "data" / "test",
                    f"stages.{last.name}.data.test_path")
    check_address(address)
    if address is None:  # a private Ray gets this machine's GPUs: check in seconds, before it starts
        check_gpus(recipe, _joined_ray_resources() if ray_is_initialized() else local_resources())
    return sources


def _joined_ray_resources() -> dict[str, float]:
    import ray

    return ray.cluster_resources()


def local_resources() -> dict[str, float]:
    """What a private Ray started on this machine would have, as far as the checks go."""
    return {"GPU": float(torch.cuda.device_count())}


def check_stage(stage: StageConfig, out_dir: Path, stage_names: set[str],
                choices: dict[str, PrecisionChoice] | None = None) -> DataSource:
    if stage.tune is not None:
        from rayeffi.stages.tune import check_search_space  # Ray Tune: only for a stage that uses it

        check_search_space(stage)
    links = {"previous", *stage_names}
    init = stage.init_from
    if init is not None and init.path not in links and not Path(init.path).exists():
        raise UserError(
            f"stages.{stage.name}.init_from: {Path(init.path).absolute()} does not exist and {init.path!r} is not "
            f"an earlier stage: give 'previous', an earlier stage's name, or {WEIGHT_FORMATS}"
        )
    source = resolve_source(stage.data, stage.seed, out_dir / "data", stage.task)
    augment = stage.data.augment
    if augment.active and source.info.image_shape is None:
        raise UserError(f"stages.{stage.name}.data.augment works on images, and this data has no image shape: "
                        "set data.image_shape=[channels, height, width] or remove data.augment")
    if augment.mean is not None and len(augment.mean) != source.info.image_shape[0]:
        raise UserError(f"stages.{stage.name}.data.augment.mean has {len(augment.mean)} values but the images have "
                        f"{source.info.image_shape[0]} channels: give one mean and std per channel")
    choice = _check_model_contract(stage, source)
    if choices is not None:
        choices[stage.name] = choice
    _check_step_options(stage, source)
    _check_weight_files(stage, source, links)
    if stage.parallel.strategy in STRATEGY_CHECKS:
        STRATEGY_CHECKS[stage.parallel.strategy](stage, source.info)
    for key, config in stage.technique_keys():
        TECHNIQUES[config.name].check(config, stage, source.info, key)
    return source


def check_stage_links(stages, sources: list[DataSource]) -> None:
    """A stage that starts from an earlier stage's weights (``init_from``) builds a model they
    load into (under its ``prefix`` and ``strict``): checked here, before Ray starts and before
    the earlier stage spends its time.

    Skipped where the earlier stage searches model keys with Tune (its best trial decides
    the shape).
    """
    from rayeffi.models import build_model

    for index, stage in enumerate(stages):
        init = stage.init_from
        if init is None or index == 0 and init.path == "previous":
            continue
        names = [earlier.name for earlier in stages[:index]]
        if init.path == "previous":
            source_index = index - 1
        elif init.path in names:
            source_index = names.index(init.path)
        else:
            continue  # a weights file: _check_weight_files read it
        earlier = stages[source_index]
        if earlier.tune is not None and any(key.startswith("model.") for key in earlier.tune.search_space):
            continue
        if earlier.model == stage.model and sources[source_index].info == sources[index].info and not init.prefix:
            continue
        weights = build_model(earlier.model, sources[source_index].info).state_dict()
        _check_weights(weights, f"the weights of stage {earlier.name!r}", build_model(stage.model, sources[index].info),
                       init, f"stages.{stage.name}.init_from", stage.name)


def _check_weight_files(stage: StageConfig, source: DataSource, links: set) -> None:
    """Read every weights file the stage starts from and match it to its model, before Ray starts."""
    from rayeffi.models import build_model
    from rayeffi.weights import read_weights

    init = stage.init_from
    checks = []
    if init is not None and init.path not in links:
        checks.append((init.path, stage.model, init, f"stages.{stage.name}.init_from"))
    for key, config in stage.technique_keys():
        for index, teacher in enumerate(getattr(config, "teachers", ())):
            if teacher.stage is None and teacher.checkpoint and teacher.model is not None:
                checks.append((teacher.checkpoint, teacher.model, teacher, f"{key}.teachers.{index}"))
    for path, model_config, options, key in checks:
        try:
            weights = read_weights(path)
        except UserError as exc:
            raise UserError(f"{key}: {exc}") from None
        _check_weights(weights, f"weights {Path(path).absolute()}", build_model(model_config, source.info), options,
                       key, stage.name)


def _check_weights(weights: dict, source: str, model: torch.nn.Module, options, key: str, stage_name: str) -> None:
    """``weights`` load into ``model`` under ``options``' prefix and strict; strict: false prints what it skips."""
    from rayeffi.weights import load_weights, skipped_message

    short_key = key.split(".", 2)[-1]  # init_from, distill.teachers.0: what the fix names
    try:
        match = load_weights(model, weights, prefix=options.prefix, strict=options.strict, source=source,
                             key=short_key)
    except UserError as exc:
        raise UserError(f"{key}: {exc}") from None
    if not match.fits:  # strict: false, once per run, on the driver
        print(f"[{stage_name}] {key}: {skipped_message(match, source)}", flush=True)


def _check_step_options(stage: StageConfig, source: DataSource) -> None:
    """The optimizer class builds with the recipe's arguments; a per-step warm-up fits in the run."""
    from rayeffi.worker.optim import check_optimizer, steps_per_epoch

    key = f"stages.{stage.name}.optimizer"
    check_optimizer(stage.optimizer, key)
    schedule = stage.optimizer.schedule
    if schedule.per_step:
        total = stage.total_epochs * steps_per_epoch(source.info.num_train, stage.data_layout,
                                                     stage.scaling.num_workers)
        if schedule.warmup_steps >= total:
            raise UserError(f"{key}.schedule.warmup_steps {schedule.warmup_steps} is not shorter than the run's "
                            f"{total} optimizer steps ({stage.total_epochs} epochs of {total // stage.total_epochs}): "
                            f"use fewer warm-up steps or more epochs")


def _check_model_contract(stage: StageConfig, source: DataSource) -> PrecisionChoice:
    """Build the model and run 2 real rows forward and backward in the stage's precision, with the
    named inputs the data carry (the forward takes every ``data.inputs`` argument; none reaches a
    one-tensor strategy); then, for a reduced or ``auto`` precision, time a worker's batch in it
    against FP32 (``driver/precision_check.py``)."""
    policy = stage.precision.policy
    # auto: the dry forward runs in FP32; the timing then tries the reduced policy
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp16-master": torch.float16}.get(policy)

    def autocast_for(model):
        if dtype is None:
            return contextlib.nullcontext()
        run_lstms_in_fp32(model)  # as the policies run them on a CPU worker
        return reduced_precision_autocast("cpu", dtype, needs_onednn_off(model, "cpu"))

    task = build_task(stage.task)
    model = check_model(stage.model, source.info, sample_rows(source), autocast_for, task)
    if stage.activation_checkpointing is not None:  # the model lists blocks, at least `every` of them
        try:
            checkpoint_blocks(model, stage.activation_checkpointing.every)
        except UserError as error:
            raise UserError(f"stages.{stage.name}.{error}") from None
    layout = source.columns(extra=False)
    check_named_inputs(model, stage.model.name, stage.data.inputs, [name.removeprefix(INPUT_PREFIX) for name in
                                                                    layout.input_columns], stage.parallel.strategy)
    if stage.compile is None and policy == "fp32":  # nothing more to check: no batch read, no time spent
        return PrecisionChoice(policy, policy, None)
    rows = sample_rows(source, stage.data_layout.rows_per_read)  # one worker's batch
    if stage.compile is not None:
        _check_compiled_gradients(stage, model, rows, task)
    if dtype is not None and fp32_layers(model):
        layers = ", ".join(f"{name} ({kind})" for name, kind in fp32_layers(model).items())
        print(f"[{stage.name}] note: under {policy} these layers compute in FP32 on CPU: {layers}", flush=True)
    if policy == "fp32":
        return PrecisionChoice(policy, policy, None)
    return check_precision(stage, source.info, rows, task, echo=lambda line: print(line, flush=True))


def _check_compiled_gradients(stage: StageConfig, model, rows, task) -> None:
    """``compile``: the compiled backward agrees with eager on one worker's batch of real rows
    (``models/compiled.py``; the wrong gradients seen came at 16 rows and more, not at 2-8), or
    one error line before any worker compiles and trains wrongly."""
    print(f"[{stage.name}] compile: checking compiled gradients against eager on {len(rows[0])} rows", flush=True)
    mismatch = compiled_gradient_mismatch(model, rows[0], rows[1], task.loss, rows[2] if len(rows) > 2 else None,
                                          stage.compile.mode, stage.compile.fullgraph)
    if mismatch:
        raise UserError(f"stages.{stage.name}.compile: torch {torch.__version__} computes other gradients compiled "
                        f"than eager for this model ({mismatch}); training would go wrong: set compile: false")


def check_gpus(recipe: Recipe, cluster_resources: dict[str, float]) -> None:
    """A stage asking for more GPUs per Ray Train run than the cluster has would wait for ever."""
    available = cluster_resources.get("GPU", 0.0)
    for stage in recipe.stages:
        needed = stage.scaling.gpus_per_worker * max(stage.scaling.num_workers, 1)
        if needed > available:
            raise UserError(
                f"stages.{stage.name}.scaling: asks for {needed:g} GPUs ({stage.scaling.num_workers} workers x "
                f"{stage.scaling.gpus_per_worker:g}) but the cluster has {available:g}: set scaling.use_gpu: false, "
                "lower scaling.num_workers or join a cluster with GPUs (--address)")


def cpus_needed(stage: StageConfig) -> float:
    concurrent_runs = stage.tune.max_concurrent_trials if stage.tune else 1
    return concurrent_runs * max(stage.scaling.num_workers, 1) * stage.scaling.resources_per_worker.get("CPU", 1.0)
