"""The engine's user-facing error: one line saying what is wrong and what to do."""


class EvoError(Exception):
    pass
