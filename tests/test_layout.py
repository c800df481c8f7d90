"""The layers: no import circle, `ktt/` knows no model, a model knows no CLI, serving stays lean."""
import ast
from pathlib import Path

import pytest

from ktt import registry
from ktt.metrics import evaluate, metric_names

ROOT = Path(__file__).resolve().parent.parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Every ktt/models module -> the ktt/models modules it imports anywhere (functions included)."""
    files = {module_name(p): p for p in [*ROOT.glob("ktt/**/*.py"), *ROOT.glob("models/**/*.py")]}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
                mod = ".".join(base + ([node.module] if node.module else []))
                found |= {mod} | {f"{mod}.{a.name}" for a in node.names}
        graph[name] = {m for m in found if m in files and m != name}
    return graph


def reachable(graph, start):
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_no_import_circle():
    graph = import_graph()
    assert [m for m in graph if m in reachable(graph, m)] == []


def test_layers():
    graph = import_graph()
    for name, deps in graph.items():
        if name.startswith("ktt"):  # the library knows no specific model
            assert not {d for d in deps if d.startswith("models")}, name
        if name.startswith("models."):  # a model folder knows no CLI, tracking or export
            assert not {d for d in deps if d.split(".")[:2] in (["ktt", "cli"], ["ktt", "train"], ["ktt", "tune"],
                                                                 ["ktt", "experiment"], ["ktt", "export"],
                                                                 ["ktt", "tracking"])}, name
        if name.startswith("ktt.serving"):  # runs in the serving environment: no MLflow, no torch, no export
            assert deps <= {"ktt", "ktt.serving", "ktt.serving.runtime", "ktt.serving.metrics", "ktt.serving.forward",
                            "ktt.serving.requests", "ktt.hierarchy", "ktt.text", "ktt.errors", "ktt.threads",
                            "ktt.sparse", "ktt.confidence", "ktt.schema", "ktt.taxonomy", "ktt.review"}, name
        if name == "ktt.confidence":  # the server reads saved precision curves: numpy only (scipy to fit)
            assert deps <= {"ktt.errors"}, name
        if name == "ktt.sparse":  # scores in the server too: numpy, pandas and the stemmer only
            assert deps <= {"ktt.text"}, name
    assert "models" not in graph["models"]  # the bundled list imports nothing: registry reads it


#: docs/architecture.md's layers, lowest first: a module imports from its own layer or a lower one;
#: the server's layer (the serving environment) imports only the core; the sidecar nothing of KTT.
LAYERS = {
    "core": ["ktt", "ktt.errors", "ktt.text", "ktt.threads", "ktt.hierarchy", "ktt.confidence", "ktt.compare", "ktt.schema",
             "ktt.sparse", "ktt.metrics", "ktt.data", "ktt.synth", "ktt.hparams", "ktt.taxonomy", "ktt.review",
             "ktt.zeroshot", "ktt.discover"],
    "models": ["ktt.model", "ktt.nn", "ktt.tfidf", "ktt.registry", "ktt.distributed", "models", "models.*"],
    "serving": ["ktt.serving", "ktt.serving.*"],
    "tracking": ["ktt.tracking", "ktt.tracking.*", "ktt.testing", "ktt.train", "ktt.tune", "ktt.experiment", "ktt.export", "ktt.pyfunc", "ktt.pyfunc_model", "ktt.batch",
                 "ktt.figures", "ktt.monitoring", "ktt.monitoring.build", "ktt.monitoring.dashboard",
                 "ktt.monitoring.stack"],
    "cli": ["ktt.cli", "ktt.__main__"],
    "sidecar": ["ktt.monitoring.sidecar"],
}


def layer_of(module: str) -> str:
    import fnmatch

    return next(name for name, mods in LAYERS.items() if any(fnmatch.fnmatch(module, m) for m in mods))


def test_every_module_sits_in_one_layer_and_imports_downwards():
    order = list(LAYERS)
    graph = import_graph()
    for name, deps in graph.items():
        own = layer_of(name)  # StopIteration: a new module not yet placed in docs/architecture.md
        for dep in deps:
            if own == "sidecar":
                raise AssertionError(f"the sidecar imports {dep}: it must stay one standalone file")
            below = layer_of(dep)
            if own == "serving":
                assert below in ("core", "serving"), f"{name} (serving) imports {dep} ({below})"
            else:
                assert below != "sidecar" or name in ("ktt.monitoring.build", "ktt.monitoring.dashboard"), name
                assert below == "sidecar" or order.index(below) <= order.index(own), f"{name} ({own}) imports {dep} ({below})"
    doc = (ROOT / "docs" / "architecture.md").read_text()
    for name, mods in LAYERS.items():  # the map says what the test enforces
        assert f"**{name}**" in doc and all(f"`{m}`" in doc for m in mods), name


def test_registry_builds_without_touching_classes(bigbasket):
    cls = registry.get("db_bhcn")
    assert "name" not in vars(cls) and cls.name == "db_bhcn"
    model = registry.create("db_bhcn", bigbasket.hierarchy, epochs=1)
    assert model.params == registry.params("db_bhcn", {"epochs": 1}) == cls.check_params({"epochs": 1})


def test_defaults_have_one_source():
    """hyperparameters.json holds search spaces (and tuned values), never a copy of a class default."""
    import json

    for name, entry in json.loads((ROOT / "hyperparameters.json").read_text()).items():
        copies = {k for k, v in entry.items() if k in registry.get(name).defaults and v == registry.get(name).defaults[k]}
        assert not copies, f"{name}: {sorted(copies)} repeat the class defaults"


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_metric_names_are_what_evaluate_returns(bigbasket, depth):
    from ktt.hierarchy import Hierarchy

    h = Hierarchy.from_paths([p[:depth] for p in bigbasket.train.paths[:200]])
    codes = h.encode([p[:depth] for p in bigbasket.train.paths[:50]])
    assert list(evaluate(h, codes, codes)) == metric_names(depth)


def test_interval_and_pattern_by_hand():
    from ktt.model import Interval, Pattern

    half_open = Interval(0, 1, "left")
    assert 0 in half_open and 0.999 in half_open and 1 not in half_open and -0.001 not in half_open
    positive = Interval(0, None, "neither")
    assert 0 not in positive and 1e-12 in positive and 1e300 in positive
    assert 1 in Interval(1) and 0 not in Interval(1) and 5 in Interval(None, 5) and 6 not in Interval(None, 5)
    assert (str(half_open), str(positive), str(Interval(1)), str(Interval(None, 5, "right"))) == \
        ("[0, 1)", "(0, inf)", "[1, inf)", "(-inf, 5]")
    device = Pattern(r"cpu|cuda(:\d+)?", "cpu or cuda[:N]")
    assert "cuda:1" in device and "cpu" in device and "cuda:" not in device and "xcpu" not in device and 3 not in device


def test_the_contract_table_is_the_class():
    """docs/adding_a_model.md's contract table names every public member of ``Model``, once, in
    its group: what a model must implement (the abstract methods), declare (class attributes)
    or may override (what ``Model`` provides); plus ``export_arrays``, which ``served_from =
    "arrays"`` asks for."""
    import re

    from ktt.model import Model

    rows = re.findall(r"^\| (implement|declare|may override) \| (.*?) \|", (ROOT / "docs" / "adding_a_model.md").read_text(), re.M)
    groups: dict[str, list[str]] = {}
    for group, cell in rows:
        groups.setdefault(group, []).extend(re.findall(r"`(\w+)", cell))
    named = [m for ms in groups.values() for m in ms]
    assert len(named) == len(set(named)), "a member named twice"
    public = {n for n in dir(Model) if not n.startswith("_")}
    assert set(groups["implement"]) == set(Model.__abstractmethods__)
    declared = {n for n in public if not callable(getattr(Model, n)) and not isinstance(vars(Model).get(n), property)}
    assert set(groups["declare"]) == declared
    assert set(groups["may override"]) == (public - declared - set(Model.__abstractmethods__)) | {"export_arrays"}
