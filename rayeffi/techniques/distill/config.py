"""``kind: distill``: knowledge distillation from trained teachers into a student
(Hinton et al., "Distilling the Knowledge in a Neural Network", 2015; FitNets hints,
Romero et al. 2015). A teacher trained by an earlier stage teaches this stage's model:

    - {name: teacher, kind: train, model: {name: cnn}}
    - {name: student, kind: distill, model: {name: mlp, hidden_sizes: [64]},
       distill: {teachers: [teacher], temperature: 4, alpha: 0.9}}

This module is pure configuration (no torch).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field, NonNegativeInt, PositiveFloat, SkipValidation, field_validator, model_validator

from rayeffi.recipe.sections import ModelConfig, Section


class TeacherConfig(Section):
    """One teacher: an earlier stage's artifact, a checkpoint file and its model, or (from
    Python, ``rayeffi.prepare``) a trained ``nn.Module`` itself."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    stage: str | None = None
    """Name of an earlier stage; its model config comes with it."""
    checkpoint: str | None = None
    """The teacher's weights (filled in from ``stage`` when the stage has run): a state_dict file
    (``.pt``, ``.pth``, ``.bin``), a ``.safetensors`` file, a Hugging Face ``save_pretrained``
    folder or a rayeffi checkpoint, read as ``init_from`` reads them (``rayeffi/weights/``)."""
    model: ModelConfig | None = None
    """The teacher's network (given with ``checkpoint``; taken from ``stage`` otherwise)."""
    prefix: str = ""
    """A leading part of the keys only the file or only the model has (``init_from.prefix``)."""
    strict: bool = True
    """``false``: load the tensors that fit and keep the rest at their initial values (``init_from.strict``)."""
    module: SkipValidation[Any] = Field(None, exclude=True)
    """A trained ``nn.Module`` passed from Python (``DistillConfig(teachers=[module])``); it is
    frozen and used as it is. Not part of a dumped recipe."""

    @model_validator(mode="after")
    def _one_source(self) -> TeacherConfig:
        if self.module is not None:
            if self.stage is not None or self.checkpoint is not None:
                raise ValueError("a teacher is a module, a stage or a checkpoint: give only one")
            return self
        if self.stage is None and self.checkpoint is None:
            raise ValueError("a teacher names an earlier stage or gives {checkpoint: PATH, model: {...}}")
        if self.stage is None and self.model is None:
            raise ValueError(
                f"teacher checkpoint {self.checkpoint}: say which network it holds, "
                "e.g. {checkpoint: PATH, model: {name: cnn, channels: [32, 64]}}"
            )
        return self


class HintConfig(Section):
    """A FitNets hint: the student's ``student`` module output regresses onto the teacher's."""

    student: str
    """Module path in the student (``layers.2``; see ``model.named_modules()``)."""
    teacher: str
    """Module path in the teacher (``features.3``)."""
    weight: PositiveFloat = 1.0
    teacher_index: NonNegativeInt = 0
    """Which teacher of an ensemble gives the hint."""


def _teacher_item(teacher: Any) -> Any:
    """A stage name, a mapping, a TeacherConfig, or a module object (anything with ``state_dict``)."""
    if isinstance(teacher, str):
        return {"stage": teacher}
    if isinstance(teacher, (dict, TeacherConfig)) or not callable(getattr(teacher, "state_dict", None)):
        return teacher
    return {"module": teacher}


class DistillConfig(Section):
    """The distillation settings of one stage: ``distill: {...}`` of a ``kind: distill`` stage,
    or ``{name: distill, ...}`` in any stage's ``techniques`` list."""

    name: Literal["distill"] = "distill"
    adds_loss: ClassVar[bool] = True
    """Its ``loss`` hook adds a term: a strategy that runs the loss itself must apply it (``recipe/compat.py``)."""
    teachers: tuple[TeacherConfig, ...] = Field(min_length=1)
    """Stage names (``[teacher]``) or ``{checkpoint, model}`` mappings; from Python also
    trained ``nn.Module`` objects. Several teachers form an ensemble whose soft targets are
    averaged."""
    temperature: PositiveFloat = 4.0
    """Softmax temperature T for the soft targets (Hinton: 1 recovers ordinary softmax)."""
    alpha: float = Field(0.9, ge=0.0, le=1.0)
    """Weight of the soft-target term; ``1 - alpha`` weighs the hard-label cross-entropy."""
    hints: tuple[HintConfig, ...] = ()
    hint_epochs: NonNegativeInt = 0
    """0: hint losses are added to the KD loss every epoch. N > 0: the FitNets schedule,
    N epochs of hints alone, then KD alone."""
    cache: bool = False
    """Compute the teachers' logits once over the training set (Ray Data) and train the
    student from that cache, never running a teacher during training."""

    @field_validator("teachers", mode="before")
    @classmethod
    def _names_are_stages(cls, teachers: Any) -> Any:
        if isinstance(teachers, str):
            teachers = [teachers]
        if isinstance(teachers, (list, tuple)):
            return [_teacher_item(t) for t in teachers]
        return teachers

    @model_validator(mode="after")
    def _consistent(self) -> DistillConfig:
        for index, hint in enumerate(self.hints):
            if hint.teacher_index >= len(self.teachers):
                raise ValueError(
                    f"distill.hints[{index}].teacher_index {hint.teacher_index}: there are only "
                    f"{len(self.teachers)} teachers"
                )
        if self.hint_epochs and not self.hints:
            raise ValueError("distill.hint_epochs needs distill.hints: add hints or set hint_epochs to 0")
        if self.cache and self.hints:
            raise ValueError(
                "distill.cache stores teacher logits only, but hints need the teachers' feature maps every "
                "step: set distill.cache false or remove distill.hints"
            )
        return self


    def fixed_epochs(self) -> None:
        return None  # the stage's epochs

    def smoke(self, raw: dict[str, Any]) -> dict[str, Any]:
        if raw["hint_epochs"]:
            raw["hint_epochs"] = 1
        return raw

    def check_stage(self, stage: Any) -> None:
        """Checks that need the whole stage; raise ValueError."""
        if self.hint_epochs >= stage.total_epochs:
            raise ValueError(
                f"distill.hint_epochs {self.hint_epochs} leaves no KD epochs of the stage's "
                f"{stage.total_epochs}: lower hint_epochs or raise epochs"
            )


CONFIG = DistillConfig
"""This technique's recipe section (``techniques/registry.py`` reads it)."""
