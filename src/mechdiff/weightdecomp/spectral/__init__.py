"""Spectral analysis of weight deltas: sketch (randomized SVD), edge (noise bulk, ranks, score), angles."""

from mechdiff.weightdecomp.spectral.angles import (
    INTRUDER_DTYPE,
    intruder_dimensions,
    principal_angles,
)
from mechdiff.weightdecomp.spectral.config import SpectralConfig
from mechdiff.weightdecomp.spectral.edge import (
    Spectrum,
    analyze_delta,
    clears_first_cut,
    detection_threshold,
    frobenius2,
    mp_edge,
    score_1d,
    spike_strength,
    structured_score,
)
from mechdiff.weightdecomp.spectral.sketch import randomized_svd

__all__ = ['INTRUDER_DTYPE', 'SpectralConfig', 'Spectrum', 'analyze_delta', 'clears_first_cut', 'detection_threshold', 'frobenius2', 'intruder_dimensions', 'mp_edge', 'principal_angles', 'randomized_svd', 'score_1d', 'spike_strength', 'structured_score']
