"""Exceptions with messages meant for users: one line naming the file, row or option."""


class HpatkError(Exception):
    """An error the CLI prints as one line and exits 1 on."""


class RegistryError(HpatkError):
    """Unknown or duplicate plugin names, or a plugin that cannot be used."""


class DataError(HpatkError):
    """Bad input data: a file, row, Id, stain or label that cannot be used."""
