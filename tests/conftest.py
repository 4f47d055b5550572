"""Session-wide fixtures: tiny upstream checkpoints built once per session (see ``fixtures.py``), their graphs,
and one export cache shared by every test module.

* ``checkpoint_factory(name) -> Path``: a fixture checkpoint, built once.
* ``graph_of(name) -> Graph``: a fixture's graph, ``profile`` (the hybrid fixture saved in our profile format and
  loaded back) or a bundled trained example (``hf-recall``, ``hybrid-copy``), loaded once.
* ``exports(name, kind, **options) -> Artifact``: the artifact of kind ``kind`` (``targets.KINDS``: ``onnx``,
  ``onnx-scan``, ``coreml-prefill``, ``executorch``...) of ``graph_of(name)``, exported once per session through
  the public registry and shared by every module that asks for the same export. Options equal to the CLI's
  defaults are the same export as options left out (that is what the CLI passes).
  A cached artifact is READ-ONLY: a test that modifies, moves or deletes one works on a private copy
  (``fixtures.copy_of(art, folder)``).
  Every hit, and the session's end, checks that the cached files are untouched (names and bytes).
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "examples"))  # examples/tasks.py, demo.py

from fixtures import FIXTURES, FixtureUnavailable, load_graph, load_upstream  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = {"hf-recall": REPO / "examples" / "hf-recall", "hybrid-copy": REPO / "examples" / "hybrid-copy"}


@pytest.fixture(scope="session")
def checkpoint_factory(tmp_path_factory):
    """``checkpoint_factory(name) -> Path``: the named fixture checkpoint, built once per session."""
    built: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("checkpoints")

    def get(name: str) -> Path:
        if name not in FIXTURES:
            raise KeyError(f"unknown fixture {name!r}; known: {sorted(FIXTURES)}")
        if name not in built:
            d = root / name
            d.mkdir()
            try:
                built[name] = FIXTURES[name](d)
            except FixtureUnavailable as e:
                pytest.skip(str(e))
        return built[name]

    return get


@pytest.fixture(scope="session")
def upstream_factory(checkpoint_factory):
    """``upstream_factory(name) -> torch.nn.Module``: the fixture loaded back with upstream (cached)."""
    models: dict = {}

    def get(name: str):
        if name not in models:
            models[name] = load_upstream(name, checkpoint_factory(name))
        return models[name]

    return get


@pytest.fixture(scope="session")
def graph_of(checkpoint_factory, tmp_path_factory):
    """``graph_of(name) -> Graph``: a test fixture's graph (``fixtures.py``; ``profile``: the hybrid fixture in our
    profile format) or a bundled trained example's, loaded once per session. Graphs are not modified by tests."""
    from xlstm_export.frontends import load_checkpoint

    root = tmp_path_factory.mktemp("graphs")
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            cache[name] = (load_checkpoint(EXAMPLES[name]) if name in EXAMPLES else
                           load_graph(checkpoint_factory, name, root))
        return cache[name]

    return get


def _digest(folder: Path) -> str:
    """The names and bytes of everything under ``folder``: what every hit checks is unchanged. (Not mtimes:
    coremltools rewrites a package's Manifest.json, same bytes, whenever it opens the package.)"""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode() + (b"/" if p.is_dir() else b"\0"))
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def export_key(name: str, kind: str, options: dict) -> tuple:
    """The cache key: the fixture, the target, the file name the kind writes (the Swift package and a package's
    module names follow it) and the options (the kind's fixed ones merged in; None and the CLI's defaults
    dropped; a precision equal to the kind's default one dropped)."""
    from xlstm_export.targets import KINDS, TARGETS

    k = KINDS[kind]
    target = TARGETS[k.target]
    defaults = {o.dest: o.default for o in target.options}
    defaults.setdefault("precision", KINDS[k.target].demo_precision)
    opts = {**options, **k.fixed}
    opts = {o: v for o, v in opts.items() if v is not None and not (o in defaults and defaults[o] == v)}
    return name, k.target, k.filename, tuple(sorted(opts.items(), key=lambda kv: kv[0]))


@pytest.fixture(scope="session")
def exports(graph_of, tmp_path_factory):
    """``exports(name, kind, **options) -> Artifact``: exported once per session (see the module docstring); each
    artifact in its own folder (with whatever the export writes beside it: Swift package, text files)."""
    from xlstm_export.targets import KINDS

    root = tmp_path_factory.mktemp("exports")
    cache: dict = {}  # key -> (Artifact, folder, digest)

    def _check(key) -> None:
        art, folder, digest = cache[key]
        if _digest(folder) != digest:
            raise AssertionError(f"a test modified the cached artifact {art.path} ({key}): tests must work on "
                                 f"fixtures.copy_of(artifact, tmp_path)")

    def get(name: str, kind: str, **options):
        key = export_key(name, kind, options)
        if key not in cache:
            folder = root / f"{len(cache):03d}-{name}-{kind}"
            folder.mkdir()
            art = KINDS[kind].emit(graph_of(name), folder / KINDS[kind].filename, **options)
            cache[key] = (art, folder, _digest(folder))
        _check(key)
        return cache[key][0]

    def adopt(name: str, kind: str, path: Path, **options):
        """An artifact exported elsewhere (a CLI test's, in a fresh process) serves later asks for ``options``: its
        folder is copied into the cache, opened (its contract checked against the graph) and described as the
        emitter would. Returns the path of the earlier cached artifact when there already is one, else None."""
        from xlstm_export.outputs import Artifact, bytes_on_disk
        from xlstm_export.targets import TARGETS

        key = export_key(name, kind, options)
        if key in cache:
            _check(key)
            return cache[key][0].path
        folder = root / f"{len(cache):03d}-{name}-{kind}"
        shutil.copytree(Path(path).parent, folder)
        new = folder / Path(path).name
        target = TARGETS[KINDS[kind].target]
        contract = target.open_runner(new, graph_of(name)).contract
        art = Artifact(new, kind, contract["precision"], contract, (new,),
                       {"bytes": bytes_on_disk(target.files_of(new))})
        cache[key] = (art, folder, _digest(folder))
        return None

    get.adopt = adopt
    yield get
    changed = [str(art.path) for art, folder, digest in cache.values() if _digest(folder) != digest]
    assert not changed, f"tests modified cached artifacts: {changed}"
