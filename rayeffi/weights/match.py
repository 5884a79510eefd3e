"""Line a state_dict's keys up with a model's, and load what fits.

``prefix`` takes the two common ways keys differ by a leading part:

- **the file's keys carry it** (a wrapper saved them: ``model.``, ``module.`` from DDP,
  ``_orig_mod.`` from ``torch.compile``; or the file holds a bigger model whose part this
  model is, e.g. the ``bert.`` part of a whole classifier): the keys under the prefix are
  taken with it removed; the file's other keys are left out (not counted as unexpected);
- **the model's keys carry it** (the file holds a backbone, the model wraps it, e.g. a
  ``BertModel`` file into a classifier's ``bert.``): the file fills the model's part under the
  prefix; the model's keys outside it keep their initial values (not counted as missing).

The file's side is tried first. Without a prefix, a ``module.`` or ``_orig_mod.`` that every key
of the file carries (and no key of the model) is removed: those only ever come from wrappers.
A key the model ties to another (GPT-2's ``lm_head.weight`` is ``transformer.wte.weight``, and
Hugging Face leaves it out of its safetensors) is not missing when the tensor it shares is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from rayeffi.errors import UserError

WRAPPER_PREFIXES = ("module.", "_orig_mod.")
"""Removed without being asked when every key of the file carries one (DDP, ``torch.compile``)."""
NUM_NAMED = 3
"""Names listed per kind of mismatch in a message (then ``...``)."""
SUGGESTION_DEPTH = 2
"""Dotted parts of a key tried as prefixes when suggesting one (``bert.``, ``model.encoder.``)."""

Shapes = dict[str, tuple[int, ...]]


@dataclass(frozen=True)
class WeightsMatch:
    """How a state_dict's keys line up with a model's, under a prefix."""

    weights: dict[str, torch.Tensor]
    """Model key -> tensor: what loads (names and shapes fit)."""
    missing: tuple[str, ...]
    """Model keys nothing fills (a key tied to a loaded one is filled)."""
    unexpected: tuple[str, ...]
    """Keys of the file (as written there) the model has no place for."""
    mis_shaped: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]
    """``(model key, shape in the file, shape in the model)``."""
    prefix: str = ""
    """The prefix applied: given, or a wrapper's removed without being asked."""
    side: Literal["file", "model", ""] = ""
    """Whose keys carry ``prefix``: the file's (removed) or the model's (added); "" for none."""
    num_left_out: int = 0
    """Keys of the file outside ``prefix`` (another part of a bigger model): not asked for."""
    num_expected: int = 0
    """Model keys asked for (all of them, or those under a model-side prefix)."""

    @property
    def fits(self) -> bool:
        return not (self.missing or self.unexpected or self.mis_shaped)

    @property
    def num_filled(self) -> int:
        """Model keys asked for that the weights fill (directly or through a tied key)."""
        return self.num_expected - len(self.missing) - len(self.mis_shaped)


def match_weights(state: dict[str, torch.Tensor], model: nn.Module, prefix: str = "") -> WeightsMatch:
    """How ``state`` lines up with ``model``'s state_dict under ``prefix`` (see the module's docstring)."""
    model_state = model.state_dict()
    expected = {name: tuple(value.shape) for name, value in model_state.items()}
    found = {name: tuple(value.shape) for name, value in state.items()}
    match = line_up(found, expected, tied_keys(model_state), prefix)
    weights = {name: state[file_key] for name, file_key in match.pop("renamed").items()}
    return WeightsMatch(weights=weights, **match)


def line_up(found: Shapes, expected: Shapes, tied: dict[str, str], prefix: str) -> dict:
    """The pure part of :func:`match_weights`, on key -> shape maps; ``renamed``: model key -> file key."""
    side, applied = _prefix_side(found, expected, prefix)
    if side == "file":
        renamed = {key[len(applied):]: key for key in found if key.startswith(applied)}
    elif side == "model":
        renamed = {applied + key: key for key in found}
        expected = {key: shape for key, shape in expected.items() if key.startswith(applied)}
    elif applied:  # a prefix neither side has: nothing lines up under it
        renamed = {}
    else:
        renamed = {key: key for key in found}
    mis_shaped = tuple((name, found[key], expected[name]) for name, key in renamed.items()
                       if name in expected and found[key] != expected[name])
    loaded = {name: key for name, key in renamed.items() if name in expected and found[key] == expected[name]}
    filled = {tied.get(name, name) for name in loaded}
    wrong = {name for name, _, _ in mis_shaped}
    missing = tuple(name for name in expected
                    if name not in loaded and name not in wrong and tied.get(name, name) not in filled)
    unexpected = tuple(key for name, key in renamed.items() if name not in expected) if renamed else tuple(found)
    return {"renamed": loaded, "missing": missing, "unexpected": unexpected, "mis_shaped": mis_shaped,
            "prefix": applied, "side": side, "num_left_out": len(found) - len(renamed) if side == "file" else 0,
            "num_expected": len(expected)}


def _prefix_side(found: Shapes, expected: Shapes, prefix: str) -> tuple[str, str]:
    if not prefix:
        for wrapper in WRAPPER_PREFIXES:
            if found and all(k.startswith(wrapper) for k in found) and not any(k.startswith(wrapper) for k in expected):
                return "file", wrapper
        return "", ""
    if any(key.startswith(prefix) for key in found):
        return "file", prefix
    if any(key.startswith(prefix) for key in expected):
        return "model", prefix
    return "", prefix  # neither side has it: nothing lines up under it (the message says so)


def tied_keys(model_state: dict[str, torch.Tensor]) -> dict[str, str]:
    """Each key that shares its tensor with an earlier one -> that earlier key (tied weights)."""
    first: dict[tuple, str] = {}
    tied = {}
    for name, value in model_state.items():
        if value.numel() == 0:
            continue
        where = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape), value.stride())
        if where in first:
            tied[name] = first[where]
        else:
            first[where] = name
    return tied


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], *, prefix: str = "", strict: bool = True,
                 source: str = "the weights", key: str = "init_from") -> WeightsMatch:
    """Load ``state`` into ``model`` under ``prefix``; return how it lined up.

    ``strict``: every key asked for must fit, else one :class:`UserError` lists what does not
    (:func:`mismatch_message`); ``strict=False`` loads what fits and leaves the rest at the
    model's initial values (:func:`skipped_message` says what), but still fails when nothing
    fits. ``source`` names the weights and ``key`` the recipe key in the messages.
    """
    match = match_weights(state, model, prefix)
    if (strict and not match.fits) or not match.weights:
        raise UserError(mismatch_message(match, state, model, source, key, strict))
    model.load_state_dict(match.weights, strict=False)
    return match


def mismatch_message(match: WeightsMatch, state: dict[str, torch.Tensor], model: nn.Module, source: str, key: str,
                     strict: bool = True) -> str:
    """One line: what does not fit (counts, the first names, shapes) and the fix (a prefix, when one fits)."""
    what = _differences(match)
    if match.side == "" and match.prefix:
        what = f"no key of the file or of the model starts with prefix {match.prefix!r}; {what}"
    found = {name: tuple(value.shape) for name, value in state.items()}
    model_state = model.state_dict()
    expected = {name: tuple(value.shape) for name, value in model_state.items()}
    fix = suggest_prefix(found, expected, tied_keys(model_state), match, key)
    if fix is None:
        relax = f", or set {key}.strict: false to load what fits" if strict and match.weights else ""
        fix = f"start from weights of this model, or set the model's keys to the ones they were saved from{relax}"
    return f"{source} do not fit this model: {what}; {fix}"


def skipped_message(match: WeightsMatch, source: str) -> str:
    """``strict: false``: what loaded, and what it skipped."""
    return (f"loaded {match.num_filled} of the model's {match.num_expected} tensors from {source} "
            f"(strict: false); skipped {_differences(match)}; the model's skipped tensors keep their initial values")


def suggest_prefix(found: Shapes, expected: Shapes, tied: dict[str, str], current: WeightsMatch,
                   key: str) -> str | None:
    """The prefix (or none) that fills the most of the model, when it fills more than ``current``'s."""
    candidates = {""} | _prefixes(found) | _prefixes(expected)
    scored = []
    for prefix in sorted(candidates):
        match = line_up(found, expected, tied, prefix)
        filled = match["num_expected"] - len(match["missing"]) - len(match["mis_shaped"])
        fits = not (match["missing"] or match["unexpected"] or match["mis_shaped"])
        scored.append((fits, filled, -len(match["missing"]), prefix, match))
    fits, filled, _, prefix, match = max(scored, key=lambda item: item[:3])
    if filled <= current.num_filled or match["prefix"] == current.prefix:
        return None
    share = "" if fits else f" ({filled} of the model's {match['num_expected']} tensors)"
    if not prefix:  # with none, a wrapper's prefix on every key is removed anyway
        return f"the keys fit without a prefix{share}: remove {key}.prefix"
    if match["side"] == "file" and all(name.startswith(prefix) for name in found):
        where = f"every key in the file starts with {prefix!r}"
    elif match["side"] == "file":
        where = f"the file's keys under {prefix!r} fit this model{share}"
    else:
        where = f"the file fits this model's part under {prefix!r}{share}"
    return f"{where}: set {key}.prefix: {prefix!r}"


def _prefixes(keys) -> set[str]:
    """Every dotted leading part of ``keys`` up to :data:`SUGGESTION_DEPTH` parts (``a.``, ``a.b.``)."""
    out = set()
    for name in keys:
        parts = name.split(".")[:-1]
        for depth in range(1, min(len(parts), SUGGESTION_DEPTH) + 1):
            out.add(".".join(parts[:depth]) + ".")
    return out


def _differences(match: WeightsMatch) -> str:
    parts = []
    if match.missing:
        parts.append(f"{len(match.missing)} missing ({_names(match.missing)})")
    if match.unexpected:
        parts.append(f"{len(match.unexpected)} unexpected ({_names(match.unexpected)})")
    if match.mis_shaped:
        shapes = [f"{name} {list(there)} in the file vs {list(here)} in the model"
                  for name, there, here in match.mis_shaped]
        parts.append(f"{len(match.mis_shaped)} mis-shaped ({_names(shapes)})")
    return ", ".join(parts) or "nothing"


def _names(names) -> str:
    return ", ".join(names[:NUM_NAMED]) + (", ..." if len(names) > NUM_NAMED else "")
