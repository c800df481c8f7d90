"""The errors KTT raises for a user's mistake (a bad value, a missing file, an unreachable server).

The command line prints these as one line; any other exception is a bug and keeps its
traceback. Each subclasses the built-in a caller would expect, so ``except ValueError`` works.
"""


class UserError(Exception):
    """A mistake in what the user gave KTT, explained by the message alone."""


class BadValue(UserError, ValueError):
    """A value (option, hyperparameter, file content, request) that KTT cannot use."""


class NotFound(UserError, FileNotFoundError):
    """A file, dataset, run, checkpoint or registered model that does not exist."""


class UnknownName(UserError, KeyError):
    """A name (model, dataset column) that is not among the known ones."""

    def __str__(self):  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class Unavailable(UserError, RuntimeError):
    """Something outside KTT that it needs and cannot use: a server, an environment, a folder."""


def missing_dependency(e: ModuleNotFoundError) -> str | None:
    """The one-line explanation of a third-party module missing from the running Python (KTT's
    environment is not the active one), or None when the missing module is KTT's own (a bug)."""
    name = (e.name or "").split(".")[0]
    if not name or name in ("ktt", "models"):
        return None
    return (f"this Python has no module named {name!r}: KTT's environment is not the active one. "
            "Run `make env` once, then `source .venv/bin/activate` (or call `.venv/bin/ktt`; "
            "`mlflow run` needs the environment active, as `make run` does)")
