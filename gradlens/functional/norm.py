"""gradlens.functional.norm (to be filled in)."""

__all__: list = []
