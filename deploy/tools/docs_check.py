"""Every command in the deployment docs says who runs it (for
scripts/check-deploy): each line of a ```sh block in deploy/README.md and
docs/deploy.md ends with `# run by <script>` (one of this repository's
scripts, which does run it) or `# requires <what the checks lack>` (a
cluster, a container engine, your Redis, a release build). Paths of this
repository that a command names must exist.

    python docs_check.py REPO_ROOT
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

DOCS = ("deploy/README.md", "docs/deploy.md")


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else Path(".")
    errors, count = [], 0
    for rel in DOCS:
        in_block = False
        for number, line in enumerate((root / rel).read_text().splitlines(), 1):
            if line.startswith("```"):
                in_block = line.strip() == "```sh" if not in_block else False
                continue
            if not in_block or not line.strip() or line.lstrip().startswith("#"):
                continue
            count += 1
            command, _, comment = line.partition("  #")
            marker = re.match(r"\s*(run by (scripts/[\w-]+)|requires \S)", comment)
            if not marker:
                errors.append(f"{rel}:{number}: end the command with `# run by scripts/…` or `# requires …`")
            elif marker.group(2) and not (root / marker.group(2)).is_file():
                errors.append(f"{rel}:{number}: {marker.group(2)} does not exist")
            for path in re.findall(r"(?<![\w/.-])((?:deploy|scripts|services|clients)/[\w./-]+)", command):
                if not (root / path).exists():
                    errors.append(f"{rel}:{number}: {path} does not exist")
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    if not errors:
        print(f"  ok  {count} commands in {', '.join(DOCS)}, each marked with who runs it")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
