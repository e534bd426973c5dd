import copy

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

pytest.importorskip("espnet2")
from espnet2.asr.encoder.transformer_encoder import TransformerEncoder  # noqa: E402

from kd.compression import apply_structure, compress, count_parameters  # noqa: E402
from kd.compression.io import load_student, save_student  # noqa: E402
from kd.plan import CompressionPlan  # noqa: E402

D, H, B = 32, 2, 2
CONF = dict(input_size=20, output_size=D, attention_heads=H, linear_units=48, num_blocks=4, input_layer="conv2d",
            use_flash_attn=False)


def make(normalize_before=True, seed=0, **kw):
    torch.manual_seed(seed)
    kw = {"layer_drop_rate": 0.5, **kw}  # in eval mode LayerDrop must not act
    return TransformerEncoder(**{**CONF, "normalize_before": normalize_before, **kw}).eval()


def inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(B, 50, 20, generator=g), torch.tensor([50, 37])  # -> 11 frames after conv2d


def run(encoder):
    """Final output [B, T, D], output lengths [B], and every block's output."""
    x, lengths = inputs()
    with torch.no_grad():
        (out, per_block), olens, _ = encoder(x, lengths, return_all_hs=True)
    return out, olens, per_block


def by_hand(teacher, keep):
    """Embedding, then teacher blocks ``keep`` in turn, then the final norm; returns [B, T, D] and per-block outputs."""
    x, lengths = inputs()
    masks = (torch.arange(x.shape[1])[None, :] < lengths[:, None])[:, None, :]
    outs = []
    with torch.no_grad():
        h, masks = teacher.embed(x, masks)
        for i in keep:
            h, masks = teacher.encoders[i](h, masks)
            outs.append(h)
        if teacher.normalize_before:
            h = teacher.after_norm(h)
    return h, outs, masks


@pytest.mark.parametrize("normalize_before", [True, False])
def test_keep_all_reproduces_the_teacher(normalize_before):
    teacher = make(normalize_before)
    student = compress(teacher, CompressionPlan([0, 1, 2, 3]))
    (ref, ref_lens, ref_blocks), (out, out_lens, out_blocks) = run(teacher), run(student)
    assert torch.equal(out, ref) and torch.equal(out_lens, ref_lens)
    assert len(out_blocks) == 4 and all(torch.equal(a, b) for a, b in zip(out_blocks, ref_blocks))


@pytest.mark.parametrize("normalize_before", [True, False])
def test_pruned_encoder_equals_teacher_blocks_run_by_hand(normalize_before):
    teacher = make(normalize_before)
    student = compress(teacher, CompressionPlan([0, 2]))
    assert len(student.encoders) == 2 and len(teacher.encoders) == 4
    assert not any(m.training for m in student.modules())
    assert student.encoders.layer_drop_rate == teacher.encoders.layer_drop_rate
    expected, per_block, _ = by_hand(teacher, [0, 2])
    out, _, out_blocks = run(student)
    assert torch.equal(out, expected)
    assert all(torch.equal(a, b) for a, b in zip(out_blocks, per_block))


def test_sharing_uses_the_leaders_parameters_once():
    teacher = make()
    student = compress(teacher, CompressionPlan([0, 1, 2, 3], share_groups=[[3, 1, 2]]))
    duplicated = sum(p.numel() for i in (1, 2) for p in teacher.encoders[i].parameters())
    assert count_parameters(student) == count_parameters(teacher) - duplicated
    reference = copy.deepcopy(teacher)
    for i in (1, 2):
        reference.encoders[i].load_state_dict(teacher.encoders[3].state_dict())
    assert torch.equal(run(student)[0], run(reference)[0])


def test_reuse_where_every_layer_leads_itself_is_exact():
    teacher = make()
    student = compress(teacher, CompressionPlan([0, 1, 2, 3], attention_reuse=[[0], [1], [2], [3]]))
    assert torch.equal(run(student)[0], run(teacher)[0])


@pytest.mark.parametrize("normalize_before", [True, False])
def test_follower_equals_reference_from_leader_probabilities(normalize_before):
    teacher = make(normalize_before)
    student = compress(teacher, CompressionPlan([0, 1, 2, 3], attention_reuse=[[0, 2]]))
    _, per_block, masks = by_hand(teacher, [0, 1, 2, 3])
    probs = teacher.encoders[0].self_attn.attn  # ESPnet keeps the last softmax output: [B, H, T, T]
    x, layer = per_block[1], teacher.encoders[2]  # input of the follower = output of block 1
    attn = layer.self_attn
    with torch.no_grad():
        a_in = layer.norm1(x) if normalize_before else x
        v = attn.linear_v(a_in).view(B, -1, H, D // H).transpose(1, 2)
        a = attn.linear_out((probs @ v).transpose(1, 2).reshape(B, -1, D))
        if normalize_before:
            h = x + a
            h = h + layer.feed_forward(layer.norm2(h))
        else:
            h = layer.norm1(x + a)
            h = layer.norm2(h + layer.feed_forward(h))
    hidden = run(student)[2]
    torch.testing.assert_close(hidden[0], per_block[0], rtol=0, atol=1e-6)  # the leader is ESPnet's own module
    torch.testing.assert_close(hidden[2], h, rtol=0, atol=1e-5)
    assert torch.equal(student.encoders[2].self_attn.attn, student.encoders[0].self_attn.attn)


def test_follower_skips_query_key_work():
    teacher = make()
    student = compress(teacher, CompressionPlan([0, 1, 2, 3], attention_reuse=[[1, 2, 3]]))
    x, lengths = inputs()
    flops = []
    for model in (teacher, student):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x, lengths)
        flops.append(counter.get_total_flops())
    frames = run(teacher)[0].shape[1]
    per_follower = 2 * (2 * B * frames * D * D) + 2 * B * H * frames * frames * (D // H)  # q, k, QK^T
    assert flops[0] - flops[1] == 2 * per_follower
    follower = student.encoders[3].self_attn
    assert not hasattr(follower, "linear_q") and not hasattr(follower, "linear_k")


def test_teacher_is_untouched():
    teacher = make()
    state = {k: v.clone() for k, v in teacher.state_dict().items()}
    before = run(teacher)[0]
    student = compress(teacher, CompressionPlan([0, 1, 3], share_groups=[[1, 2]], attention_reuse=[[0, 2]]))
    run(student)
    assert len(teacher.encoders) == 4
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in teacher.modules())
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in state.items())
    assert torch.equal(run(teacher)[0], before)


def test_save_and_load_round_trip(tmp_path):
    teacher = make()
    plan = CompressionPlan([0, 1, 3], share_groups=[[1, 2]], attention_reuse=[[0, 2]])
    student = compress(teacher, plan)
    conf = {k: v for k, v in CONF.items()}
    save_student(student, plan, tmp_path, encoder_conf=conf)
    loaded = load_student(tmp_path)
    assert len(loaded.encoders) == 3 and count_parameters(loaded) == count_parameters(student)
    assert torch.equal(run(loaded)[0], run(student)[0])
    with pytest.raises(ValueError, match="encoder_conf: .* found None"):
        save_student(student, plan, tmp_path / "again")


def test_interctc_taps_are_renumbered():
    teacher = make(interctc_layer_idx=[2])  # taps the output of layer 1 (counted from 0)
    assert compress(teacher, CompressionPlan([1, 3])).interctc_layer_idx == [1]
    with pytest.raises(ValueError, match=r"interctc_layer_idx \[2\] taps teacher layer\(s\) \[2\].*drops"):
        compress(teacher, CompressionPlan([0, 2]))


def test_whole_espnet_model_compresses_its_encoder():
    from espnet2.asr.ctc import CTC
    from espnet2.asr.decoder.transformer_decoder import TransformerDecoder
    from espnet2.asr.espnet_model import ESPnetASRModel

    tokens = ["<blank>", "a", "b", "<sos/eos>"]
    model = ESPnetASRModel(vocab_size=4, token_list=tokens, frontend=None, specaug=None, normalize=None,
                           preencoder=None, encoder=make(), postencoder=None,
                           decoder=TransformerDecoder(4, D, attention_heads=H, linear_units=48, num_blocks=1),
                           ctc=CTC(4, D), joint_network=None).eval()
    student = compress(model, CompressionPlan([0, 2], attention_reuse=[[0, 1]]))
    assert len(student.encoder.encoders) == 2 and len(model.encoder.encoders) == 4
    assert student.decoder is not model.decoder
    x, lengths = inputs()
    with torch.no_grad():
        encoded, _ = student.encode(x, lengths)
        direct, _, _ = compress(model.encoder, CompressionPlan([0, 2], attention_reuse=[[0, 1]]))(x, lengths)
    assert torch.equal(encoded, direct)


def test_apply_structure_on_a_fresh_encoder_matches_compress():
    plan = CompressionPlan([0, 2, 3], share_groups=[[0, 1]], attention_reuse=[[1, 2]])
    student = compress(make(), plan)
    fresh = apply_structure(make(seed=5, num_blocks=3), plan)
    fresh.load_state_dict(student.state_dict())
    assert count_parameters(fresh) == count_parameters(student)
    assert torch.equal(run(fresh)[0], run(student)[0])


def test_unsupported_encoders_are_named():
    from espnet2.asr.espnet_model import ESPnetASRModel

    class Other(nn.Module):
        encoders = nn.ModuleList()

    model = ESPnetASRModel.__new__(ESPnetASRModel)
    nn.Module.__init__(model)
    model.encoder = Other()
    with pytest.raises(TypeError, match="expected an ESPnet TransformerEncoder, found Other"):
        compress(model, CompressionPlan([0]))


def test_project_asr_model_updates_its_config():
    asr = pytest.importorskip("kd.models.asr")
    config = asr.AsrConfig(vocab_size=10, d_model=D, attention_heads=H, encoder_layers=4, decoder_layers=1,
                           ffn_units=48, n_mels=20, n_fft=128, win_length=128, hop_length=64, uncertainty_head=False)
    torch.manual_seed(0)
    teacher = asr.build_asr_model(config).eval()
    student = compress(teacher, CompressionPlan([0, 1, 2, 3]))
    speech, lengths = torch.randn(B, 4000), torch.tensor([4000, 3000])
    with torch.no_grad():
        assert torch.equal(student.encode(speech, lengths)[0], teacher.encode(speech, lengths)[0])
    pruned = compress(teacher, CompressionPlan([1, 3], attention_reuse=[[0, 1]]))
    assert pruned.config.encoder_layers == 2 and len(pruned.espnet.encoder.encoders) == 2
    assert teacher.config.encoder_layers == 4
