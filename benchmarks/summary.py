"""One screen of figures: ``python benchmarks/summary.py OUT`` reads ``OUT/figures.jsonl``.

Every figure a benchmark reported, with its target and pass/fail; then every target of the GPU
check that no benchmark reported (a step that failed or ran out of time). Exit code 0 when every
target figure was measured and passed, 1 otherwise.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from figures import FIGURES_FILE

# The figures the GPU check must produce (issue targets on one H200), most important first.
EXPECTED = (
    "stage2 end-to-end guided ViT-L/16 compiled",
    "stage2 guidance step overhead",
    "stage2 loader",
    "stage1 dino",
    "stage1 tokencut",
    "stage1 gradcam",
    "stage1 all methods",
    "eval extraction ViT-L/16 bf16 from JPEGs",
    "eval k-NN 1.28M x 1024 vs 50k",
    "finetune step ViT-large/16 compiled",
    "dense convnext step ViT-large/16 512px eager",
)


def read_figures(out: Path) -> list[dict]:
    path = out / FIGURES_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill
            continue
    return records


def table(records: list[dict], expected=EXPECTED) -> tuple[str, bool]:
    """(the summary text, whether every expected target was measured and met)."""
    lines = [f"{'figure':<52} {'value':>16} {'target':>8}  result"]
    ok = True
    for record in records:
        target = record.get("target")
        bound = "" if target is None else ("> " if record["better"] == "higher" else "< ")
        shown_target = "-" if target is None else f"{bound}{target:g}"
        result = {True: "PASS", False: "FAIL", None: ""}[record.get("passed")]
        ok &= record.get("passed") is not False
        value = f"{record['value']:,.4g} {record['unit']}"
        lines.append(f"{record['name']:<52} {value:>16} {shown_target:>8}  {result}")
    measured = {record["name"] for record in records}
    for name in expected:
        if name not in measured:
            ok = False
            lines.append(f"{name:<52} {'-':>16} {'':>8}  NOT MEASURED")
    return "\n".join(lines), ok


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0] if argv else "gpu_out")
    text, ok = table(read_figures(out))
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
