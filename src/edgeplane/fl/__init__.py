"""Federated learning: experiments of rounds, each training one global model on k workers.

The pure core (no I/O): ``spec`` (the experiment a user submits), ``updates`` (the wire
format of a client's update), ``aggregate`` (FedAvg, median, trimmed mean in numpy) and
``rounds`` (the round state machine, on an injected clock).
"""
