"""The QA feature matrix and its autoencoder hook (extra feature providers)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.baselines.features import FeatureSpec
from pipeline.errors import ConfigError
from pipeline.monitoring import features


def test_extra_provider_columns_join_the_matrix() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 1, 32, 32)).astype(np.float32)
    spec = FeatureSpec(8, -2.0, 2.0)
    features.register_provider("recon", lambda imgs: (imgs.std(axis=(1, 2, 3))[:, None], ["err"]))
    base, names = features.image_features(x, spec, atlas=x[0, 0])
    extra, extra_names = features.image_features(x, spec, extra=["recon"], atlas=x[0, 0])
    assert extra_names == [*names, "recon_err"]
    assert np.allclose(extra[:, :-1], base) and np.allclose(extra[:, -1], x.std(axis=(1, 2, 3)))
    # an upside-down copy matches the atlas's mirror better: negative up-down gap
    flipped, _ = features.image_features(x[:, :, ::-1].copy(), spec, atlas=x[0, 0])
    gap = names.index("atlas_updown_gap")
    assert base[0, gap] > 0 > flipped[0, gap]
    with pytest.raises(ConfigError, match="no feature provider named 'ae'"):
        features.image_features(x, spec, extra=["ae"])
    with pytest.raises(ConfigError, match=r"must be a pipeline\.\* module"):
        features.image_features(x, spec, extra=["os:system"])
