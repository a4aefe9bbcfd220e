"""The package's shape, as the README's "How a request flows" promises it.

No import cycles (function-level imports count too), no module over 300 lines except
``config.py``, a docstring on every package, and one mechanism per job: one cache
abstraction, one log path, one Redis client, one JWT library.
"""
import ast
import re
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGE = ROOT / "gateway"
MAX_LINES = 300


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The gateway modules ``name`` imports anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    edges = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            edges.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parent + ([base] if base else []))
            for alias in node.names:
                target = f"{base}.{alias.name}"
                if target in known:
                    edges.add(target)  # a submodule
                elif base in known:
                    edges.add(base)
    edges.discard(name)
    return edges


def import_graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(name, path, set(found)) for name, path in found.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, result = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return result


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_cycle_check_finds_a_cycle():
    graph = import_graph()
    assert cycles(graph) == []
    graph["gateway.identity.users"].add("gateway.identity.auth")  # auth already imports users
    assert cycles(graph) != []


def test_requests_flow_one_way_through_the_packages():
    """identity and tenancy know nothing of tokens or delivery; tokens nothing of delivery."""
    never = {"gateway.identity": ("gateway.delivery", "gateway.tokens"),
             "gateway.tenancy": ("gateway.delivery", "gateway.tokens", "gateway.identity"),
             "gateway.tokens": ("gateway.delivery", "gateway.identity")}
    wrong = [(name, target) for name, targets in import_graph().items() for target in targets
             for package, forbidden in never.items()
             if name.startswith(package + ".") and target.startswith(forbidden)]
    assert wrong == []


def test_the_rules_module_is_pure():
    assert not {t for t in import_graph()["gateway.tenancy.rules"] if t != "gateway.memo"}
    assert "flask" not in (PACKAGE / "tenancy" / "rules.py").read_text()


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_module_over_300_lines(name):
    path = modules()[name]
    lines = len(path.read_text().splitlines())
    if path.name == "config.py":
        # Only its settings table may make it longer: everything else counts.
        text = path.read_text()
        table = text[text.index("SETTINGS: tuple[Setting, ...] = ("):text.index("\n)\n", text.index("SETTINGS:"))]
        lines -= len(table.splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines"


@pytest.mark.parametrize("init", sorted(PACKAGE.rglob("__init__.py")), ids=lambda p: str(p.parent.name))
def test_every_package_says_what_it_owns(init):
    assert ast.get_docstring(ast.parse(init.read_text())), f"{init} has no docstring"


def grep(pattern: str) -> list[str]:
    regex = re.compile(pattern)
    return sorted(f"{path.relative_to(ROOT)}:{n}" for path in PACKAGE.rglob("*.py")
                  for n, line in enumerate(path.read_text().splitlines(), 1) if regex.search(line))


def in_files(hits: list[str]) -> set[str]:
    return {hit.split(":")[0] for hit in hits}


def test_one_cache_abstraction():
    assert grep(r"lru_cache|functools\.cache\b|^\s*(import|from) cachetools|threading\.local") == []
    assert in_files(grep(r"^class Memo\b")) == {"gateway/memo.py"}
    # The token cache holds its entries in a Memo too; no other module defines a cache of its own.
    assert in_files(grep(r"^class \w*(Memo|Cache|Lru|LRU)\b")) == {"gateway/memo.py", "gateway/tokens/cache.py"}
    assert "cachetools" not in (ROOT / "requirements.txt").read_text()


def test_one_log_path():
    """Handlers are made in one module; nothing writes log lines to stdout by itself."""
    assert in_files(grep(r"logging\.\w*Handler\b|Handler\(\w*writer|QueueListener\(")) == {"gateway/ops/logs.py"}
    assert grep(r"sys\.stdout\.write|sys\.stderr\.write") == []


def test_one_redis_client():
    assert len(grep(r"redis\.Redis(\.from_url)?\(")) == 1
    assert in_files(grep(r"^\s*import redis|from redis")) == {"gateway/shared.py"}


def test_one_jwt_library():
    assert grep(r"joserfc|^\s*(from|import) jose\b|python_jose|jwcrypto") == []
    requirements = (ROOT / "requirements.txt").read_text().lower()
    assert "pyjwt" in requirements and "joserfc" not in requirements
