"""Errors of the optimizer: each message names the model and what is wrong."""


class OptimizeError(Exception):
    """The model cannot be optimised as asked; the message says why."""
