"""gradlens.functional.dropout (to be filled in)."""

__all__: list = []
