"""The README's own-script block, as the tests run it (tests/test_own_script.py, tests/app/test_own_script_live.py)."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MARKER = "<!-- own-script: tests/test_own_script.py runs this block as it is -->"


def readme_script() -> str:
    text = (REPO / "README.md").read_text()
    block = re.search(re.escape(MARKER) + r"\s*```python\n(.*?)```", text, re.S)
    assert block, "the README's own-script block"
    return block.group(1)
