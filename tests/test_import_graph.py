"""The product packages form an acyclic import graph, measured with grimp.

A cycle makes import order matter, hides layering mistakes and breaks partial installs (the
edge extra); ``TYPE_CHECKING`` imports count too, since they tie the modules' designs just
as tightly.
"""

from __future__ import annotations

import grimp
import pytest

PRODUCT_PACKAGES = (
    "fedge",
    "coordinator",
    "edge_client",
    "quantize",
    "cloud_trainer",
    "simulations",
    "pipelines",
)


def _import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        # Iterative Tarjan: (module, iterator over its imports) frames.
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            module, successors = work[-1]
            advanced = False
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = counter
                    counter += 1
                    stack.append(successor)
                    on_stack.add(successor)
                    imported = sorted(graph.find_modules_directly_imported_by(successor))
                    work.append((successor, iter(imported)))
                    advanced = True
                    break
                if successor in on_stack:
                    low[module] = min(low[module], index[successor])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[module])
            if low[module] == index[module]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == module:
                        break
                self_import = module in graph.find_modules_directly_imported_by(module)
                if len(component) > 1 or self_import:
                    components.append(sorted(component))
    return sorted(components)


def _graph_with(edges: dict[str, set[str]]) -> grimp.ImportGraph:
    graph = grimp.ImportGraph()
    for importer, imported in edges.items():
        graph.add_module(importer)
        for target in imported:
            graph.add_module(target)
            graph.add_import(importer=importer, imported=target)
    return graph


def test_cycle_finder_reports_a_cycle_and_ignores_a_chain() -> None:
    cyclic = _graph_with({"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}, "p.d": {"p.a"}})
    assert _import_cycles(cyclic) == [["p.a", "p.b", "p.c"]]
    chain = _graph_with({"p.a": {"p.b"}, "p.b": {"p.c"}, "p.d": {"p.a", "p.c"}})
    assert _import_cycles(chain) == []


@pytest.fixture(scope="module")
def product_graph() -> grimp.ImportGraph:
    return grimp.build_graph(*PRODUCT_PACKAGES, exclude_type_checking_imports=False)


def test_product_packages_have_no_import_cycle(product_graph: grimp.ImportGraph) -> None:
    assert len(product_graph.modules) > 100  # every package was scanned
    cycles = _import_cycles(product_graph)
    assert cycles == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)
