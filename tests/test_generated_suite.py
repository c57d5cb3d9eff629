"""The generated-suite base (tasks/generated.py): what every generated suite gets from it."""
from __future__ import annotations

import ast
import inspect
import os

import pytest
import torch

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


@pytest.mark.parametrize("name", GENERATED)
def test_the_fingerprint_is_the_hash_of_the_data_files_and_changes_with_the_data(name, tmp_path, monkeypatch):
    """A record's ``suite_data``: the sha256 over the cache entry's files' own sha256s, computed here from the bytes;
    another array gives another fingerprint; the paper profile has none (its data sets are the user's)."""
    import hashlib
    import json

    from benchmark.cache import Cache

    suite = _suite(name, cache=Cache(tmp_path / "a"))
    entry = suite.prepare()
    files = {p.relative_to(entry).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(entry.rglob("*")) if p.is_file() and not p.name.startswith(".")
             and p.name != "entry.json"}  # the cache's manifest and marker are not data
    assert any(f.endswith(".safetensors") for f in files)
    want = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    assert suite.fingerprint() == want
    assert _suite(name, cache=Cache(tmp_path / "b")).fingerprint() == want  # rebuilt elsewhere: the same bytes
    cls = type(suite)
    real = cls.generate

    def nudged(self, task, split):
        out = real(self, task, split)
        if task != self.tasks[0] or split != "test":
            return out
        return {k: (~v if v.dtype == torch.bool else v + 1) for k, v in out.items()}

    monkeypatch.setattr(cls, "generate", nudged)
    assert _suite(name, cache=Cache(tmp_path / "c")).fingerprint() != want
    assert _suite(name, profile="paper").fingerprint() is None
