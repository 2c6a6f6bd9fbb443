"""The configuration reference (Markdown) from sidecar.config, for the README.

    python scripts/config_reference.py           # print the table
    python scripts/config_reference.py --write   # replace the table in README.md

tests/test_readme.py checks that the README's table matches, so the two never drift apart.
"""

import sys
from pathlib import Path

from sidecar.config import describe

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"


def table() -> str:
    lines = ["| key | default | environment | meaning |", "|---|---|---|---|"]
    for key, default, doc in describe():
        env = "SIDECAR_" + key.upper().replace(".", "__")
        lines.append(f"| `{key}` | `{default}` | `{env}` | {doc} |")
    return "\n".join(lines)


def readme_table(text: str) -> str:
    return text[text.index(START) + len(START) : text.index(END)].strip()


def write() -> None:
    text = README.read_text()
    a, b = text.index(START) + len(START), text.index(END)
    README.write_text(text[:a] + "\n" + table() + "\n" + text[b:])


if __name__ == "__main__":
    if "--write" in sys.argv:
        write()
    else:
        print(table())
