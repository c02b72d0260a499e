"""What calibrated noise costs in ranking quality, through the real MPC (digits example data).

For each ε, every candidate of ``data-appraisal example-data`` is appraised with influence under
MPC with the data owner's Laplace noise; the script prints the noise scale on the score (Δ/(ε·n)),
the spread of the noiseless scores, and the Spearman ρ between the noisy MPC ranking and the
noiseless plaintext ranking, averaged over ``--repeats`` runs.

Usage: ``.venv/bin/python benchmarks/bench_noise.py [--epsilons 1,10,100] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from common.ml.data import load_dataset
from common.ml.examples import write_example_data
from common.ml.model import feature_bound, prepare_model_owner, v_bound
from common.mpc.noise import influence_sensitivity
from common.mpc.statistics import Shapes
from common.runtime.local import run_local


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epsilons", default="1,10,100")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        split = write_example_data(Path(tmp) / "digits")
        train, test = load_dataset(split.train), load_dataset(split.test)
        cands = [load_dataset(c) for c in split.candidates]
        state = prepare_model_owner(train.X, train.y, test.X, test.y, n_classes=10, l2=1.0)
        bound = feature_bound(train.X, test.X, *(c.X for c in cands))
        baseline = run_local(
            method="influence",
            train=split.train,
            test=split.test,
            candidates=split.candidates,
            check=True,
        )
        plain = np.array(baseline.plaintext)
        print(
            f"digits example: {len(cands)} candidates of ~{cands[0].n_samples} samples, "
            f"v_bound {v_bound(state.v):g}, feature bound {bound:g}"
        )
        print(f"noiseless plaintext scores span {plain.min():.3f} .. {plain.max():.3f}")
        print(f"{'epsilon':>8}{'noise scale':>13}{'mean |noise|':>14}{'Spearman rho':>14}")
        for eps in (float(e) for e in args.epsilons.split(",")):
            scales = [
                influence_sensitivity(
                    Shapes(64, 10, c.n_samples, train.n_samples, test.n_samples, bound),
                    v_bound(state.v),
                )
                / eps
                / c.n_samples
                for c in cands
            ]
            rhos, moved = [], []
            for _ in range(args.repeats):
                noisy = run_local(
                    method="influence",
                    train=split.train,
                    test=split.test,
                    candidates=split.candidates,
                    noise_epsilon=eps,
                )
                scores = np.array([r.score for r in noisy.results])
                rhos.append(float(spearmanr(scores, plain).statistic))
                moved.extend(np.abs(scores - plain).tolist())
            print(
                f"{eps:>8g}{float(np.mean(scales)):>13.4f}{float(np.mean(moved)):>14.4f}"
                f"{float(np.mean(rhos)):>14.3f}"
            )


if __name__ == "__main__":
    main()
