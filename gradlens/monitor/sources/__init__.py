"""Statistics sources: one file per family (see :mod:`.base` for the interface).

* :mod:`.gradients`: ||g||, max|g|, ||w||, non-finite counts (default);
* :mod:`.updates`: update-to-weight ratios;
* :mod:`.activations`: activation statistics, output gradients, NaN origin;
* :mod:`.loss`: the observed loss;
* :mod:`.output`: the model-output signals (the root's output and dL/d(output), default).
"""
