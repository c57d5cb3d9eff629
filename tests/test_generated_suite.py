"""The generated-suite base (tasks/generated.py): what every generated suite gets from it."""
from __future__ import annotations

import ast
import inspect
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmark.errors import UserError  # noqa: E402
from benchmark.registry import SUITES  # noqa: E402
from tasks import drawing, grammar, scenes  # noqa: E402
from tasks.generated import GeneratedSuite  # noqa: E402

GENERATED = ["vision8", "rf100_7", "glue7"]
PRIMITIVES = {"tasks.drawing", "tasks.scenes", "tasks.grammar"}


def _suite(name, profile="micro", cache=None):
    return SUITES.get(name).obj(profile=profile, seed=0, cache=cache, progress=False)


@pytest.mark.parametrize("name", GENERATED)
def test_every_generated_suite_is_on_the_base(name):
    assert issubclass(SUITES.get(name).obj, GeneratedSuite)


@pytest.mark.parametrize("name", GENERATED)
def test_the_version_covers_every_primitive_module_the_suite_imports(name):
    """A primitive module left out of ``sources`` would let an edit of it read back stale cached data."""
    cls = SUITES.get(name).obj
    tree = ast.parse(inspect.getsource(inspect.getmodule(cls)))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "tasks":
            imported |= {f"tasks.{a.name}" for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    needed = imported & PRIMITIVES
    assert needed, "the suite draws with no primitive module?"
    assert needed == {m.__name__ for m in cls.sources}


@pytest.mark.parametrize("name,module", [("vision8", drawing), ("rf100_7", scenes), ("glue7", grammar)])
def test_editing_a_primitive_changes_the_data_key(name, module, monkeypatch):
    import benchmark.cache as bc

    suite = _suite(name)
    before = suite.data_key()
    real = bc.inspect.getsource
    monkeypatch.setattr(bc.inspect, "getsource", lambda obj: real(obj) + ("\n# edited" if obj is module else ""))
    assert suite.data_key() != before


@pytest.mark.parametrize("name", GENERATED)
def test_unknown_profile_task_and_split_name_the_valid_choices(name):
    with pytest.raises(UserError, match=r"has no profile 'huge'; valid: paper, tiny, micro"):
        _suite(name, profile="huge")
    suite = _suite(name)
    with pytest.raises(UserError, match=r"has no task 'nope'; valid: " + suite.tasks[0]):
        suite.load("nope", "train")
    with pytest.raises(UserError, match=r"unknown split 'dev'; valid: train, val, test"):
        suite.load(suite.tasks[0], "dev")


@pytest.mark.parametrize("name", GENERATED)
def test_load_gives_the_generated_split_and_a_second_instance_reads_the_same_tensors(name, cache_root):
    from benchmark.cache import Cache

    a, b = _suite(name, cache=Cache(cache_root)), _suite(name, cache=Cache(cache_root))
    task = a.tasks[0]
    x = a.load(task, "val")
    assert len(x) == a.sizes["val"]
    assert b.load(task, "val").inputs is x.inputs  # one read per process (the shared memo)
    assert x.classes == a.classnames(task)
