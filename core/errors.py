"""Exceptions with messages meant for users: one line naming the file, row or option."""


class HpatkError(Exception):
    """An error the CLI prints as one line and exits 1 on."""


class RegistryError(HpatkError):
    """Unknown or duplicate plugin names, or a plugin that cannot be used."""


class DataError(HpatkError):
    """Bad input data: a file, row, Id, stain or label that cannot be used."""


def first_line(exc: BaseException) -> str:
    """An exception's message on one line (its first, at most 300 characters), or its
    type's name when it has no message: what one-line errors quote."""
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def typed_line(exc: BaseException) -> str:
    """An exception on one line for a message that wraps it: ``Type: first line`` (the
    type alone when there is no message); an :class:`HpatkError`'s line without its type."""
    line = first_line(exc) if str(exc).strip() else ""
    if isinstance(exc, HpatkError):
        return line
    return f"{type(exc).__name__}: {line}".rstrip(": ")
