import itertools

import numpy as np
import pytest

from kd.plan import planners
from kd.plan import CompressionPlan


def test_first_k():
    assert planners.first_k(12, 4).keep_layers == (0, 1, 2, 3)
    assert planners.first_k(12, 4).num_teacher_layers == 12


def test_every_k_keeps_layers_k_2k_3k_counted_from_one():
    assert planners.every_k(12, 2).keep_layers == (1, 3, 5, 7, 9, 11)
    assert planners.every_k(12, 3).keep_layers == (2, 5, 8, 11)
    assert planners.every_k(10, 4).keep_layers == (3, 7)
    assert planners.every_k(5, 1).keep_layers == (0, 1, 2, 3, 4)


def test_linspace_includes_first_and_last():
    assert planners.linspace(12, 4).keep_layers == (0, 4, 7, 11)  # 0, 3.67, 7.33, 11
    assert planners.linspace(32, 2).keep_layers == (0, 31)
    assert planners.linspace(24, 6).keep_layers == (0, 5, 9, 14, 18, 23)  # 0, 4.6, 9.2, 13.8, 18.4, 23
    assert planners.linspace(5, 5).keep_layers == (0, 1, 2, 3, 4)
    assert planners.linspace(5, 3).keep_layers == (0, 2, 4)
    assert planners.linspace(4, 3).keep_layers == (0, 2, 3)  # 1.5 rounds half up


@pytest.mark.parametrize("fn, args, match", [
    (planners.first_k, (12, 0), r"k: expected 1 <= k <= num_layers=12, found 0"),
    (planners.every_k, (12, 13), r"k: expected 1 <= k <= num_layers=12, found 13"),
    (planners.linspace, (12, 1), r"needs k >= 2"),
    (planners.first_k, (0, 1), r"num_layers: expected at least 1"),
])
def test_baseline_budget_errors(fn, args, match):
    with pytest.raises(ValueError, match=match):
        fn(*args)


def _block_similarity(sizes, rng=None, within=0.9, across=0.1, noise=0.0):
    labels = np.repeat(np.arange(len(sizes)), sizes)
    sim = np.where(labels[:, None] == labels[None, :], within, across)
    if rng is not None:
        e = rng.uniform(-noise, noise, sim.shape)
        sim = sim + (e + e.T) / 2
    np.fill_diagonal(sim, 1.0)
    return sim


def _bounds(sizes):
    edges = np.concatenate([[0], np.cumsum(sizes)])
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


@pytest.mark.parametrize("sizes", [[3, 5, 1, 3], [4, 4, 4], [1, 11], [2, 2, 2, 2, 2, 2], [6, 1, 1, 4]])
def test_dp_recovers_block_diagonal_structure(sizes):
    sim = _block_similarity(sizes)
    assert planners.segment_layers(sim, len(sizes)) == _bounds(sizes)
    noisy = _block_similarity(sizes, np.random.default_rng(0), noise=0.1)
    assert planners.segment_layers(noisy, len(sizes)) == _bounds(sizes)


def _objective(sim, blocks):
    return sum(max(sim[a:b, r].sum() for r in range(a, b)) for a, b in blocks)


def test_dp_is_optimal_against_brute_force():
    rng = np.random.default_rng(1)
    for _ in range(5):
        n, k = 7, 3
        x = rng.normal(size=(n, 4))
        sim = np.abs(np.corrcoef(x))  # symmetric, unit diagonal
        best = max(_objective(sim, list(zip((0,) + c, c + (n,)))) for c in itertools.combinations(range(1, n), k - 1))
        assert _objective(sim, planners.segment_layers(sim, k)) == pytest.approx(best, abs=1e-12)


def test_representative_is_the_block_medoid_and_ties_go_deepest():
    sim = np.eye(4)
    sim[0, 2] = sim[2, 0] = 0.9
    sim[1, 2] = sim[2, 1] = 0.8  # layer 2 is the most similar to the others
    assert planners.block_representative(sim, 0, 3) == 2
    assert planners.block_representative(np.ones((5, 5)), 1, 4) == 3  # all tie -> deepest


def test_plan_from_similarity_keeps_one_representative_per_block():
    sizes = [3, 5, 4]
    sim = _block_similarity(sizes)
    sim[3, 4:8] = sim[4:8, 3] = 0.95  # layer 3 is the medoid of the second block
    plan = planners.plan_from_similarity(sim, budget_layers=3)
    assert plan.keep_layers == (2, 3, 11)
    assert plan.share_groups == () and plan.attention_reuse == () and plan.num_teacher_layers == 12


def test_includes_input_drops_the_first_row_and_column():
    sim = _block_similarity([1, 2, 2])  # index 0 plays the input of the first layer
    plan = planners.plan_from_similarity(sim, budget_layers=2, includes_input=True)
    assert plan.keep_layers == (1, 3) and plan.num_teacher_layers == 4


def test_share_blocks_keeps_every_layer_and_shares_within_blocks():
    plan = planners.plan_from_similarity(_block_similarity([3, 1, 2]), budget_layers=3, share_blocks=True)
    assert plan.keep_layers == tuple(range(6))
    assert plan.share_groups == ((2, 0, 1), (5, 4))


def test_parameter_budget_converts_to_layers():
    assert planners.layers_for_param_budget([100, 90, 90, 90], 250) == 2
    assert planners.layers_for_param_budget([100] * 4, 10_000) == 4
    with pytest.raises(ValueError, match="do not fit one layer"):
        planners.layers_for_param_budget([100] * 4, 99)
    sim = _block_similarity([2, 2, 2])
    by_params = planners.plan_from_similarity(sim, budget_params=300, layer_params=[100] * 6)
    assert by_params == planners.plan_from_similarity(sim, budget_layers=3)
    with pytest.raises(ValueError, match="exactly one of budget_layers and budget_params"):
        planners.plan_from_similarity(sim, budget_layers=3, budget_params=300, layer_params=[100] * 6)
    with pytest.raises(ValueError, match=r"layer_params: budget_params needs one parameter count per layer \(6\)"):
        planners.plan_from_similarity(sim, budget_params=300, layer_params=[100] * 5)


def test_attention_reuse_groups_from_jsd_threshold():
    jsd = np.array([[0.0, 0.05, 0.3, 0.4],
                    [0.05, 0.0, 0.08, 0.4],
                    [0.3, 0.08, 0.0, 0.02],
                    [0.4, 0.4, 0.02, 0.0]])
    # leader 0: layer 1 follows (0.05); layer 2 is 0.3 from leader 0 -> leads; layer 3 follows it (0.02)
    assert planners.reuse_groups_from_jsd([0, 1, 2, 3], jsd, 0.1) == [[0, 1], [2, 3]]
    assert planners.reuse_groups_from_jsd([1, 3], jsd, 0.1) == []
    plan = planners.plan_from_similarity(np.eye(4), budget_layers=4, attention_jsd=jsd, reuse_threshold=0.1)
    assert plan.attention_reuse == ((0, 1), (2, 3))
    with pytest.raises(ValueError, match="go together"):
        planners.plan_from_similarity(np.eye(4), budget_layers=4, attention_jsd=jsd)


def test_bad_similarity_matrices_are_rejected():
    with pytest.raises(ValueError, match=r"sim: expected a non-empty square .* found shape \(3, 4\)"):
        planners.segment_layers(np.zeros((3, 4)), 2)
    with pytest.raises(ValueError, match="NaN or inf"):
        planners.segment_layers(np.full((3, 3), np.nan), 2)
    with pytest.raises(ValueError, match=r"num_blocks: expected 1 <= num_blocks <= num_layers=3, found 4"):
        planners.segment_layers(np.eye(3), 4)


def test_planners_are_deterministic_and_accept_tensors():
    torch = pytest.importorskip("torch")
    sim = _block_similarity([4, 4, 4], np.random.default_rng(3), noise=0.2)
    a = planners.plan_from_similarity(sim, budget_layers=3)
    b = planners.plan_from_similarity(torch.tensor(sim, dtype=torch.float32), budget_layers=3)
    assert a == b and isinstance(a, CompressionPlan)


def test_latency_budget_fits_a_line_through_measured_depths():
    from kd.plan.planners import layers_for_latency_budget

    # fixed 10 ms + 5 ms per layer
    measured = [(12, 70.0), (6, 40.0), (3, 25.0)]
    assert layers_for_latency_budget(measured, 40.0, 12) == 6
    assert layers_for_latency_budget(measured, 44.9, 12) == 6
    assert layers_for_latency_budget(measured, 45.0, 12) == 7
    assert layers_for_latency_budget(measured, 1000.0, 12) == 12
    with pytest.raises(ValueError, match="does not fit one layer"):
        layers_for_latency_budget(measured, 12.0, 12)
    with pytest.raises(ValueError, match="at least two different depths"):
        layers_for_latency_budget([(12, 70.0), (12, 71.0)], 40.0, 12)
    with pytest.raises(ValueError, match="latency does not grow with depth"):
        layers_for_latency_budget([(12, 30.0), (6, 40.0)], 40.0, 12)


def test_stand_in_dissimilarity_scores_each_layer_by_its_nearest_kept_layer():
    sim = np.array([[1.0, 0.9, 0.5, 0.4],
                    [0.9, 1.0, 0.6, 0.5],
                    [0.5, 0.6, 1.0, 0.8],
                    [0.4, 0.5, 0.8, 1.0]])
    # keep [1, 2]: layer 0 -> 1 (0.1), 1 -> itself (0), 2 -> itself (0), 3 -> 2 (0.2)
    assert planners.stand_in_dissimilarity(sim, [1, 2]) == pytest.approx({"mean": 0.3 / 4, "max": 0.2})
    # first-k [0, 1] leaves layer 3 far from any kept layer
    assert planners.stand_in_dissimilarity(sim, [0, 1]) == pytest.approx({"mean": (0.4 + 0.5) / 4, "max": 0.5})
    # the analysis planner's choice on block-structured similarities is at least as good as the heuristics'
    sim = _block_similarity([2, 5, 1], np.random.default_rng(0), noise=0.05)
    chosen = planners.plan_from_similarity(sim, budget_layers=3).keep_layers
    for plan in (planners.first_k(8, 3), planners.linspace(8, 3)):
        assert (planners.stand_in_dissimilarity(sim, chosen)["mean"]
                <= planners.stand_in_dissimilarity(sim, plan.keep_layers)["mean"])
    assert planners.stand_in_dissimilarity(sim, range(8)) == pytest.approx({"mean": 0.0, "max": 0.0}, abs=1e-12)
    # a report's matrix with the input at index 0 scores like the Transformer layers' alone
    padded = np.pad(sim, ((1, 0), (1, 0)), constant_values=0.3)
    assert (planners.stand_in_dissimilarity(padded, chosen, includes_input=True)
            == planners.stand_in_dissimilarity(sim, chosen))


def test_stand_in_dissimilarity_rejects_layers_outside_the_matrix():
    with pytest.raises(ValueError, match=r"keep_layers: \[4\] are not layers of the 4-layer similarity matrix"):
        planners.stand_in_dissimilarity(np.eye(4), [0, 4])
    with pytest.raises(ValueError, match="keep_layers: expected at least one layer"):
        planners.stand_in_dissimilarity(np.eye(4), [])
