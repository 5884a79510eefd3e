"""The public API is what ``rayeffi.__all__`` says; changing it is a decision, not an accident."""

import rayeffi


def test_public_api_is_pinned():
    assert sorted(rayeffi.__all__) == [
        "DataParallel",
        "DistillConfig",
        "DsdConfig",
        "Pipeline",
        "Precision",
        "Prepared",
        "Recipe",
        "Result",
        "StageConfig",
        "StepParts",
        "Strategy",
        "Technique",
        "TrainingDiverged",
        "UserError",
        "assemble",
        "load_checkpoint",
        "load_model",
        "load_recipe",
        "prepare",
        "run",
        "run_recipe",
        "train_step",
        "validate",
    ]
    assert all(hasattr(rayeffi, name) for name in rayeffi.__all__)
