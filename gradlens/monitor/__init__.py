"""Monitoring: :func:`watch` attaches to a model and records gradient statistics.

Data flows one way, one room per stage:

* :mod:`.attach`: every hook gradlens puts anywhere (optimizer step pre/post
  hooks, the ``zero_grad`` tap that also catches steps a GradScaler skipped, root
  forward hooks), owned by a ``HookSet``;
* :mod:`.layout`: parameter and layer names (wrappers stripped, include/exclude,
  ``group_depth``), layer order, which parameters each optimizer owns;
* :mod:`.collect`: the step cycle (logged steps, the optimizers of a step);
* :mod:`.sources`: one file per family of statistics (gradients, updates,
  activations, loss), each writing named slots into
* :mod:`.packet`: the one device packet of a logged step, copied to the host once
  per device (non-blocking into pinned memory on GPU, read when published);
* :mod:`.publish`: the queue, batches, records, sinks and diagnosis;
* :mod:`.monitor`: the public :class:`Monitor` and :func:`watch`, only wiring
  (:mod:`.options` validates ``watch``'s arguments).

:mod:`.stats` holds the fused device kernels the sources call.
"""

from gradlens.monitor.monitor import Monitor, watch

__all__ = ["watch", "Monitor"]
