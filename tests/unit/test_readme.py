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

