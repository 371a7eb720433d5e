"""Exceptions whose message is meant for the user as it is (one line per problem, no traceback needed)."""

from __future__ import annotations

from collections.abc import Iterable


class ConfigError(ValueError):
    """Invalid campaign or experiment configuration. Each problem is one line naming the key, the value and what is
    allowed; a file with several problems raises one ConfigError listing them all (``problems``), so that one run
    names everything to fix."""

    def __init__(self, message: str | list[str] = ""):
        problems = [message] if isinstance(message, str) else [p for p in message if p]
        self.problems: list[str] = problems or [""]
        super().__init__("\n".join(self.problems))

    def located(self, where: str) -> ConfigError:
        """The same problems, each prefixed with ``where`` (a file) unless it already names its file."""
        return ConfigError(
            [p if not where or p.startswith(("file '", f"{where}:")) else f"{where}: {p}" for p in self.problems]
        )


def did_you_mean(word: object, choices: Iterable[object], cutoff: float = 0.6, ignore_case: bool = False) -> str:
    """`` (did you mean 'X'?)`` for the choice closest to ``word`` (difflib's ratio at least ``cutoff``), else
    nothing; never ``word`` itself. With ``ignore_case`` the match ignores case and names the choice as it is
    spelled."""
    match = closest(word, choices, cutoff, ignore_case)
    return f" (did you mean '{match}'?)" if match is not None else ""


def closest(word: object, choices: Iterable[object], cutoff: float = 0.6, ignore_case: bool = False) -> str | None:
    """The choice of :func:`did_you_mean`, as it is spelled, or None."""
    import difflib

    given = str(word)
    spelled = {}
    for choice in choices:
        if str(choice) != given:  # never suggest what was given: it was refused for another reason
            spelled[str(choice).lower() if ignore_case else str(choice)] = str(choice)
    word = given.lower() if ignore_case else given
    match = difflib.get_close_matches(word, list(spelled), n=1, cutoff=cutoff)
    return spelled[match[0]] if match else None


def problem_lines(exc: ConfigError, lead: str) -> list[str]:
    """The lines to print for ``exc``: ``lead`` (e.g. "Configuration error: ") before each problem."""
    return [f"{lead}{p}" for p in exc.problems]


class MeasurementError(RuntimeError):
    """A measurement could not be taken in a way that yields a trustworthy number."""
