"""The README opens with the two commands a newcomer runs; CI runs the second one."""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_readme_commands_and_ci_agree():
    blocks = re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), flags=re.S)
    install_and_quickstart, install_and_test = blocks[0].strip(), blocks[1].strip()
    assert "rayeffi run examples/quickstart.yaml" in install_and_quickstart
    assert "pytest" in install_and_test
    assert install_and_test in (ROOT / ".ci" / "run").read_text()



def test_readme_recipe_validates():
    """The README's recipe is a real one: every check `rayeffi validate` makes passes."""
    import yaml

    import rayeffi

    blocks = re.findall(r"```yaml\n(.*?)\n```", (ROOT / "README.md").read_text(), flags=re.S)
    recipe = next(yaml.safe_load(block) for block in blocks if block.startswith("name: compress"))
    lines = rayeffi.validate(recipe)
    assert any("sparse_kd" in line for line in lines)


def test_readme_is_short_and_its_links_resolve():
    """At most 150 lines; every relative link in the README and docs/README.md names a file that exists."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    for page in (ROOT / "README.md", ROOT / "docs" / "README.md"):
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"


def test_readme_your_data_recipe_validates_with_a_table_a_module_and_weights_beside_it(tmp_path, monkeypatch):
    """The README's "your model and your data" recipe, as written, with the files it names: a table of
    numeric columns, my_model.py beside the recipe and a plain state_dict; validated from another folder."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    import rayeffi

    block = next(block for block in re.findall(r"```yaml\n(.*?)\n```", (ROOT / "README.md").read_text(), flags=re.S)
                 if "my_model:build" in block)
    folder = tmp_path / "project"
    (folder / "data").mkdir(parents=True)
    (folder / "weights").mkdir()
    rng = np.random.default_rng(0)
    columns = {f"f{i}": rng.normal(size=200).astype(np.float32) for i in range(12)}
    columns["target"] = (columns["f0"] > 0).astype(np.int64)
    pq.write_table(pa.table(columns), folder / "data" / "train.parquet")
    (folder / "my_model.py").write_text(
        "from torch import nn\n\n\ndef build(num_features, num_classes, hidden=64):\n"
        "    return nn.Sequential(nn.Linear(num_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))\n")
    model = torch.nn.Sequential(torch.nn.Linear(12, 128), torch.nn.ReLU(), torch.nn.Linear(128, 2))
    torch.save(model.state_dict(), folder / "weights" / "pretrained.pt")
    (folder / "recipe.yaml").write_text(block + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setattr(sys, "path", list(sys.path))
    lines = rayeffi.validate(folder / "recipe.yaml", overrides=["scaling.num_workers=0"])
    assert any("features: 12 columns f0..f11" in line for line in lines), lines
    assert any("finetune" in line for line in lines), lines
