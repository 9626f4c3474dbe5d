"""The pure job/workflow engine: ``build_graph`` validates a request into nodes and
``evaluate`` decides what starts, is skipped or is cancelled next. No I/O, no clock."""

from edgeplane.workflows.engine import Decision, evaluate, resolve_inputs
from edgeplane.workflows.graph import MODES, RUN_IF, Node, build_graph, topological_order

__all__ = [
    "MODES",
    "RUN_IF",
    "Decision",
    "Node",
    "build_graph",
    "evaluate",
    "resolve_inputs",
    "topological_order",
]
