"""Chutes (as ParaDrop has them): long-lived services an owner installs on one node.

``manifest.py`` is the ``chute.yaml`` model, ``changes.py`` the node's change queue with
rollback, ``node.py`` the chutes' lifecycle on runc, ``edgeapi.py`` the node-local API.
"""
