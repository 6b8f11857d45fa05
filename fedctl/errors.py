"""The one exception type the CLI turns into `Error: …` / `Hint: …` and exit code 1."""

from __future__ import annotations


class FedctlError(Exception):
    """A user-facing error: what went wrong, naming the file or key, and how to fix it."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"
