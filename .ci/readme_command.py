"""Print the README's Nth shell command block of "## Quick start" (1: install and first scan,
2: the test command), exactly as a reader copies it, so CI runs what the README says."""

from __future__ import annotations

import re
import sys
from pathlib import Path


def quick_start_blocks(readme: str) -> list[str]:
    section = readme.split("\n## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", section, re.S)]


if __name__ == "__main__":
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    sys.stdout.write(quick_start_blocks(text)[int(sys.argv[1]) - 1] + "\n")
