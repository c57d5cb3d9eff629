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
