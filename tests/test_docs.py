"""Citations of docs/reference_quirks.md in the code point at sections that exist."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CITATION = re.compile(r"docs/reference_quirks\.md((?:#[\w-]+)?(?:, #[\w-]+)*)")


def cited_anchors():
    found = {}
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.endswith((".py", ".md")):
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as f:
                    for match in CITATION.finditer(f.read()):
                        for anchor in re.findall(r"#([\w-]+)", match.group(1)):
                            found.setdefault(anchor, []).append(os.path.relpath(path, ROOT))
    return found


def test_every_cited_section_exists():
    with open(os.path.join(ROOT, "docs", "reference_quirks.md"), encoding="utf-8") as f:
        anchors = set(re.findall(r'<a id="([\w-]+)"></a>', f.read()))
    cited = cited_anchors()
    assert {"q4", "q11", "q13", "q14", "names"} <= set(cited)  # the scan finds the code's citations
    missing = {a: files for a, files in cited.items() if a not in anchors}
    assert not missing, f"cited but not in docs/reference_quirks.md: {missing}"
