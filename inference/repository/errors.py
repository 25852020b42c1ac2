from __future__ import annotations


class RepositoryError(Exception):
    """A model in the repository cannot be served; the message names model and problem."""

    def __init__(self, model: str, problem: str) -> None:
        super().__init__(f"model '{model}': {problem}")
        self.model = model
        self.problem = problem
