"""Layer-wise analyses of speech Transformers.

Everything here works on per-layer activations given as ``[frames, dims]`` tensors
(padding removed) or streams of them; this package never imports ``kd``.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it (imported on first access, so that
# ``import analysis`` stays cheap)
_LAZY = {
    "linear_cka": "analysis.similarity",
    "rbf_cka": "analysis.similarity",
    "minibatch_cka": "analysis.similarity",
    "cca": "analysis.similarity",
    "svcca": "analysis.similarity",
    "pwcca": "analysis.similarity",
    "attention_jsd": "analysis.attention",
    "LayerMoments": "analysis.streaming",
    "pairwise_linear_cka": "analysis.streaming",
    "pairwise_cca": "analysis.streaming",
    "pairwise_svcca": "analysis.streaming",
    "pairwise_pwcca": "analysis.streaming",
    "bootstrap_interval": "analysis.stats",
    "permutation_null": "analysis.stats",
    "bootstrap_moments": "analysis.stats",
    "BootstrapInterval": "analysis.stats",
    "CurveIntervals": "analysis.stats",
    "curve_intervals": "analysis.stats",
    "cca_curve_intervals": "analysis.feature_cca",
    "PermutationTest": "analysis.stats",
    "FeatureCCAConfig": "analysis.feature_cca",
    "heldout_cca": "analysis.feature_cca",
    "label_cca": "analysis.feature_cca",
    "speaker_cca": "analysis.feature_cca",
    "segment_cca": "analysis.feature_cca",
    "utterance_attention_jsd": "analysis.attention",
    "utterance_head_mean_attention_jsd": "analysis.attention",
    "diagonality": "analysis.attention",
    "AttentionRedundancy": "analysis.attention",
    "ProbeConfig": "analysis.probing",
    "ProbeKind": "analysis.probing",
    "ProbeResult": "analysis.probing",
    "probe_frames": "analysis.probing",
    "probe_utterances": "analysis.probing",
    "probe_weighted_sum": "analysis.probing",
    "KMeans": "analysis.kmeans",
    "KMeansConfig": "analysis.kmeans",
    "MIBoundConfig": "analysis.mutual_info",
    "cluster_mi_bound": "analysis.mutual_info",
    "labelled_mi_bound": "analysis.mutual_info",
    "split_halves": "analysis.mutual_info",
    "section_pairs": "analysis.mutual_info",
    "pool_sections": "analysis.mutual_info",
    "vacuous_layers": "analysis.mutual_info",
    "LayerwiseModel": "analysis.capture",
    "LayerOutputs": "analysis.capture",
    "HFSpeechEncoder": "analysis.capture",
    "iter_activations": "analysis.capture",
    "load_hf_encoder": "analysis.capture",
    "AnalysisReport": "analysis.report",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'analysis' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = sorted(_LAZY)
