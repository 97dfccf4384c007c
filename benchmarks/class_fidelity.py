"""How recognisable are a diffusion model's generations of each class? The content judge's verdict on a few
generations per class, beside the judge's own recall on held-out real images of that class.

G1-G4 read the content judge on the target class only, so a target class that the clean model draws loosely (or that
the judge confuses) turns correct content into "wrong content". This tells the two apart before a target is chosen:
a class whose real images the judge recognises but whose generations it does not is drawn loosely by the model.
Example (the Fashion-MNIST pilot's clean model):

    python benchmarks/class_fidelity.py --model results/fashion/models/clean-<digest>/train-<digest>/seed0 \
        --judge results/fashion/judges/content-<digest> --heldout results/fashion/data/clean-<digest>/heldout \
        --images-per-class 60 --guidance 1

Prints a Markdown table: per class, the judge's recall on held-out real images, the share of generations it assigns
to the class, and the classes it assigns most of the rest to.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from bibaddiff.checks import check_int
from bibaddiff.data import read_dataset
from bibaddiff.diffusion.cells import Cell, CellSettings, generate_cells
from bibaddiff.errors import BibaddiffError
from bibaddiff.judges import load_judge, predict
from bibaddiff.utils import set_threads


def confusion_shares(predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Share of ``predictions`` that fall in each class."""
    if len(predictions) == 0:
        raise BibaddiffError("no predictions to count")
    return np.bincount(predictions, minlength=num_classes)[:num_classes] / len(predictions)


def class_fidelity(model: Path, judge: Path, heldout: Path, images_per_class: int, guidance: float, seed: int,
                   ddim_steps: int, batch_size: int) -> list[dict]:
    """One row per class: held-out recall of the judge, and the judge's assignment of the class's generations."""
    images_per_class = check_int(images_per_class, "--images-per-class", 1)
    judge_model, info = load_judge(judge, device="cpu")
    names = info["class_names"]
    real = read_dataset(heldout)
    if real.class_names != names:
        raise BibaddiffError(f"{heldout}: its classes {real.class_names} are not the judge's {names}")
    real_predictions = predict(judge_model, real.images)
    with tempfile.TemporaryDirectory() as folder:
        cells = [Cell("none", c, guidance, Path(folder) / f"c{c}.npy", Path(folder) / f"c{c}.png")
                 for c in range(len(names))]
        # progress on stderr, so that stdout is the Markdown table alone
        generate_cells(model, cells, CellSettings(images_per_class, ddim_steps, seed, batch_size), torch.device("cpu"),
                       log=lambda line: print(line, file=sys.stderr))
        generated = [predict(judge_model, np.load(cell.images)) for cell in cells]
    rows = []
    for c, name in enumerate(names):
        in_class = real.labels == c
        recall = float((real_predictions[in_class] == c).mean()) if in_class.any() else float("nan")
        shares = confusion_shares(generated[c], len(names))
        others = [(names[o], float(shares[o])) for o in np.argsort(-shares) if o != c and shares[o] > 0][:2]
        rows.append({"class": name, "heldout_recall": recall, "generated_as_class": float(shares[c]),
                     "generated_as_others": others})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a class-conditional DDPM folder written by the workflow")
    parser.add_argument("--judge", required=True, help="the content judge folder of the same dataset")
    parser.add_argument("--heldout", required=True, help="the held-out dataset folder the judge is read against")
    parser.add_argument("--images-per-class", type=int, default=60)
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--ddim-steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=60)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        set_threads(args.threads)
        rows = class_fidelity(Path(args.model), Path(args.judge), Path(args.heldout), args.images_per_class,
                              args.guidance, args.seed, args.ddim_steps, args.batch_size)
    except (BibaddiffError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{args.images_per_class} generations per class at s = {args.guidance:g} from {args.model}; judge {args.judge}")
    print("| class | judge's recall on held-out real images | generations judged as the class | judged instead as |")
    print("|---|---|---|---|")
    for row in rows:
        others = "; ".join(f"{name} {share:.0%}" for name, share in row["generated_as_others"])
        print(f"| {row['class']} | {row['heldout_recall']:.1%} | {row['generated_as_class']:.1%} | {others} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
