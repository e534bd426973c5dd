"""Bounded memory: a 5-minute utterance is captured in windows; peak memory stays small."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import json, resource, torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model
    from analysis.capture import HFSpeechEncoder, iter_activations
    torch.set_num_threads(1)
    cfg = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         conv_dim=(16, 16, 16), conv_stride=(5, 4, 16), conv_kernel=(10, 8, 16),
                         num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2,
                         feat_extract_norm="layer", do_stable_layer_norm=True)
    torch.manual_seed(0)
    enc = HFSpeechEncoder(Wav2Vec2Model(cfg).eval())
    enc.model.set_attn_implementation("eager")
    wave = torch.randn(1, 16000 * 300) * 0.1                    # 5 minutes
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = list(iter_activations(enc, [(["long"], wave, torch.tensor([wave.shape[1]]))], attentions=True,
                                max_seconds=20.0))
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"frames": [h.shape[0] for h in out[0].hidden], "attn": out[0].attentions is None,
                      "peak_growth_mb": (after - before) / 1024}))
""")


@pytest.mark.slow  # about 10 CPU seconds (a 5-minute utterance through a tiny wav2vec 2.0); pytest -m slow
def test_five_minute_utterance_runs_in_windows_with_bounded_memory():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # 15 windows of 20 s, each 999 frames at 50 frames/s (one frame short of window / hop)
    assert result["frames"] == [15 * 999] * 3
    assert result["attn"] is True  # windowed utterances carry no attention maps
    # one 20 s window of eager attention is small; the whole 5 minutes at once would need
    # 15000^2 x 2 heads x 4 bytes = 1.8 GB per layer
    assert result["peak_growth_mb"] < 400, result
