"""The cluster manager: task lifecycle, dispatch, liveness."""

from edgeplane.manager.service import Manager, ManagerStats

__all__ = ["Manager", "ManagerStats"]
