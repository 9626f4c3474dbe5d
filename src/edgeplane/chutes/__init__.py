"""Chutes: long-lived container services on one node, as ParaDrop has them."""
