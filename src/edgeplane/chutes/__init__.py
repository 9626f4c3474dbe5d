"""Chutes: long-lived container services on one node, as ParaDrop has them.

``manifest.py`` is the ``chute.yaml`` model, ``changes.py`` the node's change queue with
rollback, ``node.py`` the chutes' lifecycle on runc, ``edgeapi.py`` the node-local API;
``network.py`` and ``resources.py`` their networking and resource enforcement;
``catalog.py`` the chute store's rules (references, digests, the latest version).
"""
