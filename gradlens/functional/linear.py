"""gradlens.functional.linear (to be filled in)."""

__all__: list = []
