"""The package layout stays one-way (docs/design.md "Layout"): no import cycles among project modules
(lazy imports inside functions count), no library module importing a command line, no file over 400
lines. Static (ast) and fast; `python tests/layout_check.py` prints the same figures."""
from __future__ import annotations

import layout_check as L


def test_no_import_cycles():
    assert L.cycles(L.load_modules()) == []


def test_no_module_imports_a_command_line():
    assert L.cli_imports(L.load_modules()) == []


def test_no_file_over_the_limit():
    assert L.long_files(L.load_modules()) == []


def test_every_verb_is_a_package_with_a_thin_main():
    """`python -m pipeline.<verb>` for every verb the docs use; its `__main__` only hands over to `cli`."""
    verbs = ["train", "tune", "evaluate", "registry", "predict", "synth", "demo", "ingest"]
    for verb in verbs:
        main = L.REPO / "pipeline" / verb / "__main__.py"
        assert main.is_file(), f"pipeline.{verb} has no __main__.py"
    for verb in set(verbs) - {"demo"}:
        assert len((L.REPO / "pipeline" / verb / "__main__.py").read_text().splitlines()) <= 10, verb


def test_the_check_sees_cycles_lazy_imports_and_cli_imports(tmp_path, monkeypatch):
    """The checker itself can fail: a lazy import cycle and an import of a `__main__` are found."""
    pkg = tmp_path / "pipeline"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pipeline import b\n")
    (pkg / "b.py").write_text("def f():\n    from pipeline.a import x\n")
    (pkg / "c.py").write_text("import importlib\nimportlib.import_module('pipeline.__main__')\n")
    (pkg / "__main__.py").write_text("print('cli')\n")
    (pkg / "big.py").write_text("x = 1\n" * (L.MAX_LINES + 1))
    monkeypatch.setattr(L, "REPO", tmp_path)
    monkeypatch.setattr(L, "SIZED", ("pipeline",))
    mods = L.load_modules()
    assert L.cycles(mods) == [["pipeline.a", "pipeline.b"]]
    assert L.cli_imports(mods) == ["pipeline.c -> pipeline.__main__"]
    assert [p for _, p in L.long_files(mods)] == ["pipeline/big.py"]
