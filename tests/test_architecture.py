"""The layout rules, checked on the source: dependencies point one way, no module imports a
private name of another, no module is over 400 lines.

Imports are read with ``ast`` (``TYPE_CHECKING`` imports count too), so a cycle cannot hide
behind a lazy import. The layers, lowest first (a module may import only from its own layer
or lower ones)::

    errors, message, keys, config,        the leaves
    middleware, server
    protocol/                             the wire format
    connection/                           links, auto-pipelining, URLs
    features/, redispy                    Redis patterns over connections (idempotency,
                                          tracking, rate limits, indexes, partitions...)
    client, produce, writes, handler,     producers and reads; a handler's signature;
    requests                              request/reply
    consumers/                            the runtime of each kind
    ops/                                  dead letters and stats, as data
    metrics, otel, lifespan, runtime,     a running flow; tracing middleware; its AsyncAPI
    app, asyncapi                         document
    testing/, cli/, web/                  what users run; nothing imports them
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

from redisflow.config import KIND_OPTIONS, FlowConfig, FlowOptions, HandlerOptions

PACKAGE = Path(__file__).resolve().parents[1] / "redisflow"
LAYERS = [
    {"errors", "message", "keys", "config", "middleware", "server"},
    {"protocol"},
    {"connection"},
    {"features", "redispy"},
    {"client", "handler", "produce", "requests", "writes"},
    {"consumers"},
    {"ops"},
    {"metrics", "otel", "lifespan", "runtime", "app", "asyncapi"},
    {"__init__", "__main__", "testing", "cli", "web"},
]
MAX_LINES = 400


def modules() -> Iterator[tuple[str, Path]]:
    """Every module of the package, as a dotted name below ``redisflow`` and its path."""
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        yield ".".join(parts), path


def imports(name: str, path: Path) -> Iterator[tuple[str, list[str]]]:
    """The redisflow modules ``name`` imports (resolved), with the names it takes from each."""
    package = name.split(".")[:-1] if not path.name == "__init__.py" else name.split(".")
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            elif node.module and node.module.startswith("redisflow"):
                target = node.module.removeprefix("redisflow").lstrip(".")
            else:
                continue
            yield target, [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("redisflow."):
                    yield alias.name.removeprefix("redisflow."), []


def layer(module: str) -> int:
    top = module.split(".")[0] or "__init__"
    for i, members in enumerate(LAYERS):
        if top in members:
            return i
    raise AssertionError(f"module {module!r} belongs to no layer: add it to LAYERS")


def test_dependencies_point_one_way() -> None:
    wrong = []
    for name, path in modules():
        for target, _ in imports(name, path):
            if not target:
                continue  # ``from redisflow import __version__`` (the cli)
            same_top = target.split(".")[0] == name.split(".")[0]
            if not same_top and layer(target) > layer(name):
                wrong.append(f"{name} imports {target} (a higher layer)")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles() -> None:
    graph: dict[str, set[str]] = {}
    known = {name for name, _ in modules()}
    for name, path in modules():
        deps = graph.setdefault(name, set())
        for target, names in imports(name, path):
            for candidate in [f"{target}.{n}" for n in names] + [target]:
                if candidate in known or f"{candidate}.__init__" in known:
                    deps.add(candidate if candidate in known else f"{candidate}.__init__")
                    break
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        if node in trail:
            cycle = [*trail[trail.index(node) :], node]
            if not any(part.endswith("__init__") for part in cycle):  # packages re-export
                cycles.append(" -> ".join(cycle))
            return
        for dep in graph.get(node, ()):
            visit(dep, [*trail, node])

    for name in graph:
        visit(name, [])
    assert not cycles, "\n".join(sorted(set(cycles)))


def test_no_module_imports_a_private_name_of_another() -> None:
    found = [
        f"{name} imports {target}.{imported}"
        for name, path in modules()
        for target, names in imports(name, path)
        for imported in names
        if imported.startswith("_") and not imported.startswith("__")
    ]
    assert not found, "\n".join(found)


def test_no_module_is_over_400_lines() -> None:
    long = [
        f"{name}: {n} lines"
        for name, path in modules()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    ]
    assert not long, "\n".join(long)


def test_flow_options_are_the_config_fields() -> None:
    """``Flow(**options)`` is typed by ``FlowOptions``: it lists every ``FlowConfig`` field."""
    assert set(FlowOptions.__annotations__) == {f.name for f in fields(FlowConfig)} - {"url"}


def test_handler_options_are_written_once() -> None:
    """The ``on_*`` decorators take ``**options`` typed by the per-kind TypedDicts, which
    together list every ``HandlerOptions`` field (its defaults and docs are there, once)."""
    keys = set().union(*(set(options.__annotations__) for options in KIND_OPTIONS.values()))
    assert keys == {f.name for f in fields(HandlerOptions)}


def test_every_cited_doc_section_exists() -> None:
    """Code cites the project's docs by section (``docs/design.md, "Keys"``): each exists."""
    import re

    cite = re.compile(r'docs/(\w+)\.md,?\s+(?:#\s*)?"([^"]+)"')
    missing = []
    for path in [*PACKAGE.rglob("*.py"), *PACKAGE.rglob("*.lua")]:
        for doc, section in cite.findall(path.read_text()):
            text = (PACKAGE.parent / "docs" / f"{doc}.md").read_text()
            if f"\n## {section}\n" not in text:
                missing.append(f"{path.name}: docs/{doc}.md has no section {section!r}")
    assert not missing, "\n".join(sorted(set(missing)))


def test_no_reference_outside_the_repository() -> None:
    """What the code relies on is explained in docs/, never in a file outside the repo."""
    for path in [*PACKAGE.rglob("*.py"), *PACKAGE.rglob("*.lua")]:
        assert "REDIS-NOTES" not in path.read_text(), path


def test_no_merge_conflict_markers() -> None:
    """Many branches merge here: a conflict left in a committed file is caught, not shipped."""
    root = PACKAGE.parent
    found = []
    for folder in ("redisflow", "tests", "docs", "examples", "benchmarks", ".ci"):
        for path in (root / folder).rglob("*"):
            if (
                path.is_file()
                and path.suffix in (".py", ".md", ".lua", ".toml", "")
                and (".venv" not in path.parts)
            ):
                text = path.read_text(errors="replace")
                if any(m in text for m in ("\n<<<<<<< ", "\n>>>>>>> ")):
                    found.append(str(path.relative_to(root)))
    for name in ("README.md", "pyproject.toml", "Makefile"):
        text = (root / name).read_text()
        if "\n<<<<<<< " in text or "\n>>>>>>> " in text:
            found.append(name)
    assert not found, found
