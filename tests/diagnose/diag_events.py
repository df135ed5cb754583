"""Test helper: write StepRecords as TensorBoard events with the ``_tags`` scheme."""

from __future__ import annotations

import json
import math
from typing import Iterable

from torch.utils.tensorboard import SummaryWriter

from gradlens._record import StepRecord
from gradlens._tags import LAYERS_TAG, LOSS_TAG, layer_tag, param_tag


def write_records(writer: SummaryWriter, records: Iterable[StepRecord], *, layers_text: bool = True) -> None:
    first = True
    for r in records:
        if first and layers_text:
            writer.add_text(LAYERS_TAG, json.dumps(r.layers), r.step)
        first = False
        for stat, values in r.stats.items():
            for name, v in values.items():
                if v is not None and not (isinstance(v, float) and math.isnan(v) and stat == "update_ratio"):
                    writer.add_scalar(layer_tag(stat, name), v, r.step)
        for stat, values in r.param_stats.items():
            for name, v in values.items():
                writer.add_scalar(param_tag(stat, name), v, r.step)
        if r.loss is not None:
            writer.add_scalar(LOSS_TAG, r.loss, r.step)
