"""analysis.config (the parser kd.core.config re-exports) and the analysis configs read by it: ProbeConfig,
KMeansConfig, MIBoundConfig and FeatureCCAConfig."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Mapping

import pytest

from analysis.config import CONFIG, parse_config, with_config
from analysis.feature_cca import FeatureCCAConfig
from analysis.kmeans import KMeansConfig
from analysis.mutual_info import MIBoundConfig
from analysis.probing import ProbeConfig, ProbeKind

# the configs as to_dict wrote them before they were read by parse_config (the saved JSON does not change)
SAVED = {
    KMeansConfig: '{"num_clusters": 7, "max_iter": 100, "tol": 0.0001, "seed": 0, "chunk_size": 8192, '
                  '"device": "cpu", "version": 1}',
    ProbeConfig: '{"kind": "mlp2", "hidden_size": 64, "epochs": 20, "lr": 0.001, "weight_decay": 0.0, '
                 '"batch_size": 1024, "heldout_fraction": 0.2, "standardize": true, "seed": 4, "device": "cpu", '
                 '"version": 1}',
    FeatureCCAConfig: '{"n_folds": 3, "epsilon": 0.1, "max_dims": 4, "seed": 2, "version": 1}',
    MIBoundConfig: '{"kmeans": {"num_clusters": 8, "max_iter": 100, "tol": 0.0001, "seed": 0, "chunk_size": 8192, '
                   '"device": "cpu", "version": 1}, "probe": {"kind": "mlp1", "hidden_size": 256, "epochs": 20, '
                   '"lr": 0.001, "weight_decay": 0.0, "batch_size": 1024, "heldout_fraction": 0.2, '
                   '"standardize": true, "seed": 0, "device": "cpu", "version": 1}, "fit_fraction": 0.4, "seed": 0, '
                   '"version": 1}',
}
EXPECTED = {
    KMeansConfig: KMeansConfig(num_clusters=7),
    ProbeConfig: ProbeConfig(kind=ProbeKind.MLP2, hidden_size=64, seed=4),
    FeatureCCAConfig: FeatureCCAConfig(n_folds=3, epsilon=0.1, max_dims=4, seed=2),
    MIBoundConfig: MIBoundConfig(kmeans=KMeansConfig(num_clusters=8), probe=ProbeConfig(kind="mlp1"),
                                 fit_fraction=0.4),
}


@pytest.mark.parametrize("cls", list(SAVED), ids=lambda cls: cls.__name__)
def test_saved_json_still_loads_and_is_written_the_same(cls):
    config = cls.from_dict(json.loads(SAVED[cls]))
    assert config == EXPECTED[cls]
    assert json.dumps(config.to_dict()) == SAVED[cls]  # same keys, same order, enums as their values
    assert cls.from_dict(config.to_dict()) == config


def test_a_section_given_in_part_keeps_the_other_defaults():
    config = MIBoundConfig.from_dict({"kmeans": {"num_clusters": 3}, "probe": {"kind": "mlp2"}})
    assert config.kmeans == KMeansConfig(num_clusters=3) and config.probe == ProbeConfig(kind="mlp2")
    assert config.probe.kind is ProbeKind.MLP2 and config.fit_fraction == MIBoundConfig().fit_fraction
    assert ProbeConfig.from_dict({"lr": 1}).lr == 1.0  # a float field takes an integer


@pytest.mark.parametrize("cls,data,message", [
    # unknown keys: the path and the closest field
    (MIBoundConfig, {"probe": {"epoch": 3}},
     r"^MIBoundConfig.probe: unknown field 'epoch' \(did you mean 'epochs'\?\); expected one of \['batch_size', "),
    (MIBoundConfig, {"kmeans": {"clusters": 3}}, r"^MIBoundConfig.kmeans: unknown field 'clusters' "
                                                 r"\(did you mean 'num_clusters'\?\)"),
    (FeatureCCAConfig, {"folds": 3}, r"^FeatureCCAConfig: unknown field 'folds' \(did you mean 'n_folds'\?\)"),
    (KMeansConfig, {"num_cluster": 3, "iters": 2}, r"^KMeansConfig: unknown fields \['iters', 'num_cluster'\]"),
    # wrong types: the path, what was expected and the value
    (MIBoundConfig, {"kmeans": {"num_clusters": "8"}},
     r"^MIBoundConfig.kmeans.num_clusters: expected an integer, found '8' \(str\)"),
    (MIBoundConfig, {"probe": {"kind": "mlp3"}},
     r"^MIBoundConfig.probe.kind: expected one of \['linear', 'mlp1', 'mlp2'\], found 'mlp3'"),
    (ProbeConfig, {"standardize": "yes"}, r"^ProbeConfig.standardize: expected true or false, found 'yes' \(str\)"),
    (FeatureCCAConfig, {"max_dims": 2.5}, r"^FeatureCCAConfig.max_dims: expected an integer or null, found 2.5"),
    (MIBoundConfig, {"probe": 3}, r"^MIBoundConfig.probe: expected a mapping, found 3 \(int\)"),
    # the checks of __post_init__ name the field (and, in a section, the section)
    (MIBoundConfig, {"kmeans": {"num_clusters": 0}},
     r"^MIBoundConfig.kmeans: KMeansConfig.num_clusters: expected at least 1, found 0"),
    (ProbeConfig, {"device": "gpu0"}, r"^ProbeConfig.device: expected a torch device, found 'gpu0'"),
    (FeatureCCAConfig, {"version": 2}, r"^FeatureCCAConfig.version: expected 1, found 2"),
])
def test_errors_name_the_dotted_path(cls, data, message):
    with pytest.raises(ValueError, match=message):
        cls.from_dict(data)


def test_where_names_the_config_in_errors():
    with pytest.raises(ValueError, match=r"^report.json: mi: probe.lr: expected a finite number, found 'fast'"):
        MIBoundConfig.from_dict({"probe": {"lr": "fast"}}, "report.json: mi")
    # the class's own checks too: the field by its path from where, not after the class
    with pytest.raises(ValueError, match=r"^analysis.probe.epochs: expected at least 1, found 0$"):
        ProbeConfig.from_dict({"epochs": 0}, "analysis.probe")
    with pytest.raises(ValueError, match=r"^report.json: probe: epochs: expected at least 1, found 0$"):
        ProbeConfig.from_dict({"epochs": 0}, "report.json: probe")


@dataclass(frozen=True)
@with_config(CONFIG)
class _Keyed:
    layers: Mapping[int, int] | None = None


def test_integer_keys_are_read_from_json_text_and_a_bad_key_names_its_mapping():
    assert parse_config(_Keyed, {"layers": {"3": 0, "11": 1}}).layers == {3: 0, 11: 1}
    with pytest.raises(ValueError, match=r"^_Keyed.layers: expected each key to be an integer, found 'x'$"):
        parse_config(_Keyed, {"layers": {"x": 0}})


def test_kd_core_config_re_exports_the_parser():
    import analysis.config
    import kd.core.config

    for name in ("CONFIG", "parse_config", "to_plain", "with_config"):
        assert getattr(kd.core.config, name) is getattr(analysis.config, name)

