"""gradlens.functional.sparse (to be filled in)."""

__all__: list = []
