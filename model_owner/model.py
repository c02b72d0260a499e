"""The model owner's model: θ̂ and v = H⁻¹ ḡ_test, trained from its files and cached on disk.

The cache is keyed by the files' contents, λ and the class count, so that a change to any of them
retrains; the public metadata (:class:`ModelInfo`) is computed once with it.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import ConfigError
from common.ml.data import load_dataset
from common.ml.model import ModelOwnerState, feature_bound, prepare_model_owner
from common.web.schemas import DatasetMeta, ModelInfo
from model_owner.settings import ModelOwnerSettings

log = logging.getLogger("data_appraisal.model_owner")


@dataclass
class Model:
    """θ̂ and v, trained from the configured files and cached on disk, and the public metadata."""

    state: ModelOwnerState
    state_path: Path
    info: ModelInfo

    @classmethod
    def load(cls, settings: ModelOwnerSettings, retrain: bool = False) -> Model:
        train = load_dataset(settings.train)
        test = load_dataset(settings.test, n_features=train.n_features)
        n_classes = settings.n_classes or int(max(train.y.max(), test.y.max())) + 1
        if n_classes < 2 or max(train.y.max(), test.y.max()) >= n_classes:
            raise ConfigError(
                f"MODEL_OWNER_N_CLASSES={n_classes} does not cover the labels of the train and "
                "test sets"
            )
        digest = hashlib.sha256()
        for path in (settings.train, settings.test):
            digest.update(Path(path).read_bytes())
        digest.update(f"{settings.l2!r} {n_classes}".encode())
        key = digest.hexdigest()
        path = settings.state_dir / "model.npz"

        def model(state: ModelOwnerState, trained_at: float) -> Model:
            info = ModelInfo(
                n_features=train.n_features,
                n_classes=n_classes,
                label_encoding=settings.label_encoding,
                n_train=train.n_samples,
                n_test=test.n_samples,
                l2=settings.l2,
                feature_bound=feature_bound(train.X, test.X),
                trained_at=trained_at,
            )
            return cls(state, path, info)

        if not retrain and path.exists():
            with np.load(path) as f:
                if str(f["key"]) == key:
                    state = ModelOwnerState(
                        theta=f["theta"], v=f["v"], test_loss=float(f["test_loss"]), l2=settings.l2
                    )
                    return model(state, float(f["trained_at"]))
        state = prepare_model_owner(
            train.X, train.y, test.X, test.y, n_classes=n_classes, l2=settings.l2
        )
        trained_at = time.time()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(".model.tmp.npz")
        np.savez(
            tmp,
            theta=state.theta,
            v=state.v,
            test_loss=state.test_loss,
            key=key,
            trained_at=trained_at,
        )
        tmp.replace(path)
        log.info("trained θ̂ on %d samples (test loss %.4f)", train.n_samples, state.test_loss)
        return model(state, trained_at)


def incompatibility(meta: DatasetMeta, info: ModelInfo) -> str | None:
    """Why a candidate cannot be appraised for this model, or None."""
    return meta.mismatch(
        n_features=info.n_features, n_classes=info.n_classes, label_encoding=info.label_encoding
    )
