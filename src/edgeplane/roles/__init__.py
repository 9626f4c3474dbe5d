"""The processes edgeplane runs: ``up``, ``manager``, ``worker``."""
