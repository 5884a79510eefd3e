"""The README opens with the two commands a newcomer runs; CI runs the second one."""

import re
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
