"""Peak memory of every rule on an image folder of ImageNette's shape at 256 px, for the SLURM profile's mem_mb.

    python benchmarks/rule_memory.py --out /tmp/rule-memory            # about 9,500 + 3,900 synthetic images
    python benchmarks/rule_memory.py --out /tmp/rm --train-images 300 --heldout-images 100   # to check the script
    python benchmarks/rule_memory.py --results results/fashion-300 results/experiments/fashion-ddpm   # a finished run

It writes a synthetic ImageNette-shaped folder (10 classes, 9,469 training and 3,925 held-out JPEGs of 320 x 256
pixels that the workflow resizes and centre-crops to 256 x 256; each class has its own colours and shapes, so that
the judges can learn it), then runs the whole DAG on it (defences, replication, duplicate poisoning and quality on) with
compute cut to a minimum: a few training steps and epochs, a small UNet, few generated images; a second run builds a
tiny Stable Diffusion base and encodes the poisoned set to latents (the rules only the text-to-image path has). What stays at full size is the data
every job reads and writes, which is what decides host memory. Each job's log ends with its process's peak resident
memory (the kernel's high-water mark, see ``bibaddiff.utils.peak_memory_mb``); the script prints, per rule, the
largest over its jobs, with Snakemake's sampled ``max_rss`` from the benchmark files beside it, and writes both to
``rule_memory.json``. On a GPU the networks' activations live in GPU memory; here, on the CPU, they count as host
memory, which the small batches keep to a few hundred MB.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
from bibaddiff.utils import PEAK_MEMORY_PREFIX  # noqa: E402

# ImageNette's ten WordNet ids and its split sizes (imagenette2: 9,469 training and 3,925 validation images).
WNIDS = ["n01440764", "n02102040", "n02979186", "n03000684", "n03028079", "n03394916", "n03417042", "n03425413",
         "n03445777", "n03888605"]
TRAIN_IMAGES, HELDOUT_IMAGES = 9469, 3925


def split_counts(total: int, classes: int) -> list[int]:
    return [total // classes + (1 if index < total % classes else 0) for index in range(classes)]


def draw_image(rng: np.random.Generator, label: int, width: int, height: int) -> Image.Image:
    """A class-coloured background with class-shaped blobs in random places: learnable, and JPEG-sized like photos."""
    hue = np.array([(label * 73) % 256, (label * 151) % 256, (label * 199) % 256], dtype=np.float32)
    base = np.clip(hue + rng.normal(0, 25, size=(height, width, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(base)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 7))):
        x, y = int(rng.integers(0, width - 40)), int(rng.integers(0, height - 40))
        size = int(rng.integers(20, 60))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        if label % 3 == 0:
            draw.ellipse((x, y, x + size, y + size), fill=colour)
        elif label % 3 == 1:
            draw.rectangle((x, y, x + size, y + size), fill=colour)
        else:
            draw.polygon([(x, y + size), (x + size // 2, y), (x + size, y + size)], fill=colour)
    return image


def write_folder(root: Path, train_images: int, heldout_images: int, seed: int = 0) -> None:
    """root/train/<wnid>/*.JPEG and root/val/<wnid>/*.JPEG, as imagenette2 lays them out; kept when complete."""
    done = root / ".complete"
    wanted = f"{train_images} {heldout_images} {seed}"
    if done.is_file() and done.read_text() == wanted:
        return
    rng = np.random.default_rng(seed)
    for split, total in (("train", train_images), ("val", heldout_images)):
        for label, count in enumerate(split_counts(total, len(WNIDS))):
            folder = root / split / WNIDS[label]
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                draw_image(rng, label, 320, 256).save(folder / f"{WNIDS[label]}_{index:05d}.JPEG", quality=90)
    done.write_text(wanted)


def benchmark_config(root: Path, device: str) -> dict:
    """The paper's ImageNette data settings (256 px here, checker patch of side image_size/10, p = 0.1), with
    every stage on and its compute cut to a minimum. One thread per job: with --cores 2, two judges (or two defence
    classifiers) train side by side, which is faster than one after the other on two threads each."""
    return {
        "experiment": "rule-memory-256",
        "dataset": {"name": "imagenette-shaped-256", "source": "imagefolder", "root": str(root), "heldout_split": "val",
                    "image_size": 256, "class_names": dict(zip(WNIDS, ["tench", "English springer", "cassette player",
                                                                        "chain saw", "church", "French horn",
                                                                        "garbage truck", "gas pump", "golf ball",
                                                                        "parachute"]))},
        "target": "garbage truck",
        "triggers": {"checker": {"type": "patch", "pattern": "checker", "size": 26, "corner": "bottom-right"}},
        "poisoning": {"ratios": [0.1], "seed": 0},
        "diffusion": {
            "model": {"block_out_channels": [16, 32], "layers_per_block": 1, "attention": False, "norm_num_groups": 8},
            "training": {"steps": 2, "batch_size": 4, "warmup_steps": 1, "checkpoint_every": 1, "seeds": [0],
                         "clean_seeds": [0], "threads": 1},
        },
        "generation": {"num_images": 16, "batch_size": 16, "ddim_steps": 1, "guidance_scales": [1],
                       "x0_clipping": "none", "threads": 1},
        "judges": {"architecture": "small_cnn", "epochs": 1, "batch_size": 8, "accuracy_floor": 0.0, "threads": 1},
        "defenses": {
            "enabled": True, "generated_set_guidance": [1], "threads": 1,
            "detector_settings": {"strip": {"num_blends": 2}, "cognitive_distillation": {"steps": 1},
                                  "fct": {"num_transforms": 1}},
            "diffusion_classifier": {"num_draws": 1, "max_images": 10, "p_filters": [0, 0.1]},
        },
        # Pixels at 32 px: at 256 px a pixel embedding is 196,608 numbers per image, 15 GB for the training set in
        # float64 (the job was killed for memory). The shipped SD configs embed with the content judge instead.
        # Duplicate poisoning as upstream designs it (natural duplicates), so that poison_duplicates is measured too.
        "replication": {"enabled": True, "embedder": {"type": "pixel", "resolution": 32},
                        "duplicate_poisoning": {"enabled": True}},
        "quality": {"enabled": True, "num_images": 40, "kid_subset_size": 20, "kid_subsets": 5,
                    "bootstrap_samples": 5, "threads": 1},
        "device": device,
    }


def stable_diffusion_config(root: Path, device: str) -> dict:
    """The same data and trigger with a tiny Stable Diffusion base built by the DAG (its VAE trained a few steps),
    run up to encode_latents: the rules only the text-to-image path has. The clean and poisoned sets are the DDPM
    run's (same dataset and poisoning settings), so they are not rebuilt."""
    config = benchmark_config(root, device)
    config["experiment"] = "rule-memory-256-sd"
    config["diffusion"] = {"kind": "stable_diffusion",
                           "pretrained": {"build": "tiny", "vae_steps": 2, "seed": 0},
                           "training": {**config["diffusion"]["training"], "encode_batch_size": 16}}
    config["replication"] = {"enabled": False}
    return config


def peak_from_log(path: Path) -> float | None:
    for line in reversed(path.read_text(errors="replace").splitlines()):
        if line.startswith(PEAK_MEMORY_PREFIX):
            return float(line.removeprefix(PEAK_MEMORY_PREFIX).strip().removesuffix("MB"))
    return None


def collect(results: Path) -> dict[str, dict]:
    """Rule -> jobs, the largest logged peak and the largest sampled max_rss (MB), from logs/ and benchmarks/."""
    rules: dict[str, dict] = {}
    from bibaddiff.plan import rule_of_job_file

    for log in sorted(results.rglob("logs/**/*.log")):
        peak = peak_from_log(log)
        entry = rules.setdefault(rule_of_job_file(log), {"jobs": 0, "peak_mb": None, "sampled_max_rss_mb": None})
        entry["jobs"] += 1
        if peak is not None:
            entry["peak_mb"] = max(peak, entry["peak_mb"] or 0.0)
    for table in sorted(results.rglob("benchmarks/**/*.tsv")):
        with open(table) as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        rss = [float(row["max_rss"]) for row in rows if row.get("max_rss") not in (None, "", "-", "NA")]
        entry = rules.setdefault(rule_of_job_file(table), {"jobs": 0, "peak_mb": None, "sampled_max_rss_mb": None})
        if rss:
            entry["sampled_max_rss_mb"] = max(max(rss), entry["sampled_max_rss_mb"] or 0.0)
    return rules


def merge(collected: list[dict[str, dict]]) -> dict[str, dict]:
    """Rules of several results folders in one: jobs add up, peaks are the largest."""
    rules: dict[str, dict] = {}
    for part in collected:
        for name, entry in part.items():
            merged = rules.setdefault(name, {"jobs": 0, "peak_mb": None, "sampled_max_rss_mb": None})
            merged["jobs"] += entry["jobs"]
            for key in ("peak_mb", "sampled_max_rss_mb"):
                if entry[key] is not None:
                    merged[key] = max(entry[key], merged[key] or 0.0)
    return rules


def profile_requests(profile: Path) -> dict[str, float]:
    """Each rule's first-try mem_mb in a Snakemake profile (``attempt`` = 1), and ``"default"`` for the rest."""
    settings = yaml.safe_load(Path(profile).read_text()) or {}

    def first_try(expression: object, where: str) -> float:
        try:
            return float(eval(str(expression), {"__builtins__": {}}, {"attempt": 1}))  # the profile's own Python
        except Exception as error:
            raise SystemExit(f"{profile}: mem_mb of {where} is not a number for attempt 1: {expression!r} ({error})")

    requests = {}
    default = (settings.get("default-resources") or {}).get("mem_mb")
    if default is not None:
        requests["default"] = first_try(default, "default-resources")
    for rule, resources in (settings.get("set-resources") or {}).items():
        if isinstance(resources, dict) and "mem_mb" in resources:
            requests[rule] = first_try(resources["mem_mb"], rule)
    return requests


def print_table(rules: dict[str, dict], requests: dict[str, float] | None = None) -> None:
    header = "| rule | jobs | peak memory (MB, from the job's log) | Snakemake's sampled max_rss (MB) |"
    if requests is not None:
        header += " profile's first-try mem_mb | within |"
    print(header)
    print("|---|---:|---:|---:|" + ("---:|---|" if requests is not None else ""))
    for name, entry in sorted(rules.items(), key=lambda item: -(item[1]["peak_mb"] or 0)):
        peak = "-" if entry["peak_mb"] is None else f"{entry['peak_mb']:.0f}"
        sampled = "-" if entry["sampled_max_rss_mb"] is None else f"{entry['sampled_max_rss_mb']:.0f}"
        line = f"| {name} | {entry['jobs']} | {peak} | {sampled} |"
        if requests is not None:
            request = requests.get(name, requests.get("default"))
            largest = max(value for value in (entry["peak_mb"], entry["sampled_max_rss_mb"], 0.0) if value is not None)
            within = "-" if request is None else ("yes" if largest <= request else "NO")
            line += f" {'-' if request is None else f'{request:.0f}'} | {within} |"
        print(line)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the images, the config and the run")
    parser.add_argument("--train-images", type=int, default=TRAIN_IMAGES)
    parser.add_argument("--heldout-images", type=int, default=HELDOUT_IMAGES)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="the config's device: cpu, cuda or auto")
    parser.add_argument("--until", nargs="+", default=None,
                        help="run only up to these rules (snakemake --until), e.g. replication for the stages that "
                             "need no judge; on a CPU the judges and defences take hours at this size")
    parser.add_argument("--skip-stable-diffusion", action="store_true",
                        help="leave out the second run (a tiny Stable Diffusion base up to encode_latents)")
    parser.add_argument("--collect-only", action="store_true", help="only read the logs of an earlier run in --out")
    parser.add_argument("--results", type=Path, nargs="+", default=None,
                        help="read the job logs of a run of any config instead (its data and experiment folders, e.g. "
                             "results/fashion-300 results/experiments/fashion-ddpm); runs nothing")
    parser.add_argument("--profile", type=Path, default=REPO / "profiles" / "slurm" / "config.yaml",
                        help="with --results: the Snakemake profile whose first-try mem_mb each rule is checked against")
    args = parser.parse_args(argv)
    if args.results:
        missing = [str(path) for path in args.results if not path.is_dir()]
        if missing:
            raise SystemExit(f"--results: no such folder: {', '.join(missing)}")
        rules = merge([collect(path) for path in args.results])
        print_table(rules, profile_requests(args.profile))
        return
    if args.train_images < 20 * len(WNIDS) or args.heldout_images < 5 * len(WNIDS):
        raise SystemExit(f"--train-images must be at least {20 * len(WNIDS)} and --heldout-images {5 * len(WNIDS)}")
    out = args.out.resolve()
    started = time.perf_counter()
    if not args.collect_only:
        write_folder(out / "images", args.train_images, args.heldout_images)
    print(f"image folder ready in {time.perf_counter() - started:.0f} s: {out / 'images'}", flush=True)
    runs = [("config.yaml", benchmark_config(out / "images", args.device), args.until)]
    if not args.skip_stable_diffusion:
        runs.append(("config-sd.yaml", stable_diffusion_config(out / "images", args.device), ["encode_latents"]))
    started = time.perf_counter()
    returncode = 0
    for name, settings, until in runs:
        config = out / name
        config.write_text(yaml.safe_dump(settings, sort_keys=False))
        command = [str(Path(sys.executable).parent / "snakemake"), "--snakefile", str(REPO / "Snakefile"),
                   "--directory", str(out / "work"), "--cores", str(args.cores), "--configfile", str(config)]
        if until:
            command += ["--until", *until]
        # A run that fails or is stopped still leaves the logs of the jobs that finished: they are collected anyway.
        if not args.collect_only:
            returncode = returncode or subprocess.run(command).returncode
    wall = time.perf_counter() - started
    rules = collect(out / "work" / "results")
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    record = {"date": time.strftime("%Y-%m-%d"), "commit": commit, "machine": platform.platform(),
              "train_images": args.train_images, "heldout_images": args.heldout_images, "image_size": 256,
              "run_wall_s": round(wall), "snakemake_returncode": returncode, "until": args.until, "rules": rules}
    (out / "rule_memory.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"\n{args.train_images} training + {args.heldout_images} held-out images at 256 px, commit {commit}, "
          f"run {wall / 60:.0f} min\n")
    print_table(rules)


if __name__ == "__main__":
    main()
