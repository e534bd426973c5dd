import copy
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

transformers = pytest.importorskip("transformers")

from kd.compression import apply_structure, compress, count_parameters  # noqa: E402
from kd.compression.io import load_student, save_student  # noqa: E402
from kd.compression.reuse import LeaderScores  # noqa: E402
from kd.plan import CompressionPlan  # noqa: E402

FAMILIES = {
    "wav2vec2": ("Wav2Vec2Config", "Wav2Vec2Model", "Wav2Vec2ForCTC"),
    "hubert": ("HubertConfig", "HubertModel", "HubertForCTC"),
    "wavlm": ("WavLMConfig", "WavLMModel", "WavLMForCTC"),
}
B, SAMPLES, D, H = 2, 400, 32, 2  # 400 samples -> 39 frames with the conv stack below


def make(family, stable=False, head=False, attn="eager", seed=0, layerdrop=0.1):
    config_name, model_name, ctc_name = FAMILIES[family]
    extra = dict(num_buckets=16, max_bucket_distance=20) if family == "wavlm" else {}
    config = getattr(transformers, config_name)(
        hidden_size=D, num_hidden_layers=4, num_attention_heads=H, intermediate_size=37, conv_dim=(8, 8),
        conv_kernel=(10, 3), conv_stride=(5, 2), num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2,
        vocab_size=11, do_stable_layer_norm=stable, feat_extract_norm="layer" if stable else "group",
        layerdrop=layerdrop, attn_implementation=attn, **extra)
    torch.manual_seed(seed)
    return getattr(transformers, ctc_name if head else model_name)(config).eval()


def inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, SAMPLES, generator=g)
    mask = torch.ones(B, SAMPLES, dtype=torch.long)
    mask[1, 300:] = 0
    return x, mask


def run(model, **kw):
    x, mask = inputs()
    with torch.no_grad():
        return model(x, attention_mask=mask, output_hidden_states=True, **kw)


def layers(model):
    return model.base_model.encoder.layers


def by_hand(teacher, keep, hs0, frame_mask):
    """Teacher layers ``keep`` applied in turn to the input of the first layer ``hs0`` [B, T, D]."""
    encoder, (bsz, frames, _) = teacher.base_model.encoder, hs0.shape
    wavlm = isinstance(teacher, (transformers.WavLMModel, transformers.WavLMForCTC))
    h, outs = hs0, []
    if wavlm:
        bias = layers(teacher)[0].attention.compute_bias(frames, frames)
        bias = bias.unsqueeze(0).repeat(bsz, 1, 1, 1).view(bsz * H, frames, frames)
    additive = (1.0 - frame_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
    with torch.no_grad():
        for i in keep:
            if wavlm:
                h, bias = layers(teacher)[i](h, attention_mask=frame_mask, position_bias=bias)
            else:
                h = layers(teacher)[i](h, attention_mask=additive)
            outs.append(h)
        if teacher.config.do_stable_layer_norm:
            h = encoder.layer_norm(h)
    return h, outs


def frame_mask_of(model, frames):
    return model.base_model._get_feature_vector_attention_mask(frames, inputs()[1])


CASES = [(f, s) for f in FAMILIES for s in (False, True)]


@pytest.mark.parametrize("family, stable", CASES)
def test_plan_keeping_every_layer_reproduces_the_teacher(family, stable):
    teacher = make(family, stable)
    student = compress(teacher, CompressionPlan(list(range(4))))
    ref, out = run(teacher), run(student)
    assert torch.equal(out.last_hidden_state, ref.last_hidden_state)
    assert len(out.hidden_states) == 5
    for a, b in zip(out.hidden_states, ref.hidden_states):
        assert torch.equal(a, b)


@pytest.mark.parametrize("family", FAMILIES)
def test_keep_all_on_ctc_heads_reproduces_logits(family):
    teacher = make(family, head=True)
    assert torch.equal(run(compress(teacher, CompressionPlan([0, 1, 2, 3]))).logits, run(teacher).logits)


@pytest.mark.parametrize("family, stable", CASES)
def test_pruned_student_equals_teacher_layers_run_by_hand(family, stable):
    teacher = make(family, stable)
    keep = [1, 3]  # drops layer 0: WavLM's first student layer needs the position-bias table
    student = compress(teacher, CompressionPlan(keep))
    assert len(layers(student)) == 2 and student.config.num_hidden_layers == 2
    assert not any(m.training for m in student.modules())
    assert teacher.config.num_hidden_layers == 4
    hs0 = run(teacher).hidden_states[0]  # input of the first layer [B, T, D]
    expected, per_layer = by_hand(teacher, keep, hs0, frame_mask_of(teacher, hs0.shape[1]))
    out = run(student)
    torch.testing.assert_close(out.last_hidden_state, expected, rtol=0, atol=1e-6)
    for got, want in zip(out.hidden_states[1:], per_layer):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_pruned_student_loads_in_plain_transformers(family, tmp_path):
    teacher = make(family, head=True)
    plan = CompressionPlan([1, 2])
    student = compress(teacher, plan)
    student.save_pretrained(tmp_path / "hf")
    cls = type(teacher)
    loaded, info = cls.from_pretrained(tmp_path / "hf", attn_implementation="eager", output_loading_info=True)
    assert info["missing_keys"] in ([], set()) and info["unexpected_keys"] in ([], set())
    assert loaded.config.num_hidden_layers == 2
    assert torch.equal(run(loaded.eval()).logits, run(student).logits)
    auto = transformers.AutoModelForCTC.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    assert type(auto) is cls and torch.equal(run(auto).logits, run(student).logits)
    # the package's own format for a pruned-only student is the same plain checkpoint
    save_student(student, plan, tmp_path / "kd")
    assert (tmp_path / "kd" / "model.safetensors").is_file()
    torch.testing.assert_close(run(load_student(tmp_path / "kd")).logits, run(student).logits, rtol=0, atol=1e-5)


def test_pretraining_model_keeps_and_prunes():
    config = make("wav2vec2").config
    config.proj_codevector_dim, config.codevector_dim, config.num_codevectors_per_group = 8, 8, 4
    torch.manual_seed(0)
    teacher = transformers.Wav2Vec2ForPreTraining(config).eval()
    x, _ = inputs()
    with torch.no_grad():
        assert torch.equal(compress(teacher, CompressionPlan([0, 1, 2, 3]))(x).projected_states,
                           teacher(x).projected_states)
    student = compress(teacher, CompressionPlan([0, 3]))
    assert len(student.wav2vec2.encoder.layers) == 2 and student.config.num_hidden_layers == 2


@pytest.mark.parametrize("family", FAMILIES)
def test_sharing_stores_the_duplicated_parameters_once(family, tmp_path):
    teacher = make(family)
    duplicated = sum(p.numel() for i in (1, 2) for p in layers(teacher)[i].parameters())
    plan = CompressionPlan([0, 1, 2, 3], share_groups=[[0, 1, 2]])
    student = compress(teacher, plan)
    assert count_parameters(student) == count_parameters(teacher) - duplicated
    assert layers(student)[2].feed_forward.output_dense.weight is layers(student)[0].feed_forward.output_dense.weight
    # reference: an unshared copy of the teacher whose layers 1 and 2 hold layer 0's weights
    reference = copy.deepcopy(teacher)
    for i in (1, 2):
        result = layers(reference)[i].load_state_dict(layers(teacher)[0].state_dict(), strict=False)
        assert not result.missing_keys and all("rel_attn_embed" in k for k in result.unexpected_keys)
    assert torch.equal(run(student).last_hidden_state, run(reference).last_hidden_state)
    # the saved file drops the duplicated float32 tensors
    save_student(student, plan, tmp_path / "shared")
    save_student(compress(teacher, CompressionPlan([0, 1, 2, 3])), CompressionPlan([0, 1, 2, 3]), tmp_path / "plain")
    shared_size = (tmp_path / "shared" / "speechkd_model.safetensors").stat().st_size
    plain_size = (tmp_path / "plain" / "model.safetensors").stat().st_size
    assert plain_size - shared_size >= 0.95 * 4 * duplicated
    assert not (tmp_path / "shared" / "model.safetensors").exists()  # plain from_pretrained must not load it
    loaded = load_student(tmp_path / "shared")
    assert count_parameters(loaded) == count_parameters(student)
    assert layers(loaded)[1].attention.q_proj.weight is layers(loaded)[0].attention.q_proj.weight
    torch.testing.assert_close(run(loaded).last_hidden_state, run(student).last_hidden_state, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_reuse_where_every_layer_leads_itself_is_exact(family):
    teacher = make(family)
    student = compress(teacher, CompressionPlan([0, 1, 2, 3], attention_reuse=[[0], [1], [2], [3]]))
    assert torch.equal(run(student).last_hidden_state, run(teacher).last_hidden_state)


def _teacher_probs(teacher, family):
    """Per-head attention probabilities of every teacher layer [B, H, T, T], from transformers itself."""
    if family != "wavlm":
        return run(teacher, output_attentions=True).attentions
    original = F.multi_head_attention_forward

    def per_head(*args, **kwargs):  # transformers' WavLM averages the heads; ask torch not to
        return original(*args, **{**kwargs, "average_attn_weights": False})

    with mock.patch.object(F, "multi_head_attention_forward", per_head):
        return [a[:, 0] for a in run(teacher, output_attentions=True).attentions]


@pytest.mark.parametrize("family, stable", CASES)
def test_follower_equals_reference_from_leader_probabilities(family, stable):
    teacher = make(family, stable)
    student = compress(teacher, CompressionPlan([0, 1, 2, 3], attention_reuse=[[1, 2]]))
    ref, out = run(teacher), run(student)
    for i in (1, 2):  # layer 0 untouched, leader 1 recomputes the teacher's layer exactly
        torch.testing.assert_close(out.hidden_states[i], ref.hidden_states[i], rtol=0, atol=1e-5)
    probs = _teacher_probs(teacher, family)[1]  # [B, H, T, T] of teacher layer 1 = the leader
    layer, x = layers(teacher)[2], out.hidden_states[2]
    attn = layer.attention
    with torch.no_grad():
        a_in = layer.layer_norm(x) if stable else x
        v = (a_in @ attn.v_proj.weight.T + attn.v_proj.bias).view(B, -1, H, D // H).transpose(1, 2)
        context = (probs @ v).transpose(1, 2).reshape(B, -1, D)
        a = context @ attn.out_proj.weight.T + attn.out_proj.bias
        if stable:
            h = x + a
            h = h + layer.feed_forward(layer.final_layer_norm(h))
        else:
            h = layer.layer_norm(x + a)
            h = layer.final_layer_norm(h + layer.feed_forward(h))
    torch.testing.assert_close(out.hidden_states[3], h, rtol=0, atol=1e-5)
    follower = layers(student)[2].attention
    assert not hasattr(follower, "q_proj") and not hasattr(follower, "k_proj")
    assert not any(m.training for m in student.modules())  # swapped modules take the teacher's eval mode


@pytest.mark.parametrize("family", FAMILIES)
def test_follower_saves_query_key_flops(family):
    teacher = make(family)
    student = compress(teacher, CompressionPlan([0, 1, 2, 3], attention_reuse=[[0, 1, 2]]))
    x, _ = inputs()
    counts = []
    for model in (teacher, student):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
        counts.append(counter.get_total_flops())
    frames = run(teacher).last_hidden_state.shape[1]
    per_follower = 2 * (2 * B * frames * D * D) + 2 * B * H * frames * frames * (D // H)  # q_proj, k_proj, QK^T
    if family == "wavlm":
        per_follower += 2 * B * H * frames * (D // H) * 8  # the gate projection of the position bias
    assert counts[0] - counts[1] == 2 * per_follower
    skipped = [p for n, p in layers(teacher)[1].attention.named_parameters() if not n.startswith(("v_", "out_"))]
    assert count_parameters(teacher) - count_parameters(student) == 2 * sum(p.numel() for p in skipped)


def test_reuse_also_works_from_an_sdpa_model_with_padding():
    teacher = make("wav2vec2", attn="sdpa")
    student = compress(teacher, CompressionPlan([0, 1, 2, 3], attention_reuse=[[0, 1]]))
    torch.testing.assert_close(run(student).hidden_states[1], run(teacher).hidden_states[1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("family, stable", [("wav2vec2", False), ("wav2vec2", True), ("hubert", False)])
def test_sdpa_reuse_where_every_layer_leads_itself_is_exact(family, stable):
    teacher = make(family, stable, attn="sdpa")
    student = compress(teacher, CompressionPlan([0, 1, 2, 3], attention_reuse=[[0], [1], [2], [3]]))
    assert torch.equal(run(student).last_hidden_state, run(teacher).last_hidden_state)


@pytest.mark.parametrize("family, stable", [("wav2vec2", False), ("wav2vec2", True), ("hubert", False)])
def test_fused_followers_equal_probability_reuse(family, stable):
    """sdpa: followers run the fused kernel on the leader's Q and K; eager: they multiply the
    leader's probabilities. Same function, so the same outputs, padding included."""
    plan = CompressionPlan([0, 1, 2, 3], attention_reuse=[[0, 2, 3]])
    eager = compress(make(family, stable, attn="eager"), plan)
    fused = compress(make(family, stable, attn="sdpa"), plan)
    stored = []
    fused_layers = layers(fused)
    original_put = fused_layers[0].attention.store.put
    with mock.patch.object(fused_layers[0].attention.store, "put",
                           side_effect=lambda i, a: (stored.append(a), original_put(i, a))):
        out = run(fused)
    assert len(stored) == 1 and isinstance(stored[0], LeaderScores)  # Q, K, mask: no [B, H, T, T] tensor
    assert stored[0].query.shape == (B, H, out.last_hidden_state.shape[1], D // H)
    for a, b in zip(run(eager).hidden_states, out.hidden_states):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
    # the maps asked for: the leader turns eager and its followers report its map, as in the eager
    # student; layer 1 (not in the group) keeps transformers' sdpa path, which returns no map (left out)
    att = run(fused, output_attentions=True).attentions
    assert len(att) == 3 and att[1] is att[0] and att[2] is att[0] and att[0].shape == (B, H, *att[0].shape[-2:])
    torch.testing.assert_close(att[0], run(eager, output_attentions=True).attentions[0], rtol=0, atol=1e-6)


def test_fused_reuse_trains_and_backpropagates_through_the_leader_keys():
    student = compress(make("wav2vec2", attn="sdpa", layerdrop=0.0),
                       CompressionPlan([0, 1, 2, 3], attention_reuse=[[0, 3]])).train()
    x, _ = inputs()
    leader, follower = layers(student)[0].attention, layers(student)[3].attention
    student(x).last_hidden_state.sum().backward()
    assert leader.k_proj.weight.grad.abs().sum() > 0 and follower.v_proj.weight.grad.abs().sum() > 0
    assert len(leader.store) == 0
    # a loss on the follower's output alone reaches the leader's query and key projections
    student.zero_grad()
    leader(torch.randn(B, 7, D))  # its output is not used
    out, probs = follower(torch.randn(B, 7, D))
    assert probs is None
    out.sum().backward()
    assert leader.k_proj.weight.grad.abs().sum() > 0 and leader.q_proj.weight.grad.abs().sum() > 0


def test_reuse_student_is_batch_consistent_and_deepcopies_with_its_own_store():
    student = compress(make("wav2vec2", stable=True), CompressionPlan([0, 1, 2, 3], attention_reuse=[[0, 1, 3]]))
    x, mask = inputs()
    batched = run(student).last_hidden_state
    with torch.no_grad():
        alone = student(x[1:, :300]).last_hidden_state  # the padded utterance on its own
    torch.testing.assert_close(batched[1, : alone.shape[1]], alone[0], rtol=0, atol=1e-5)
    twin = copy.deepcopy(student)
    assert layers(twin)[1].attention.store is layers(twin)[0].attention.store
    assert layers(twin)[0].attention.store is not layers(student)[0].attention.store
    assert torch.equal(run(twin).last_hidden_state, batched)


@pytest.mark.parametrize("family", ["wav2vec2", "wavlm"])
def test_output_attentions_report_the_leader_map_for_followers(family):
    student = compress(make(family), CompressionPlan([0, 1, 2, 3], attention_reuse=[[1, 3]]))
    att = run(student, output_attentions=True).attentions
    assert len(att) == 4 and att[3] is att[1] and att[1].shape[1] == H


def test_training_with_reuse_backpropagates_into_the_leader_and_clears_the_store():
    teacher = make("hubert", layerdrop=0.1)
    student = compress(teacher, CompressionPlan([0, 1, 2, 3], attention_reuse=[[0, 3]])).train()
    assert student.config.layerdrop == 0.0 and teacher.config.layerdrop == 0.1
    x, _ = inputs()
    student(x).last_hidden_state.sum().backward()
    assert layers(student)[0].attention.q_proj.weight.grad.abs().sum() > 0
    assert len(layers(student)[0].attention.store) == 0


@pytest.mark.parametrize("family, stable", [("wavlm", False), ("wav2vec2", True)])
def test_pruned_shared_reuse_student_round_trips(family, stable, tmp_path):
    teacher = make(family, stable, head=True)
    plan = CompressionPlan([1, 2, 3], share_groups=[[1, 2]], attention_reuse=[[0, 1]])
    student = compress(teacher, plan)
    save_student(student, plan, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {
        "config.json", "speechkd_plan.json", "speechkd_student.json", "speechkd_model.safetensors"}
    assert CompressionPlan.load(tmp_path / "speechkd_plan.json") == plan
    loaded = load_student(tmp_path)
    assert type(loaded) is type(teacher) and count_parameters(loaded) == count_parameters(student)
    torch.testing.assert_close(run(loaded).logits, run(student).logits, rtol=0, atol=1e-5)


def test_teacher_is_untouched():
    teacher = make("wavlm")
    state = {k: v.clone() for k, v in teacher.state_dict().items()}
    kinds = [type(m) for m in teacher.modules()]
    before = run(teacher, output_attentions=True).last_hidden_state
    student = compress(teacher, CompressionPlan([1, 2, 3], share_groups=[[0, 2]], attention_reuse=[[0, 1]]))
    run(student)
    assert [type(m) for m in teacher.modules()] == kinds and teacher.config.num_hidden_layers == 4
    after = teacher.state_dict()
    assert state.keys() == after.keys() and all(torch.equal(state[k], after[k]) for k in state)
    assert all(p1 is not p2 for p1 in teacher.parameters() for p2 in student.parameters())
    assert torch.equal(run(teacher).last_hidden_state, before)


def test_clear_errors():
    teacher = make("wav2vec2")
    with pytest.raises(ValueError, match=r"teacher layer\(s\) \[4, 5\] out of range; the model has 4 layers"):
        compress(teacher, CompressionPlan([0, 4, 5]))
    with pytest.raises(ValueError, match="made for a teacher with 12 layers, but this model has 4"):
        compress(teacher, CompressionPlan([0, 1], num_teacher_layers=12))
    with pytest.raises(TypeError, match=r"cannot compress a torch.nn.modules.linear.Linear; supported model types: "
                                        r"Wav2Vec2Model, .*WavLMForCTC"):
        compress(nn.Linear(2, 2), CompressionPlan([0]))
    with pytest.raises(TypeError, match="plan: expected a CompressionPlan"):
        compress(teacher, {"keep_layers": [0]})
    with pytest.raises(ValueError, match="the plan describes a student with 2 layers, the model has 4"):
        apply_structure(teacher, CompressionPlan([0, 1]))


def test_load_student_needs_a_finished_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a finished student directory"):
        load_student(tmp_path)
