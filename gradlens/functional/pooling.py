"""gradlens.functional.pooling (to be filled in)."""

__all__: list = []
