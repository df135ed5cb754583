"""gradlens.functional.attention (to be filled in)."""

__all__: list = []
