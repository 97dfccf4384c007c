"""How long `snakemake -n` takes to plan a config's DAG: wall time, CPU time and peak memory of each try.

    python benchmarks/planning_time.py configs/scale-plan.yaml --tries 3
    python benchmarks/planning_time.py config.yaml --workdir .      # a no-op dry run of a finished default run

It plans in a fresh temporary folder unless --workdir is given, so that the figure is the whole DAG's, and prints one
Markdown row per try (the job count comes from Snakemake's own "Job stats" table). CPU seconds are what to compare
between commits on a busy machine; wall seconds only on an idle one.
"""

from __future__ import annotations

import argparse
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def planned_job_count(output: str) -> int:
    """The "total" row of the dry run's job table; 0 when there is nothing to do."""
    match = re.search(r"^total\s+(\d+)\s*$", output, flags=re.MULTILINE)
    return int(match.group(1)) if match else 0


def plan_once(configfile: Path, workdir: Path) -> dict[str, float]:
    command = [str(Path(sys.executable).parent / "snakemake"), "-n", "--snakefile", str(REPO / "Snakefile"),
               "--directory", str(workdir), "--cores", "2", "--configfile", str(configfile)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"snakemake -n failed for {configfile}:\n{result.stderr[-2000:]}")
    return {"wall_s": wall, "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            # ru_maxrss of children is the largest of any child so far, in KiB on Linux.
            "max_rss_mb": after.ru_maxrss / 1024, "jobs": planned_job_count(result.stdout + result.stderr)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configfile", type=Path)
    parser.add_argument("--tries", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="plan in this folder (e.g. a finished run's, for a no-op); default: a fresh temporary one")
    options = parser.parse_args(argv)
    if not options.configfile.is_file():
        raise SystemExit(f"config file {options.configfile} not found")
    if options.tries < 1:
        raise SystemExit(f"--tries must be at least 1; got {options.tries}")
    print("| config | try | jobs | wall s | CPU s | peak RSS MB |\n|---|---|---|---|---|---|")
    for attempt in range(1, options.tries + 1):
        with tempfile.TemporaryDirectory() as scratch:
            figures = plan_once(options.configfile.resolve(), options.workdir or Path(scratch))
        print(f"| {options.configfile} | {attempt} | {figures['jobs']} | {figures['wall_s']:.1f} | "
              f"{figures['cpu_s']:.1f} | {figures['max_rss_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
