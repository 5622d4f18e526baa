"""The documentation site: it builds with warnings as errors, and its examples run.

Examples in ``docs/*.md`` are fenced code blocks:

* ```` ```python ````: run. A page's Python blocks run in order as one script (a later block
  may use what an earlier one defined), in a fresh interpreter whose working directory is an
  empty temporary folder, so ``sqlite:///lab.db`` and the default ``.omniq/omniq.db`` are
  temporary SQLite files. No ``OMNIQ_*`` variable of the test run reaches them.
* ```` ```ipython ````: notebook cells. A page's IPython blocks run in order, one cell each,
  in one IPython shell (magics included), in a fresh interpreter and temporary folder.
* ``<!-- docs-test: needs SERVICE ... -->`` on the line before a ```` ```python ```` or
  ```` ```ipython ```` block: the block needs a server or a cluster (``postgres``, ``redis``,
  ``nats`` on their usual local ports, ``s3``, ``slurm``), so it runs on its own (a fresh
  interpreter and folder, not with the page's other blocks) as a case of its own, skipped with
  the reason when a service is absent. For ``s3`` the test starts a local S3 server (moto) with
  a bucket ``my-bucket`` and points the standard ``AWS_*`` variables at it; for ``slurm`` a
  private single-node cluster (``tests/slurm.py``) when ``sinfo`` finds none.
* ``<!-- docs-test: skip REASON -->`` on the line before a block: shown, not run (it needs a
  bucket with credentials, or a host that does not exist here). The reason is required.
* ``<!-- docs-test: output -->`` on the line before a ```` ```text ```` block: that block is
  what the Python or IPython block just before it prints (compared line by line, trailing
  spaces ignored).
* ``<!-- docs-test: raises NAME -->`` on the line before an ```` ```ipython ```` block: the cell
  must fail with that exception (by class name), as a notebook would show it; the next cells run.
* ``<!-- docs-test: env NAME=VALUE -->`` anywhere on a page: set for that page's examples.

Other fences (bash, yaml, text) are not run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MARK = "<<<omniq-docs-block>>>"

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<ticks>`{3,})(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)(?P=ticks)[ \t]*$",
                   re.MULTILINE | re.DOTALL)
DIRECTIVE = re.compile(r"<!-- docs-test: (?P<what>skip|output|env|raises|needs)\b(?P<rest>[^>]*?)-->")


@dataclass
class Block:
    page: str
    line: int
    lang: str
    code: str
    skip: str | None = None  # the reason
    output: str | None = None  # the expected output, when the page gives it
    raises: str | None = None  # the exception an IPython cell must fail with
    needs: tuple[str, ...] = ()  # services the block needs (it then runs on its own)


@dataclass
class Page:
    path: Path
    blocks: list[Block] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def runnable(self, lang: str) -> list[Block]:
        """The blocks that run together, as one script (or one IPython session)."""
        return [b for b in self.blocks if b.lang == lang and b.skip is None and not b.needs]


def parse(path: Path) -> Page:
    text = path.read_text(encoding="utf-8")
    rel = str(path.relative_to(ROOT))
    page = Page(path)
    for m in DIRECTIVE.finditer(text):
        if m.group("what") == "env":
            name, _, value = m.group("rest").strip().partition("=")
            page.env[name] = value
    last: Block | None = None
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        directive = DIRECTIVE.fullmatch(before)
        lang = (m.group("info").strip().split() or [""])[0].lower()
        line = text.count("\n", 0, m.start()) + 1
        code = textwrap.dedent(m.group("body"))
        where = f"{rel}:{line}"
        if directive and directive.group("what") == "output":
            assert lang == "text", f"{where}: an output block is a ```text block"
            assert last is not None and last.skip is None, f"{where}: output of no runnable block"
            last.output = code
            continue
        block = Block(rel, line, lang, code)
        if directive and directive.group("what") == "skip":
            reason = directive.group("rest").strip()
            assert reason, f"{where}: docs-test: skip needs a reason"
            block.skip = reason
        if directive and directive.group("what") == "raises":
            assert lang == "ipython", f"{where}: docs-test: raises is for ```ipython cells"
            block.raises = directive.group("rest").strip()
            assert block.raises.isidentifier(), f"{where}: docs-test: raises needs an exception name"
        if directive and directive.group("what") == "needs":
            assert lang in ("python", "ipython"), f"{where}: docs-test: needs is for ```python / ```ipython blocks"
            block.needs = tuple(directive.group("rest").split())
            unknown = [s for s in block.needs if s not in SERVICES]
            assert block.needs and not unknown, f"{where}: docs-test: needs one of {sorted(SERVICES)}, got {unknown}"
        if lang in ("python", "ipython"):
            page.blocks.append(block)
            last = block
        else:
            assert directive is None or directive.group("what") != "skip", f"{where}: only python/ipython blocks run"
            last = None
    return page


# --------------------------------------------------------------------------------------------
# services a block may need
# --------------------------------------------------------------------------------------------
def _port(port: int, what: str) -> Callable[[contextlib.ExitStack], dict[str, str]]:
    def check(stack: contextlib.ExitStack) -> dict[str, str]:
        try:
            with socket.create_connection(("127.0.0.1", port), 1.0):
                return {}
        except OSError:
            pytest.skip(f"needs {what} on 127.0.0.1:{port}, and none answers")
    return check


def _slurm(stack: contextlib.ExitStack) -> dict[str, str]:
    """The environment reaching a SLURM cluster: the machine's own when ``sinfo`` answers,
    else a private single-node one, kept for the rest of the test session."""
    if shutil.which("sinfo") and subprocess.run(["sinfo", "-h"], capture_output=True, timeout=30).returncode == 0:
        return {}
    from .slurm import SlurmUnavailable, private_slurm

    try:
        cluster = stack.enter_context(private_slurm())
    except SlurmUnavailable as exc:
        pytest.skip(f"needs a SLURM cluster: sinfo finds none, and a private one would not start ({exc})")
    return cluster.env()


def _s3(stack: contextlib.ExitStack) -> dict[str, str]:
    """A local S3 server (moto) with the bucket ``my-bucket``, reached the standard way."""
    pytest.importorskip("s3fs")
    import fsspec

    from .storage.cloud import moto_server

    try:
        endpoint = stack.enter_context(moto_server())
    except (RuntimeError, OSError) as exc:
        pytest.skip(f"needs an S3 server: moto_server would not start ({exc})")
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    fs = fsspec.filesystem("s3", endpoint_url=endpoint, key="testing", secret="testing", skip_instance_cache=True)
    fs.mkdir("my-bucket")
    return env


#: service -> a check returning the environment that reaches it (or skipping the test)
SERVICES: dict[str, Callable[[contextlib.ExitStack], dict[str, str]]] = {
    "postgres": _port(5432, "a PostgreSQL server"),
    "redis": _port(6379, "a Redis server"),
    "nats": _port(4222, "a NATS server with JetStream"),
    "s3": _s3,
    "slurm": _slurm,
}


@pytest.fixture(scope="session")
def service_env() -> Iterator[Callable[[str], dict[str, str]]]:
    """``service_env(name)``: the environment reaching that service, started once a session."""
    found: dict[str, dict[str, str]] = {}
    with contextlib.ExitStack() as stack:
        def need(name: str) -> dict[str, str]:
            if name not in found:
                found[name] = SERVICES[name](stack)
            return found[name]
        yield need


PAGES = sorted(p for p in DOCS.rglob("*.md") if "_hooks" not in p.parts and "results" not in p.parts)
EXAMPLE_PAGES = [p for p in PAGES if parse(p).runnable("python") or parse(p).runnable("ipython")]
SERVICE_BLOCKS = [b for p in PAGES for b in parse(p).blocks if b.needs]


def _env(page: Page) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIQ_")}
    env.update(page.env)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _check_outputs(blocks: list[Block], stdout: str) -> None:
    parts = stdout.split(MARK + "\n")[1:]
    assert len(parts) == len(blocks), f"expected {len(blocks)} blocks' output, got {len(parts)}:\n{stdout}"
    for block, got in zip(blocks, parts):
        if block.output is None:
            continue
        want = [ln.rstrip() for ln in block.output.rstrip("\n").splitlines()]
        have = [ln.rstrip() for ln in got.rstrip("\n").splitlines()]
        assert have == want, f"{block.page}:{block.line} printed:\n{got}\nthe page says:\n{block.output}"


def _run(args: list[str], page: Page, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=_env(page), capture_output=True, text=True, timeout=timeout)


def _python_script(blocks: list[Block]) -> str:
    parts = []
    for b in blocks:
        parts.append(f"# ---- {b.page}:{b.line}\nprint({MARK!r}, flush=True)\n{b.code}")
    return "\n".join(parts)


IPYTHON_RUNNER = f"""
import json, sys
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
cells = json.load(open(sys.argv[1]))
for where, cell, raises in cells:
    print({MARK!r}, flush=True)
    result = shell.run_cell(cell, store_history=True)
    sys.stdout.flush(); sys.stderr.flush()
    error = result.error_in_exec or result.error_before_exec
    if raises is not None:
        if type(error).__name__ != raises:
            print(f"docs-test: the cell at {{where}} should fail with {{raises}}, not {{error!r}}", file=sys.stderr)
            sys.exit(1)
    elif not result.success:
        print("docs-test: the cell at " + where + " failed", file=sys.stderr, flush=True)
        sys.exit(1)
"""


@pytest.mark.parametrize("path", EXAMPLE_PAGES, ids=[str(p.relative_to(DOCS)) for p in EXAMPLE_PAGES])
def test_examples_run(path: Path, tmp_path: Path) -> None:
    page = parse(path)
    python, ipython = page.runnable("python"), page.runnable("ipython")
    if python:
        work = tmp_path / "py"
        work.mkdir()
        script = work / "example.py"
        script.write_text(_python_script(python))
        p = _run([sys.executable, str(script)], page, work)
        assert p.returncode == 0, (
            f"{page.path.name}'s Python examples failed (exit {p.returncode}); the script is the page's "
            f"blocks in order, each after a '# ---- page:line' comment:\n{p.stdout}\n{p.stderr}"
        )
        _check_outputs(python, p.stdout)
    if ipython:
        pytest.importorskip("IPython")
        work = tmp_path / "ipy"
        work.mkdir()
        (work / "cells.json").write_text(json.dumps([(f"{b.page}:{b.line}", b.code, b.raises) for b in ipython]))
        (work / "runner.py").write_text(IPYTHON_RUNNER)
        p = _run([sys.executable, "runner.py", "cells.json"], page, work)
        assert p.returncode == 0, f"{page.path.name}'s IPython cells failed:\n{p.stdout}\n{p.stderr}"
        _check_outputs(ipython, p.stdout)


@pytest.mark.parametrize("block", SERVICE_BLOCKS,
                         ids=[f"{b.page.removeprefix('docs/')}:{b.line}[{'+'.join(b.needs)}]" for b in SERVICE_BLOCKS])
def test_examples_that_need_a_service(block: Block, tmp_path: Path,
                                      service_env: Callable[[str], dict[str, str]]) -> None:
    """A block that needs a server or a cluster runs alone, or is skipped saying what is absent."""
    env: dict[str, str] = {}
    for service in block.needs:
        env.update(service_env(service))
    page = parse(ROOT / block.page)
    page.env.update(env)
    if block.lang == "ipython":
        pytest.importorskip("IPython")
        (tmp_path / "cells.json").write_text(json.dumps([(f"{block.page}:{block.line}", block.code, block.raises)]))
        (tmp_path / "runner.py").write_text(IPYTHON_RUNNER)
        p = _run([sys.executable, "runner.py", "cells.json"], page, tmp_path, timeout=400)
    else:
        script = tmp_path / "example.py"
        script.write_text(_python_script([block]))
        p = _run([sys.executable, str(script)], page, tmp_path, timeout=400)
    assert p.returncode == 0, f"{block.page}:{block.line} failed (exit {p.returncode}):\n{p.stdout}\n{p.stderr}"
    _check_outputs([block], p.stdout)


#: modules whose docstrings carry ``>>>`` examples (shown in the API reference): each runs as
#: a doctest, in a fresh interpreter and an empty temporary folder, as the pages' examples do
DOCTEST_MODULES = [
    "omniq.errors",
    "omniq.executor",
    "omniq.client.executor",
    "omniq.joblib",
    "omniq.ids",
    "omniq.blobcache",
    "omniq.config",
    "omniq.config.env",
    "omniq.config.loader",
    "omniq.config.settings",
    "omniq.config.sizes",
    "omniq.events.logger",
    "omniq.events.metrics",
    "omniq.events.processor",
    "omniq.hpc.base",
    "omniq.hpc.book",
    "omniq.hpc.link",
    "omniq.hpc.monitor",
    "omniq.hpc.jobspec",
    "omniq.hpc.reach",
    "omniq.hpc.slurm",
    "omniq.sweep.grid",
    "omniq.sweep.identity",
    "omniq.sweep.handles",
    "omniq.models.task",
    "omniq.models.event",
    "omniq.models.result",
    "omniq.models.schedule",
    "omniq.models.config",
    "omniq.serialization._codec",
    "omniq.serialization._signing",
    "omniq.serialization._blobs",
    "omniq.progress",
    "omniq.notebook.cells",
    "omniq.notebook.widgets",
    "omniq.workers.base",
    "omniq.workers.registry",
    "omniq.workers.aio",
    "omniq.workers.thread",
    "omniq.workers.process",
    "omniq.workers.gevent",
]
DOCTEST_RUNNER = """
import doctest, importlib, sys
module = importlib.import_module(sys.argv[1])
result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
print(f"{result.attempted} examples")
sys.exit(1 if result.failed or not result.attempted else 0)
"""


@pytest.mark.parametrize("module", DOCTEST_MODULES)
def test_docstring_examples(module: str, tmp_path: Path) -> None:
    """The ``Examples:`` in docstrings run and print what they show."""
    p = _run([sys.executable, "-c", DOCTEST_RUNNER, module], Page(tmp_path), tmp_path)
    assert p.returncode == 0, f"{module}'s docstring examples failed:\n{p.stdout}\n{p.stderr}"


@pytest.mark.parametrize("module", DOCTEST_MODULES)
def test_public_names_have_docstrings(module: str) -> None:
    """In the modules above, every public class, function and method says what it does, and
    every public function shows an example. A private module's (``serialization._codec``)
    public names are those its package exports."""
    import importlib
    import inspect

    m = importlib.import_module(module)
    package, _, leaf = module.rpartition(".")
    exported = set(importlib.import_module(package).__all__) if leaf.startswith("_") else None
    missing = []
    for name, obj in vars(m).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module:
            continue
        if exported is not None and name not in exported:
            continue
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        doc = inspect.getdoc(obj) or ""
        if not doc or (inspect.isfunction(obj) and "Examples:" not in doc):
            missing.append(name)
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                func = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
                if not attr.startswith("_") and inspect.isfunction(func) and not (func.__doc__ or "").strip():
                    missing.append(f"{name}.{attr}")
    assert not missing, f"{module}: public names without a docstring (or a function without Examples:): {missing}"


def test_every_example_is_run_or_says_why_not() -> None:
    """Python examples run unless a reason is given; the pages keep most of them runnable."""
    blocks = [b for p in PAGES for b in parse(p).blocks]
    assert blocks, "no examples found"
    skipped = [b for b in blocks if b.skip]
    assert len(skipped) <= len(blocks) // 3, [f"{b.page}:{b.line} {b.skip}" for b in skipped]


# --------------------------------------------------------------------------------------------
# the site
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    p = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"mkdocs build --strict failed:\n{p.stdout}\n{p.stderr}"
    problems = [ln for ln in p.stderr.splitlines() if ln.startswith(("WARNING", "ERROR"))]
    assert not problems, "\n".join(problems)
    return out


def _text(html_file: Path) -> str:
    return re.sub(r"<[^>]+>", " ", html_file.read_text(encoding="utf-8"))


def test_site_builds_strictly_with_every_page(site: Path) -> None:
    import yaml

    class _Loader(yaml.SafeLoader):
        pass

    _Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda *a: None)
    _Loader.add_multi_constructor("!", lambda *a: None)
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=_Loader)

    def walk(nav: object) -> list[str]:
        if isinstance(nav, str):
            return [nav]
        if isinstance(nav, list):
            return [p for item in nav for p in walk(item)]
        if isinstance(nav, dict):
            return [p for v in nav.values() for p in walk(v)]
        return []

    in_nav = set(walk(config["nav"]))
    pages = {str(p.relative_to(DOCS)) for p in PAGES}
    assert pages <= in_nav, f"pages missing from mkdocs.yml's nav: {sorted(pages - in_nav)}"
    for entry in in_nav:
        target = site / (entry.rsplit(".", 1)[0].removesuffix("index")) / "index.html"
        assert target.exists(), f"{entry} was not built ({target})"


def test_generated_references_list_everything(site: Path) -> None:
    import msgspec

    from omniq.cli import build_parser
    from omniq.config.env import env_var
    from omniq.models.config import OmniQConfig

    config = _text(site / "configuration" / "index.html")
    for f in msgspec.structs.fields(OmniQConfig):
        assert f.name in config and env_var(f.name) in config, f.name
    cli = _text(site / "cli" / "index.html")
    subs = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    for name in subs.choices:
        assert f"omniq {name}" in cli, name
    api = _text(site / "api" / "omniq" / "index.html")
    for method in ("submit", "map", "enqueue", "get_result", "cancel", "schedule", "sweep", "health", "events"):
        assert re.search(rf"\b{method}\s*\(", api), f"OmniQ.{method} is not in the API reference"


def test_kubernetes_manifest_asks_for_what_omniq_worker_takes() -> None:
    """The Kubernetes manifest (on paper: no cluster here) parses, and each ``omniq`` container's
    arguments are ones ``omniq worker`` accepts; its ``OMNIQ_*`` variables are settings."""
    import yaml

    from omniq.cli import build_parser
    from omniq.config.env import CONFIG_KEYS, KEY_ALIASES, env_var

    known = {env_var(k) for k in (*CONFIG_KEYS, *KEY_ALIASES)} | {"OMNIQ_SECRET_KEY", "OMNIQ_SECRET_KEYS"}
    manifests = sorted((DOCS / "kubernetes").glob("*.yaml"))
    assert manifests
    for path in manifests:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        containers = [c for d in docs for c in d["spec"]["template"]["spec"]["containers"]]
        workers = [c for c in containers if c.get("command", [None])[0] == "omniq"]
        assert workers, f"{path.name}: no omniq container"
        for c in workers:
            argv = [*c["command"][1:], *c.get("args", [])]
            try:
                args = build_parser().parse_args(argv)
            except SystemExit as exc:
                pytest.fail(f"{path.name}: omniq {' '.join(argv)} is refused by the command (exit {exc.code})")
            assert args.command == "worker"
            names = {e["name"] for e in c.get("env", []) if e["name"].startswith("OMNIQ_")}
            assert names <= known, f"{path.name}: not OmniQ settings: {sorted(names - known)}"


def test_readme_names_the_docs_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Documentation", 1)[1].split("\n## ", 1)[0]
    assert "uv run mkdocs build --strict" in section and "uv run mkdocs serve" in section
