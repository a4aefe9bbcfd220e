"""The package's shape, as docs/architecture.md, "How a request flows", promises it.

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


# Lowest first. A module may import from its own layer or a lower one, never from a higher one
# (docs/architecture.md, "How a request flows", shows the same table).
LAYERS = (
    ("gateway.memo", "gateway.parsers", "gateway.redirects", "gateway.peers", "gateway.sim", "gateway.redisurl",
     "gateway.bounded"),
    ("gateway.config", "gateway.errors", "gateway.security", "gateway.statedir"),
    ("gateway.ops", "gateway.shared", "gateway.sharedtier"),
    ("gateway.identity", "gateway.tenancy"),
    ("gateway.tokens",),
    ("gateway.delivery",),
    ("gateway", "gateway.admin", "gateway.serving", "gateway.__main__"),
)


def layer_of(module: str) -> int:
    """The layer of the longest prefix in LAYERS that names ``module`` or a package above it."""
    best, found = -1, None
    for rank, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, found = len(name), rank
    assert found is not None, f"{module} is in no layer: add it to LAYERS"
    return found


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{name} (layer {layer_of(name)}) imports {target} (layer {layer_of(target)})"
                  for name, targets in graph.items() for target in targets if layer_of(target) > layer_of(name))


def test_no_import_runs_back_up_the_layers():
    assert upward_imports(import_graph()) == []


def test_the_layer_check_finds_an_upward_import():
    graph = import_graph()
    graph["gateway.ops.metrics"].add("gateway.tokens.breaker")  # a leaf reaching up into a stage
    graph["gateway.peers"].add("gateway.admin.health")
    assert upward_imports(graph) == [
        "gateway.ops.metrics (layer 2) imports gateway.tokens.breaker (layer 4)",
        "gateway.peers (layer 0) imports gateway.admin.health (layer 6)"]


def test_every_module_has_a_layer():
    for name in modules():
        layer_of(name)


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
    # gunicornlog.py names gunicorn's stderr StreamHandler only to take it away (its lines come to ours).
    assert in_files(grep(r"logging\.\w*Handler\b|Handler\(\w*writer|QueueListener\(")) == {
        "gateway/ops/logwriter.py", "gateway/ops/gunicornlog.py"}
    assert grep(r"logging\.\w*Handler\(") == []  # and makes none
    assert grep(r"sys\.stdout\.write|sys\.stderr\.write") == []


def test_one_redis_client():
    assert len(grep(r"redis\.Redis(\.from_url)?\(")) == 1
    assert in_files(grep(r"^\s*import redis|from redis")) == {"gateway/sharedtier.py"}


def test_a_gateway_without_redis_or_jwt_sign_in_loads_neither_redis_py_nor_cryptography(tmp_path):
    """redis-py weighs about 8 MB per worker and PyJWT's cryptography about 9 (docs/performance.md,
    "Memory"): loaded only for a Redis URL, or a sign-in mode that verifies JWTs."""
    import os
    import subprocess
    import sys

    from conftest import API_KEY, API_SECRET, DATA, SECRET_KEY

    state = tmp_path / "state"
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "ZIPTEAMS_API_KEY": API_KEY,
           "ZIPTEAMS_API_SECRET": API_SECRET, "GATEWAY_SECRET_KEY": SECRET_KEY, "GATEWAY_STATE_DIR": str(state),
           "GATEWAY_TENANTS_FILE": str(DATA / "tenants.toml"), "GATEWAY_LOG_LEVEL": "warning"}
    code = ("import sys, wsgi; print(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('redis', 'jwt', 'cryptography', 'authlib')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_one_jwt_library():
    """PyJWT for everything the gateway itself signs, verifies or reads; joserfc only inside Authlib.

    The one exception is a key, not a JWT: from Authlib 1.7 its PrivateKeyJWT takes the client's
    private key as a joserfc key object, which idp.py imports from ``joserfc.jwk`` and hands over.
    """
    assert grep(r"^\s*(from|import) (jose|python_jose|jwcrypto|authlib\.jose)\b") == []
    assert grep(r"^\s*(from|import) joserfc") == ["gateway/identity/idp.py:" + str(line) for line in
                                                     joserfc_import_lines()]
    assert joserfc_import_lines(), "idp.py no longer imports joserfc.jwk: update this test and docs/architecture.md"
    assert in_files(grep(r"^\s*(from|import) jwt\b")) >= {"gateway/identity/assertions.py"}
    requirements = (ROOT / "requirements.txt").read_text().lower()
    assert "pyjwt" in requirements and "joserfc" not in requirements


def joserfc_import_lines() -> list[int]:
    """Lines of idp.py that import from joserfc, all of them ``from joserfc.jwk import`` key classes."""
    lines = (PACKAGE / "identity" / "idp.py").read_text().splitlines()
    found = [n for n, line in enumerate(lines, 1) if re.match(r"\s*(from|import) joserfc", line)]
    assert all(re.match(r"\s*from joserfc\.jwk import (ECKey|RSAKey)(, (ECKey|RSAKey))*$", lines[n - 1])
               for n in found), "joserfc may give us key objects for Authlib, nothing else"
    return found


# --- Other code's insides are not ours (STYLE.md): no private names of anything but self/cls. ---

# Underscored by convention only, and documented as public: werkzeug's LocalProxy unwrapping and
# the named-tuple methods (underscored so they cannot clash with field names).
PUBLIC_UNDERSCORED = frozenset({"_get_current_object", "_replace", "_asdict", "_fields", "_field_defaults",
                                "_make"})


# Modules a package does not document, though their names carry no underscore.
UNDOCUMENTED_MODULES = {"prometheus_client.mmap_dict": "prometheus_client's multiprocess file format"}


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__")) \
        and name not in PUBLIC_UNDERSCORED


def import_map(tree: ast.Module) -> dict[str, str]:
    """Local name -> the dotted name it stands for; relative imports are the gateway's own."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    names[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    names[top] = top
        elif isinstance(node, ast.ImportFrom):
            base = "gateway" if node.level else node.module or ""
            for alias in node.names:
                names[alias.asname or alias.name] = f"{base}.{alias.name}"
    return names


def dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = dotted(node.value)
        return inner and f"{inner}.{node.attr}"
    return None


def load(name: str):
    """The object a dotted name such as ``logging.handlers.QueueListener`` names (ImportError if none)."""
    import builtins
    import importlib

    parts = name.split(".")
    if len(parts) == 1:
        return getattr(builtins, name)
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:]:
            obj = getattr(obj, part)
        return obj
    raise ImportError(name)


def foreign_private_names(base) -> dict[str, str]:
    """Non-public names (methods, class and instance attributes) that ``base`` has from code that is
    not the gateway's, each with the class it comes from."""
    import inspect

    found = {}
    for klass in reversed(getattr(base, "__mro__", ())):
        if (klass.__module__ or "").split(".")[0] in ("gateway", "builtins"):
            continue
        owner = f"{klass.__module__}.{klass.__qualname__}"
        found.update((n, owner) for n in vars(klass) if is_private(n))
        try:
            source = ast.parse(inspect.cleandoc("\n" + inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue  # no source (a C type): its dict is all there is
        found.update((n.attr, owner) for n in ast.walk(source) if isinstance(n, ast.Attribute)
                     and isinstance(n.value, ast.Name) and n.value.id == "self" and is_private(n.attr))
    return found


def private_uses(source: str, filename: str) -> list[str]:
    """``file:line: what`` for every use of another module's or library's non-public names."""
    tree = ast.parse(source)
    names = import_map(tree)
    local_classes = {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
    found = []

    def report(node, what):
        found.append(f"{filename}:{node.lineno}: {what}")

    def base_names(cls: ast.ClassDef) -> dict[str, str]:
        inherited = {}
        for base in cls.bases:
            name = dotted(base)
            if name is None or name.split(".")[0] in local_classes:
                continue  # our own class in this module: checked where it is defined
            head, _, rest = name.partition(".")
            full = names.get(head, head) + (f".{rest}" if rest else "")
            try:
                inherited.update(foreign_private_names(load(full)))
            except (ImportError, AttributeError):
                report(cls, f"base class {name} could not be imported to check what it keeps private")
        return inherited

    def visit(node, inherited: dict[str, str]):
        if isinstance(node, ast.ClassDef):
            inherited = base_names(node)
            for item in node.body:
                defined = [item.name] if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) else \
                    [t.id for t in getattr(item, "targets", [getattr(item, "target", None)]) if isinstance(t, ast.Name)]
                for name in defined:
                    if name in inherited:
                        report(item, f"{node.name}.{name} overrides non-public {inherited[name]}.{name}")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            module = node.module or "" if isinstance(node, ast.ImportFrom) else ""
            modules = [module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            for mod in modules:
                if any(is_private(part) for part in mod.split(".")):
                    report(node, f"imports from private module {mod}")
                elif mod in UNDOCUMENTED_MODULES:
                    report(node, f"imports from {mod}, undocumented: {UNDOCUMENTED_MODULES[mod]}")
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if is_private(alias.name):
                        report(node, f"imports non-public {alias.name} from {'.' * node.level}{module}")
        elif isinstance(node, ast.Attribute) and is_private(node.attr):
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                if node.attr in inherited:
                    report(node, f"{owner.id}.{node.attr} is non-public {inherited[node.attr]}.{node.attr}")
            elif isinstance(owner, ast.Call) and dotted(owner.func) == "super":
                if node.attr in inherited:
                    report(node, f"super().{node.attr} is non-public {inherited[node.attr]}.{node.attr}")
            else:
                report(node, f"{ast.unparse(owner)}.{node.attr}: non-public attribute of another object")
        elif isinstance(node, ast.Call) and dotted(node.func) in ("getattr", "setattr", "hasattr", "delattr") \
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) \
                and isinstance(node.args[1].value, str) and is_private(node.args[1].value):
            owner = node.args[0]
            if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")) or node.args[1].value in inherited:
                report(node, f"{node.func.id}({ast.unparse(owner)}, {node.args[1].value!r}): non-public attribute")
        for child in ast.iter_child_nodes(node):
            visit(child, inherited)

    visit(tree, {})
    return found


def test_no_private_internals_of_other_code():
    """Nothing in the gateway reads, writes, imports or overrides a name another module keeps private."""
    found = [hit for path in sorted(PACKAGE.rglob("*.py"))
             for hit in private_uses(path.read_text(), str(path.relative_to(ROOT)))]
    assert not found, "non-public names of other code used:\n" + "\n".join(found)


PRIVATE_SNIPPETS = {
    "attribute": ("import logging\nlogging._srcfile = None\n", "logging._srcfile: non-public attribute"),
    "method": ("def f(lock):\n    lock._after_fork()\n", "lock._after_fork: non-public attribute"),
    "getattr": ("def f(h):\n    return getattr(h, '_gunicorn', False)\n", "getattr(h, '_gunicorn')"),
    "private module": ("from concurrent.futures._base import Future\n", "private module concurrent.futures._base"),
    "undocumented module": ("from prometheus_client.mmap_dict import MmapedDict\n", "undocumented"),
    "private module import": ("import prometheus_client._x\n", "private module prometheus_client._x"),
    "private subpackage": ("from urllib3._collections import HTTPHeaderDict\n", "private module urllib3._coll"),
    "private name": ("from urllib3.util.url import _encode_target\n", "non-public _encode_target"),
    "own private name": ("from gateway.identity.oidc import _refuse\n", "non-public _refuse"),
    "override": ("from logging.handlers import QueueListener\nclass L(QueueListener):\n"
                 "    def _monitor(self):\n        pass\n", "L._monitor overrides non-public logging.handlers"),
    "override dotted": ("import logging.handlers\nclass L(logging.handlers.QueueListener):\n"
                        "    def _monitor(self):\n        pass\n", "L._monitor overrides"),
    "foreign base through ours": ("from gateway.sim.server import QuietHandler\nclass H(QuietHandler):\n"
                                  "    def x(self):\n        return self._headers_buffer\n",
                                  "self._headers_buffer is non-public http.server.BaseHTTPRequestHandler"),
    "own names through ours": ("from gateway.identity.session import RememberingSessionInterface as R\n"
                              "class S(R):\n    def _x(self): pass\n    def _get_signing(self): pass\n"
                              "    _monitor = 1\n", None),
    "base instance attribute": ("from logging.handlers import QueueListener\nclass L(QueueListener):\n"
                                "    def stop(self):\n        self._thread = None\n", "self._thread is non-public"),
    "super": ("import socketserver\nclass S(socketserver.BaseServer):\n    def serve(self):\n"
              "        super()._handle_request_noblock()\n", "super()._handle_request_noblock is non-public"),
    "unknown base": ("from nowhere import Base\nclass C(Base):\n    pass\n", "could not be imported"),
}


@pytest.mark.parametrize("kind", sorted(PRIVATE_SNIPPETS))
def test_the_private_check_reports_each_kind(kind):
    source, expected = PRIVATE_SNIPPETS[kind]
    found = private_uses(source, "snippet.py")
    if expected is None:
        assert found == []
    else:
        assert len(found) == 1 and found[0].startswith("snippet.py:") and expected in found[0], found


def test_the_private_check_allows_own_and_documented_names():
    source = ("from flask import g\nfrom typing import NamedTuple\nimport logging\n"
              "class P(NamedTuple):\n    x: int\n"
              "class H(logging.Handler):\n    def __init__(self):\n        super().__init__()\n"
              "        self._mine = 1\n    def _ours(self):\n        return self._mine\n"
              "    @classmethod\n    def make(cls):\n        return cls._ours\n"
              "def f(p):\n    ctx = g._get_current_object()\n    return p._replace(x=1)._asdict(), P._fields, ctx\n"
              "from __future__ import annotations\n")
    assert private_uses(source, "snippet.py") == []
