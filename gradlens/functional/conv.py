"""gradlens.functional.conv (to be filled in)."""

__all__: list = []
