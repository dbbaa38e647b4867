"""Your own images, end to end: write scikit-learn's digits as PNG files in the folder layout cissl
reads (a few labeled per class, long-tailed; many unlabeled; a test folder), train SeMi on them with
examples/own_data.yaml, tabulate the run, and predict new images.

    python examples/own_folder.py --out /tmp/own_digits            # 1500 iterations of examples/own_data.yaml
    python examples/own_folder.py --out /tmp/own_digits --iterations 30   # a smoke run
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

import cissl.api as cissl
from cissl.evaluation.report import to_markdown

LABELED_PER_CLASS = [20, 15, 11, 9, 7, 5, 4, 3, 2, 2]  # a long tail, as a user's few labels often are


def write_folder(root: Path, seed: int = 0) -> Path:
    """labeled/<digit>/, unlabeled/ and test/<digit>/ PNG files from the 8x8 digits (scaled to 0..255)."""
    digits = load_digits()
    images = np.rint(digits.images * (255 / 16)).astype(np.uint8)
    labels = digits.target
    rng = np.random.default_rng(seed)
    for k, n in enumerate(LABELED_PER_CLASS):
        members = rng.permutation(np.flatnonzero(labels == k))
        for part, chosen in (("labeled", members[:n]), ("unlabeled", members[n:n + 90]), ("test", members[-40:])):
            folder = root / part / f"digit_{k}" if part != "unlabeled" else root / part
            folder.mkdir(parents=True, exist_ok=True)
            for i in chosen:
                Image.fromarray(images[i]).save(folder / f"{i:04d}.png")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the images and the run")
    parser.add_argument("--iterations", type=int, default=1500)
    args = parser.parse_args()
    data = write_folder(args.out / "images")
    config_file = Path(__file__).with_name("own_data.yaml")
    evals = max(1, args.iterations // 2)
    config = cissl.load_config(config_file, [f"data.root={data}", f"train.iterations={args.iterations}",
                                             f"train.eval_every={evals}", f"train.checkpoint_every={evals}",
                                             "train.report_last=1", "train.device=cpu"])
    results = cissl.train(config, args.out / "runs" / "semi" / "seed0", quiet=False)
    print(f"balanced accuracy on the test folder: {100 * results['balanced_accuracy']:.2f} %")
    print(to_markdown(cissl.report(args.out / "runs")))
    run = cissl.load_run(args.out / "runs" / "semi" / "seed0")
    files, predictions = run.predict_files(data / "test" / "digit_9")
    names = [run.class_names[k] for k in predictions.labels]
    print(f"digit_9 test images predicted as: {', '.join(sorted(set(names)))} "
          f"({names.count('digit_9')} of {len(files)} right)")


if __name__ == "__main__":
    main()
