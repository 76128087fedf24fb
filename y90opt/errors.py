"""Bad input: the one exception type of the library, at the bottom of the house (it imports nothing).

Every refusal of a user's input (a case file, a scenario file, an argument, an output path, a sample count
that cannot fit) raises :class:`InputError` or one of its subclasses. ``str(err)`` is the one line the
command line prints before exiting with status 2: ``<file>: <field>: <message>``.
"""

from __future__ import annotations

__all__ = ["InputError"]


#: Longest message an error carries: a quoted value is shortened in the middle beyond it (a 10 kB value in a
#: case file must not become a 10 kB line).
MAX_MESSAGE = 600


def _one_line(text: str) -> str:
    line = " ".join(str(text).split())
    if len(line) > MAX_MESSAGE:
        half = MAX_MESSAGE // 2 - 3
        line = f"{line[:half]} [...] {line[-half:]}"
    return line


class InputError(ValueError):
    """Bad input, named by file and field.

    Attributes:
        file: the file (or argument) the input came from, e.g. ``case.toml`` or ``--samples``.
        field: the field inside it, e.g. ``liver.perfused_volume_ml`` (``""`` when the whole file is meant).
        message: what is wrong and, where one exists, the fix.

    ``str(err)`` is ``"<file>: <field>: <message>"`` (``"<file>: <message>"`` without a field), always one
    line. Given one argument only, that argument is the whole line (``InputError("--risk: must be in (0, 1)")``).
    """

    def __init__(self, file: str, field: str = "", message: str = ""):
        self.file, self.field, self.message = str(file), str(field), _one_line(message)
        if self.field:
            text = f"{self.file}: {self.field}: {self.message}"
        elif self.message:
            text = f"{self.file}: {self.message}"
        else:
            text = self.file
        super().__init__(_one_line(text))
