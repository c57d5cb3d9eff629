"""The registry: declared parameters are validated and coerced before any work; unknown names list valid ones."""
from __future__ import annotations

import pytest

from benchmark.contract import Artifacts, Method, StaticModel
from benchmark.registry import CODECS, METHODS, Param, Registry, RegistryError


def _registry() -> Registry:
    reg = Registry("method", [], "merge_bench.test_nothing")

    @reg.register(
        "toy",
        summary="a toy",
        paper="nobody 2026",
        params=[
            Param("lam", float, 0.3, "scale", lo=0.0, hi=1.0),
            Param("k", int, 20, "top-k", lo=1),
            Param("mode", str, "mean", "merge", choices=("mean", "sum")),
            Param("flag", bool, False, "switch"),
            Param("opt", float, None, "optional", nullable=True),
        ],
    )
    class Toy(Method):
        def merge(self, pool):
            return Artifacts()

        def load(self, artifacts, pretrained, tasks):
            return StaticModel(pretrained)

    return reg


def test_defaults_and_coercion_from_strings():
    p = _registry().get("toy")
    assert p.resolve() == {"lam": 0.3, "k": 20, "mode": "mean", "flag": False, "opt": None}
    got = p.resolve({"lam": "0.5", "k": "7", "mode": "sum", "flag": "true", "opt": "1e-3"})
    assert got == {"lam": 0.5, "k": 7, "mode": "sum", "flag": True, "opt": 1e-3}
    assert p.resolve({"opt": "none"})["opt"] is None


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"lam": "2"}, "'lam' must lie in [0.0, 1.0]"),
        ({"lam": "abc"}, "'lam' expects float"),
        ({"k": "1.5"}, "'k' expects int"),
        ({"k": "0"}, "'k' must lie in [1, inf]"),
        ({"mode": "max"}, "'mode' must be one of mean, sum"),
        ({"flag": "maybe"}, "'flag' expects bool"),
        ({"nope": "1"}, "has no parameter 'nope'; valid: flag, k, lam, mode, opt"),
    ],
)
def test_bad_parameters_name_the_valid_choices(overrides, fragment):
    with pytest.raises(RegistryError) as e:
        _registry().get("toy").resolve(overrides)
    assert fragment in str(e.value)


def test_unknown_plugin_lists_valid_names():
    with pytest.raises(RegistryError, match=r"unknown method 'nope'; valid: toy"):
        _registry().get("nope")


def test_invalid_default_is_refused_at_registration():
    reg = Registry("method", [], "merge_bench.test_nothing")
    with pytest.raises(RegistryError):
        reg.register("bad", summary="", params=[Param("x", int, 0, lo=1)])


def test_duplicate_names_are_refused():
    reg = _registry()
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("toy", summary="again")(type("Other", (), {}))


def test_in_repo_plugins_are_discovered():
    assert {"pretrained", "individual"} <= set(METHODS.names())
    assert {"tensor", "state_dict", "bitmask", "json"} <= set(CODECS.names())


def test_entry_point_plugins_are_loaded(monkeypatch, tmp_path):
    """A package outside the repo exposes a module in the group; importing it registers the plugin."""
    import importlib.metadata as md
    import sys
    import types

    reg = Registry("method", [], "merge_bench.test_external")
    holder = types.ModuleType("mb_ext_holder")
    holder.REG = reg
    monkeypatch.setitem(sys.modules, "mb_ext_holder", holder)
    (tmp_path / "mb_ext_plugin.py").write_text(
        "from benchmark.contract import Artifacts, Method, StaticModel\n"
        "from mb_ext_holder import REG\n"
        "@REG.register('external_method', summary='from outside the repo')\n"
        "class External(Method):\n"
        "    def merge(self, pool):\n        return Artifacts()\n"
        "    def load(self, artifacts, pretrained, tasks):\n        return StaticModel(pretrained)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = md.EntryPoint(name="external", value="mb_ext_plugin", group="merge_bench.test_external")
    monkeypatch.setattr(md, "entry_points", lambda group=None: [ep] if group == "merge_bench.test_external" else [])
    assert "mb_ext_plugin" not in sys.modules
    assert reg.names() == ["external_method"]
    assert reg.get("external_method").summary == "from outside the repo"


def test_each_registry_refuses_a_plugin_outside_its_contract():
    from benchmark.registry import BACKBONES, CODECS, METHODS, SUITES

    for reg, base in [(METHODS, "benchmark.contract.Method"), (BACKBONES, "benchmark.contract.Backbone"),
                      (SUITES, "benchmark.contract.Suite"), (CODECS, "benchmark.storage.Codec")]:
        plain = type("Plain", (), {"kind": "static"})
        with pytest.raises(RegistryError) as e:
            reg.register("test_plain", summary="test")(plain)
        assert str(e.value) == f"{reg.kind} 'test_plain': Plain does not subclass {base}"
        assert "test_plain" not in reg


# ----------------------------------------------------------------------------------------------------------------
# Per-backbone-kind defaults (issue 18 item 1)


def _kind_registry(kind_defaults) -> Registry:
    from benchmark.registry import KindDefaults  # noqa: F401

    reg = Registry("method", [], "merge_bench.test_nothing")

    @reg.register("toy", summary="a toy", params=[Param("loss", str, "kl", choices=("kl", "mse")),
                                                   Param("lam", float, 0.3, lo=0.0), Param("steps", int, 5)],
                  kind_defaults=kind_defaults)
    class Toy(Method):
        def merge(self, pool):
            return Artifacts()

        def load(self, artifacts, pretrained, tasks):
            return StaticModel(pretrained)

    return reg


def test_kind_defaults_replace_the_plain_defaults_as_a_whole_and_overrides_win():
    from benchmark.registry import KindDefaults

    p = _kind_registry({"detection": KindDefaults({"loss": "mse", "lam": "0.5"}, "Table VII")}).get("toy")
    assert p.resolve() == {"loss": "kl", "lam": 0.3, "steps": 5}
    assert p.resolve(backbone_kind="classification") == {"loss": "kl", "lam": 0.3, "steps": 5}
    assert p.resolve(backbone_kind="detection") == {"loss": "mse", "lam": 0.5, "steps": 5}  # coerced at import
    assert p.resolve({"lam": "0.1"}, backbone_kind="detection") == {"loss": "mse", "lam": 0.1, "steps": 5}
    assert p.defaults("detection") == {"loss": "mse", "lam": 0.5, "steps": 5}
    assert p.kind_defaults["detection"].source == "Table VII"


@pytest.mark.parametrize("spec, fragment", [
    ({"segmentation": ("loss", "mse")}, "unknown backbone kind 'segmentation'"),
    ({"detection": {"loss": "mse"}}, "must be KindDefaults(values, source)"),
    ("detection", "must map a backbone kind"),
])
def test_bad_kind_defaults_are_refused_at_registration(spec, fragment):
    with pytest.raises(ValueError) as e:
        _kind_registry(spec)
    assert fragment in str(e.value)


def test_kind_defaults_values_are_validated_and_need_a_source():
    from benchmark.registry import KindDefaults

    for kd, fragment in [(KindDefaults({"nope": 1}, "T"), "unknown parameters ['nope']"),
                         (KindDefaults({"loss": "cka"}, "T"), "must be one of kl, mse"),
                         (KindDefaults({"lam": 0.5}, " "), "and a source")]:
        with pytest.raises(ValueError) as e:
            _kind_registry({"detection": kd})
        assert fragment in str(e.value)


def test_backbones_declare_a_kind_and_the_runner_resolves_by_it():
    from benchmark.registry import BACKBONE_KINDS, BACKBONES
    from benchmark.runner import RunSpec, resolve

    # every in-repo backbone declares its kind (test plugins registered by other tests may not)
    kinds = {b.name: b.meta.get("task_kind") for b in BACKBONES.plugins() if b.obj.__module__.startswith("backbones.")}
    assert set(kinds.values()) <= set(BACKBONE_KINDS) and len(kinds) == 6
    assert kinds["detr_r50"] == "detection" and kinds["clip_vit_b32"] == "classification"
    assert kinds["roberta_base"] == "nlu"
    for m in ("flexswitch", "auto_flexswitch"):  # auto-flexswitch.txt Table VII: MSE, lambda = 0.5 on DETR
        det = resolve(RunSpec(method=m, backbone="detr_r50")).params
        assert (det["loss"], det["lam"]) == ("mse", 0.5)
        cls = resolve(RunSpec(method=m, backbone="clip_vit_b32")).params
        assert (cls["loss"], cls["lam"]) == ("kl", 0.3)
        assert resolve(RunSpec(method=m, backbone="detr_r50", overrides={"loss": "kl"})).params["loss"] == "kl"


def test_ties_defaults_to_a_reference_pair():
    # AdaMerging's TIES row and fusion-bench: dis-sum with lambda = 0.3, k = 20
    p = METHODS.get("ties").resolve()
    assert (p["merge_func"], p["scaling_coef"], p["topk"]) == ("dis-sum", 0.3, 20.0)


def test_list_shows_the_per_kind_defaults(capsys):
    from benchmark.__main__ import main

    assert main(["list", "methods"]) == 0
    out = capsys.readouterr().out
    assert "defaults on detection backbones: loss='mse', lam=0.5 (auto-flexswitch.txt Table VII" in out
    assert main(["list", "backbones"]) == 0
    assert "detr_r50 [kind: detection;" in capsys.readouterr().out
