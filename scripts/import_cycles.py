"""Import cycles between files of dnalm/ and data_prep/: module-level and function-level imports both count (a
function-level import hides a cycle from Python, not from the reader). Exit status 1 when there is one.

    python scripts/import_cycles.py [--top]   # --top: module-level imports only
"""

import ast
import sys
from pathlib import Path


def module_name(path: Path) -> str:
    parts = list(path.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


files = [p for root in ("dnalm", "data_prep") for p in Path(root).rglob("*.py")]
names = {module_name(p): p for p in files}
graph = {m: set() for m in names}
top_only = "--top" in sys.argv
for m, p in names.items():
    tree = ast.parse(p.read_text())
    nodes = tree.body if top_only else ast.walk(tree)
    for node in nodes:
        targets = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        for t in targets:
            while t and t not in names:
                t = t.rpartition(".")[0]
            if t and t != m and not m.startswith(t + "."):
                graph[m].add(t)
# strongly connected components (Tarjan)
index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]


def strong(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in graph[v]:
        if w not in index:
            strong(w)
            low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop()
            on.discard(w)
            comp.append(w)
            if w == v:
                break
        if len(comp) > 1:
            sccs.append(sorted(comp))


sys.setrecursionlimit(10000)
for v in graph:
    if v not in index:
        strong(v)
print(f"modules: {len(names)}, import cycles: {len(sccs)}")
for c in sccs:
    print("  ", " <-> ".join(c))
sys.exit(1 if sccs else 0)
