"""How long each rule's adapter script takes to start: the time of its imports, before it does any work.

    python benchmarks/script_startup.py --tries 3

For every ``workflow_scripts/*.py`` it runs a fresh interpreter that executes only the script's top-level import
statements, and prints the fastest of ``--tries`` wall times, the time of a bare interpreter for reference, and which
heavy packages (torch, diffusers, transformers, sklearn, matplotlib, pandas) the imports load. Run it on an idle
machine: the figures are wall times.
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "diffusers", "transformers", "sklearn", "matplotlib", "pandas")


def import_lines(script: Path) -> str:
    tree = ast.parse(script.read_text(), filename=str(script))
    return "\n".join(ast.get_source_segment(script.read_text(), node) for node in tree.body
                     if isinstance(node, (ast.Import, ast.ImportFrom)))


def time_imports(code: str, tries: int) -> tuple[float, list[str]]:
    probe = code + f"\nimport sys, json\nprint(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))"
    best, loaded = float("inf"), []
    for _ in range(tries):
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO)
        elapsed = time.perf_counter() - started
        if result.returncode != 0:
            raise SystemExit(f"the imports failed:\n{code}\n{result.stderr[-2000:]}")
        best, loaded = min(best, elapsed), json.loads(result.stdout.strip().splitlines()[-1])
    return best, loaded


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON")
    parser.add_argument("--scripts", nargs="+", default=None, help="only these adapters (names without .py)")
    args = parser.parse_args(argv)
    if args.tries < 1:
        raise SystemExit("--tries must be at least 1")
    bare, _ = time_imports("pass", args.tries)
    rows = {}
    scripts = sorted((REPO / "workflow_scripts").glob("*.py"))
    if args.scripts is not None:
        unknown = set(args.scripts) - {script.stem for script in scripts}
        if unknown:
            raise SystemExit(f"--scripts: no adapter named {', '.join(sorted(unknown))} in workflow_scripts/")
        scripts = [script for script in scripts if script.stem in args.scripts]
    for script in scripts:
        seconds, loaded = time_imports(import_lines(script), args.tries)
        rows[script.stem] = {"seconds": round(seconds, 2), "loads": loaded}
    print(f"bare interpreter: {bare:.2f} s (fastest of {args.tries})\n")
    print("| script | start-up (s) | heavy packages it loads |")
    print("|---|---:|---|")
    for name, row in sorted(rows.items(), key=lambda item: -item[1]["seconds"]):
        print(f"| {name} | {row['seconds']:.2f} | {', '.join(row['loads']) or '-'} |")
    if args.out is not None:
        args.out.write_text(json.dumps({"bare_s": round(bare, 2), "scripts": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
