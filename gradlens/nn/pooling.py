"""gradlens.nn.pooling (to be filled in)."""

import torch

__all__: list = []

#: torch module class -> gradlens twin class, collected by gradlens.mirror.
TWINS: dict = {}
