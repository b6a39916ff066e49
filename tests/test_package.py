"""The package's shape and start-up: no import cycles, no private names across subpackages,
``import psfkit`` and ``psfkit --help`` load nothing heavy, numba's cache folder, and a few real
processes (``python -m psfkit``) as smoke tests of what the in-process CLI tests cannot see.

Import cycles, decided as follows.  Between modules, the imports Python runs when a module is
imported (top level, including ``try``/``if`` blocks, not ``if TYPE_CHECKING:``) must form no cycle:
such a cycle breaks imports (within a subpackage, a function-level import of a sibling is the
subpackage's own business: psf.fit reads a frame's PSF file through psf.empirical, which fits
with psf.fit).  Between subpackages (io, detect, psf, aperture, analysis, viz,
datasets, cli, web and the top-level modules) every import counts, the ones inside functions too:
a function-level import only defers a cycle, it does not remove the knot a newcomer has to
untangle.  Edges that break that layering today are listed in :data:`KNOWN_BACK_EDGES`, each with
its reason; the test fails on any new one and on a listed one that is gone (the list only shrinks).
The package's own ``__init__`` maps public names lazily (strings, not imports), so it is no node.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import psfkit
from psfkit import backend

SRC = Path(psfkit.__file__).resolve().parent
#: function-level imports against the flow io -> detect -> psf -> ...: build_frame_psf (psf.empirical)
#: finds its stars and the sky itself when not given them; to go when the frame's PSF moves after
#: detection (or takes the stars and the background as arguments only)
KNOWN_BACK_EDGES = {
    ("psfkit.psf.empirical", "psfkit.detect.find"),
}
HEAVY = ("numba", "scipy", "dask", "distributed", "matplotlib", "fastapi", "uvicorn", "astropy.table", "rich",
         "pydantic")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in SRC.rglob("*.py")}


def _resolve(name: str) -> str | None:
    """The psfkit module an imported name lives in (``psfkit.psf.fit.fit_stars`` -> ``psfkit.psf.fit``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(path: Path, module: str, *, top_level: bool = False) -> list[tuple[str, str, int]]:
    """(imported module, imported name or '', line) for every psfkit import of a module, at any depth
    (``top_level``: only those run when the module is imported, not inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if top_level and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                found.extend((a.name, "", child.lineno) for a in child.names if a.name.split(".")[0] == "psfkit")
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative: from the module's package
                    pkg = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                    base = ".".join(pkg[: len(pkg) - child.level + 1] + ([base] if base else []))
                if base.split(".")[0] == "psfkit":
                    found.extend((base, a.name, child.lineno) for a in child.names)
            visit(child)

    visit(tree)
    return found


def _edges(*, top_level: bool = False) -> set[tuple[str, str]]:
    edges = set()
    for module, path in MODULES.items():
        for base, name, _ in _imports(path, module, top_level=top_level):
            target = _resolve(f"{base}.{name}" if name else base)
            if target and target != module:
                edges.add((module, target))
    return edges


def _subpackage(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _cycle(edges: set[tuple[str, str]]) -> list[str] | None:
    """One cycle of the directed graph, or None."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(v):
        state[v] = 1
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state and (found := dfs(w)):
                return found
        state[v] = 2
        stack.pop()
        return None

    for v in sorted(graph):
        if v not in state and (found := dfs(v)):
            return found
    return None


def test_the_graph_sees_the_imports():
    """The walk finds the edges it must (a broken walk would find no cycle in nothing)."""
    edges = _edges()
    assert ("psfkit.detect.find", "psfkit.psf.fit") in edges  # top level
    assert ("psfkit.cli.find", "psfkit.detect.find") in edges  # inside the command function
    assert ("psfkit.cli.find", "psfkit.detect.find") not in _edges(top_level=True)
    assert _cycle({("a", "b"), ("b", "c"), ("c", "a")}) == ["a", "b", "c", "a"]


def test_no_import_cycles_between_modules():
    assert _cycle(_edges(top_level=True)) is None


def test_no_import_cycles_between_subpackages():
    every = _edges()
    assert KNOWN_BACK_EDGES <= every, f"gone, remove from KNOWN_BACK_EDGES: {KNOWN_BACK_EDGES - every}"
    edges = {(_subpackage(a), _subpackage(b)) for a, b in every - KNOWN_BACK_EDGES if _subpackage(a) != _subpackage(b)}
    edges = {(a, b) for a, b in edges if a != "psfkit" and b != "psfkit"}  # the lazy top level: no node
    assert _cycle(edges) is None, edges



def test_no_private_names_across_subpackages():
    """``from psfkit.detect._kernels import x`` or ``from psfkit.psf.stamps import _helper`` only
    inside the subpackage that owns them."""
    bad = []
    for module, path in MODULES.items():
        for base, name, line in _imports(path, module):
            target = _resolve(f"{base}.{name}" if name else base) or base
            if _subpackage(target) == _subpackage(module):
                continue
            private_module = any(part.startswith("_") and not part.startswith("__") for part in target.split(".")[2:])
            private_name = name.startswith("_") and not name.startswith("__") and f"{base}.{name}" not in MODULES
            if private_module or private_name:
                bad.append(f"{path.relative_to(SRC.parent)}:{line} imports {base}{'.' + name if name else ''}")
    assert not bad, "\n".join(bad)


def test_every_command_is_in_the_cli_table():
    """psfkit.cli imports a command's module by name (cli._app.COMMANDS): a command missing from the
    table would be 'No such command' at the shell while the in-process tests still find it."""
    import re

    from psfkit.cli._app import COMMANDS

    found = {name: path.stem for path in (SRC / "cli").glob("*.py")
             for name in re.findall(r'@app\.command\("([^"]+)"\)', path.read_text(encoding="utf-8"))}
    assert found == COMMANDS


def _fresh(code: str) -> dict:
    """Run ``code`` in a new interpreter (psfkit from this checkout) and return the JSON it prints."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC.parent), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


_LOADED = ("import json, sys; print(json.dumps(sorted(m for m in sys.modules if any(m == h or m.startswith(h + '.') "
           f"for h in {HEAVY!r}))))")


def test_import_psfkit_loads_nothing_heavy():
    """A fresh ``import psfkit`` (and naming a public function) loads none of numba, scipy, dask,
    matplotlib, fastapi, astropy.table: each public name imports its module on first use."""
    loaded = _fresh("import psfkit; " + _LOADED)
    assert loaded == []


def test_help_loads_neither_numpy_nor_rich():
    """``psfkit --help`` imports typer and the command modules only (no rich: the plain help)."""
    loaded = _fresh("import sys, io, contextlib\nfrom psfkit.cli import main\n"
                    "with contextlib.redirect_stdout(io.StringIO()) as f:\n"
                    "    try:\n        main(['--help'])\n    except SystemExit:\n        pass\n"
                    "assert 'find' in f.getvalue() and 'info' in f.getvalue()\n"
                    "assert 'numpy' not in sys.modules, 'numpy'\n" + _LOADED)
    assert loaded == []


def test_find_loads_no_plotting_web_or_dask(sample_path, tmp_path):
    """``psfkit find`` imports what the find path needs, not the viewer, the plots or Dask."""
    csv = tmp_path / "s.csv"
    loaded = _fresh("import io, contextlib\nfrom psfkit.cli import main\n"
                    "with contextlib.redirect_stdout(io.StringIO()):\n"
                    f"    try:\n        main(['find', {str(sample_path)!r}, '-o', {str(csv)!r}])\n"
                    "    except SystemExit as exc:\n        assert not exc.code, exc.code\n" + _LOADED)
    assert csv.exists()
    assert not {m.split(".")[0] for m in loaded} & {"matplotlib", "fastapi", "uvicorn", "dask", "distributed", "rich"}
    assert not [m for m in loaded if m.startswith(("scipy.interpolate", "scipy.ndimage"))], loaded


@pytest.mark.parametrize("model", ["auto", "gaussian"])
def test_find_on_a_small_frame_loads_neither_numba_nor_scipy(sample_path, tmp_path, model):
    """A small frame (the 256 x 256 sample) is measured by the numpy twins of the compiled kernels:
    numba's start-up (~0.6 s) and scipy's are not paid (psfkit.backend.job); the options are
    converted without pydantic (psfkit.cli._coercion).  The default (--model auto) tries the frame's
    PSF, whose star selection uses scipy.spatial's KD-tree; nothing more of scipy."""
    csv = tmp_path / "s.csv"
    loaded = _fresh("import io, contextlib, os\nos.environ.pop('PSFKIT_BACKEND', None)\n"
                    "from psfkit.cli import main\n"
                    "with contextlib.redirect_stdout(io.StringIO()):\n"
                    f"    try:\n        main(['find', {str(sample_path)!r}, '-o', {str(csv)!r}, '--threshold', '5',"
                    f"              '--max-stars', '500', '--min-snr', '3', '--model', {model!r}])\n"
                    "    except SystemExit as exc:\n        assert not exc.code, exc.code\n" + _LOADED)
    assert csv.exists()
    assert not [m for m in loaded if m.split(".")[0] in ("numba", "llvmlite", "pydantic")], loaded
    heavy = ("scipy",) if model == "gaussian" else ("scipy.ndimage", "scipy.interpolate", "scipy.optimize")
    assert not [m for m in loaded if m.startswith(heavy)], loaded


@pytest.mark.parametrize("annotation,value,expected", [
    (float, "6", 6.0), (float, "-2.5e-3", -2.5e-3), (float, ".5", 0.5), (float, 3, 3.0), (float, "1_0", 10.0),
    (float, " 7", 7.0), (int, "12", 12), (int, "-3", -3), (int, 4, 4), ("float | None", "2", 2.0),
    (str, "auto", "auto"), (Path, "x.fits", Path("x.fits")),
    ("list[Path]", ("a.csv", "b.reg"), [Path("a.csv"), Path("b.reg")]),
    (float, "abc", "Input should be a valid number"), (int, "2.5", "Input should be a valid integer"),
])
def test_plain_options_convert_as_typer_does(annotation, value, expected):
    """psfkit.cli._coercion converts plain options without pydantic and gives what typer's own
    adapter gives (the same value, or the same refusal, by typer itself)."""
    from types import SimpleNamespace

    from typer import core
    from typer._coercion import resolve_type_descriptor
    from typer.models import OptionInfo

    from psfkit.cli import _app  # noqa: F401 (installs the converter)

    annotation = eval(annotation) if isinstance(annotation, str) else annotation
    descriptor = resolve_type_descriptor(annotation, OptionInfo())
    ours = core.build_runtime_param(descriptor)
    theirs = _typer_build(descriptor)
    assert getattr(core.build_runtime_param, "psfkit_plain", False)
    param = SimpleNamespace(multiple=isinstance(value, tuple), nargs=1)
    results = []
    for runtime in (ours, theirs):
        try:
            results.append(runtime.coerce(value, param=param, ctx=None))
        except Exception as exc:  # typer's BadParameter (its own copy of click's)
            results.append(getattr(exc, "message", str(exc)))
    if isinstance(expected, str) and expected.startswith("Input"):
        assert expected in results[0] and results[0] == results[1]
    else:
        assert results[0] == results[1] == expected and type(results[0]) is type(results[1])


def _typer_build(descriptor):
    from typer._coercion import build_runtime_param

    return build_runtime_param(descriptor)


def test_small_jobs_run_numpy_until_numba_is_loaded():
    """backend.job: inside a small job "auto" is the numpy path, inside a large one (or outside any
    job) the compiled one; once numba is loaded every job is compiled; PSFKIT_BACKEND overrides."""
    got = _fresh(
        "import json, os, sys\nos.environ['PSFKIT_BACKEND'] = 'auto'\n"
        "from psfkit.backend import HAVE_NUMBA, compiled_available, job\n"
        "out = {'outside': compiled_available()}\n"
        "with job(pixels=512 * 512):\n"
        "    out['small'] = compiled_available()\n"
        "    with job(pixels=512 * 512, stars=5000):\n"
        "        out['many_stars'] = compiled_available()\n"
        "    out['small_again'] = compiled_available()\n"
        "with job(pixels=6000 * 4000):\n    out['large'] = compiled_available()\n"
        "out['numba_before'] = 'numba' in sys.modules\n"
        "os.environ['PSFKIT_BACKEND'] = 'numba'\n"
        "with job(pixels=100):\n    out['forced'] = compiled_available()\n"
        "os.environ['PSFKIT_BACKEND'] = 'auto'\n"
        "if HAVE_NUMBA:\n    import numba  # noqa\n"
        "with job(pixels=100):\n    out['after_numba'] = compiled_available()\n"
        "out['have'] = HAVE_NUMBA\nprint(json.dumps(out))")
    have = got.pop("have")
    assert got == {"outside": have, "small": False, "many_stars": have, "small_again": False, "large": have,
                   "numba_before": False, "forced": have, "after_numba": have}


def test_small_frame_numpy_and_compiled_agree(sample_path, monkeypatch):
    """The small-job path (numpy twins) and the compiled one find the same stars with the same values."""
    from psfkit.detect.find import find_stars

    if not backend.HAVE_NUMBA:
        pytest.skip("numba is not installed")
    tables = {}
    for name in ("numpy", "numba"):
        monkeypatch.setenv("PSFKIT_BACKEND", name)
        tables[name] = find_stars(sample_path, keep_rejected=True)
    a, b = tables["numpy"], tables["numba"]
    assert len(a) == len(b) > 50 and list(a["reject_reason"]) == list(b["reject_reason"])
    assert np.array_equal(a["flags"], b["flags"])
    # the stars (a rejected candidate's fit may stop at the iteration limit one step apart)
    ok = np.asarray(a["accepted"])
    for name in ("x_fit", "y_fit", "fwhm", "roundness", "flux_fit", "flux_err", "snr", "hfr"):
        np.testing.assert_allclose(a[name][ok], b[name][ok], rtol=1e-5, atol=1e-6, err_msg=name)


def test_python_m_psfkit_runs(sample_path, tmp_path):
    """The real command line end to end: ``python -m psfkit find`` writes the list, ``info`` runs (its
    module alone imported), bad input exits 2."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC.parent), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-m", "psfkit", "find", str(sample_path), "-o", str(tmp_path / "s.csv")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "stars from" in out.stdout and len(psfkit.read_star_list(tmp_path / "s.csv")) > 5
    # a command whose module registers one command alone (typer would make it the whole program)
    info = subprocess.run([sys.executable, "-m", "psfkit", "info", str(sample_path)], capture_output=True, text=True,
                          env=env, timeout=600)
    assert info.returncode == 0 and "format" in info.stdout, info.stderr
    bad = subprocess.run([sys.executable, "-m", "psfkit", "find", str(tmp_path / "missing.fits")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert bad.returncode == 2 and bad.stderr.startswith("psfkit: error:") and "Traceback" not in bad.stderr


# ---------------------------------------------------------------- numba's cache folder

@pytest.fixture
def cache_env(monkeypatch, tmp_path):
    """No NUMBA_CACHE_DIR, XDG_CACHE_HOME in tmp_path; numba's config restored afterwards."""
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    config = sys.modules.get("numba.core.config")
    if config is not None:
        monkeypatch.setattr(config, "CACHE_DIR", config.CACHE_DIR)
    return tmp_path


def test_numba_cache_stays_in_the_package_when_it_is_writable(cache_env, monkeypatch):
    monkeypatch.setattr(backend, "_writable", lambda folder: True)
    assert backend.numba_cache_dir() is None
    assert "NUMBA_CACHE_DIR" not in os.environ


def test_numba_cache_moves_to_the_user_cache_when_the_package_is_read_only(cache_env, monkeypatch):
    real = backend._writable
    monkeypatch.setattr(backend, "_writable", lambda folder: not Path(folder).is_relative_to(SRC) and real(folder))
    chosen = backend.numba_cache_dir()
    assert chosen == str(cache_env / "xdg" / "psfkit" / "numba")
    assert os.environ["NUMBA_CACHE_DIR"] == chosen and Path(chosen).is_dir()
    config = sys.modules.get("numba.core.config")
    if config is not None:  # numba already imported: its config follows
        assert config.CACHE_DIR == chosen


def test_numba_cache_falls_back_to_the_temp_dir(cache_env, monkeypatch):
    real = backend._writable
    blocked = (SRC, cache_env / "xdg")
    monkeypatch.setattr(backend, "_writable",
                        lambda folder: not any(Path(folder).is_relative_to(b) for b in blocked) and real(folder))
    chosen = backend.numba_cache_dir()
    assert chosen is not None and Path(chosen).parent == Path(tempfile.gettempdir())


def test_the_users_numba_cache_dir_wins(cache_env, monkeypatch):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(cache_env / "mine"))
    monkeypatch.setattr(backend, "_writable", lambda folder: False)
    assert backend.numba_cache_dir() is None and os.environ["NUMBA_CACHE_DIR"] == str(cache_env / "mine")


def test_a_real_read_only_check(tmp_path):
    """_writable answers from the file system: a folder it can make and write is writable, a path
    under a regular file is not."""
    assert backend._writable(tmp_path / "new" / "__pycache__")
    (tmp_path / "file").write_text("x")
    assert not backend._writable(tmp_path / "file" / "sub")


def test_demo_in_a_fresh_process(tmp_path):
    """`psfkit demo` runs `find` through the app: in a real process only the invoked command's module
    is loaded, so demo must load find's (the in-process tests load every command and cannot see it)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "psfkit", "demo", "--outdir", str(tmp_path / "d")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "d" / "stars.csv").stat().st_size > 1000 and (tmp_path / "d" / "overlay.png").exists()
