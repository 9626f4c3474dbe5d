"""Which federated learning blobs may go (pure): the reference rule.

A model version is kept for as long as its experiment is (users download it). An
accepted update is needed only while its round is open: a manager that restarts, or
takes over, re-aggregates an open round from its stored updates. Once the round closed
(its new version stored in the same write), or was given up, or the experiment ended,
its updates are garbage — unless the same bytes are still referenced: content addressing
makes an update byte-identical to a model version of any experiment, or to an update of
another round still open, one blob.

Safety with several managers (docs/fl.md): only the leading manager's coordinator puts
blobs and writes the experiments referencing them, each put and the write that records
its reference under the coordinator's lock; it prunes under that same lock, reading every
experiment after taking it, so no put can fall between its reading and its delete. The
delete is fenced (``Store.delete_fl_blobs``): a manager that lost the lead deletes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

from edgeplane.fl.state import TERMINAL, Experiment


def referenced(experiments: Iterable[Experiment]) -> set[str]:
    """Every digest still needed: each model version of every experiment, and each
    update of a round still open in a running experiment."""
    keep: set[str] = set()
    for exp in experiments:
        keep.update(exp.versions)
        if exp.state not in TERMINAL:
            for record in exp.rounds:
                if record.state == "open":
                    keep.update(record.update_refs.values())
    return keep


def garbage(experiments: Iterable[Experiment]) -> set[str]:
    """Every update digest of a round no longer open (or of an ended experiment)."""
    out: set[str] = set()
    for exp in experiments:
        for record in exp.rounds:
            if record.state != "open" or exp.state in TERMINAL:
                out.update(record.update_refs.values())
    return out


def prunable(experiments: Iterable[Experiment], candidates: Iterable[str]) -> set[str]:
    """The ``candidates`` no experiment references (``experiments``: all of them)."""
    return set(candidates) - referenced(experiments)
