"""The worker: registration, heartbeats, running tasks, reporting events."""

from edgeplane.worker.agent import ArtifactCache, WorkerAgent, WorkerOptions, WorkerStats

__all__ = ["ArtifactCache", "WorkerAgent", "WorkerOptions", "WorkerStats"]
