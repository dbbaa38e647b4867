"""How the command line words a count: "1 run", "3 runs" (one spelling for every message that counts)."""


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and ``noun``, in the plural (``noun + "s"`` unless ``plural`` is given) for any ``n`` but 1."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
