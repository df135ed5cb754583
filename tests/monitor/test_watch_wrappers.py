"""gradlens.watch on wrapped models: DataParallel, DistributedDataParallel, FSDP and
torch.compile, alone and nested either way.

Names, layers, ``group_depth`` and ``include=``/``exclude=`` work on the names of the
model inside the wrapper, so a wrapped run lines up with an unwrapped one. The
reference is the same model (same seed, same data) watched without a wrapper.
DataParallel runs on CPU without device ids (it then just calls the model); DDP and
FSDP run in this process in a 1-rank gloo group (a FileStore under tmp).
"""

from __future__ import annotations

import gc
import warnings
from collections import OrderedDict

import pytest
import torch
import torch.distributed as dist
from torch import nn

import gradlens
from watch_helpers import train

try:
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy
except ImportError:  # torch built without distributed
    FSDP = None

DDP = nn.parallel.DistributedDataParallel
HAS_GLOO = dist.is_available() and dist.is_gloo_available()


def _fsdp(model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FSDP1 deprecation; sharding on 1 rank
        # nested: the root and every Linear get a unit, so "_fsdp_wrapped_module" also sits mid-path
        return FSDP(
            model, device_id=torch.device("cpu"), use_orig_params=True, auto_wrap_policy=ModuleWrapPolicy({nn.Linear})
        )


def _compiled(model):
    return torch.compile(model, backend="eager")


_needs_gloo = pytest.mark.skipif(not HAS_GLOO, reason="torch.distributed with gloo is unavailable")
#: id -> (wrap the model, needs the process group)
WRAPPERS = [
    pytest.param((nn.DataParallel, False), id="DataParallel"),
    pytest.param((lambda m: nn.DataParallel(_compiled(m)), False), id="DataParallel-of-compiled"),
    pytest.param((DDP, True), id="DDP", marks=_needs_gloo),
    pytest.param((lambda m: DDP(_compiled(m)), True), id="DDP-of-compiled", marks=_needs_gloo),
    pytest.param((lambda m: _compiled(DDP(m)), True), id="compiled-DDP", marks=_needs_gloo),
    pytest.param(
        (_fsdp, True), id="FSDP-nested",
        marks=[_needs_gloo, pytest.mark.skipif(FSDP is None, reason="FSDP unavailable")],
    ),
]


def encdec(seed: int = 0) -> nn.Sequential:
    """enc (fc1 Linear, relu, fc2 Linear), act (Tanh), dec (Linear): two levels of names."""
    torch.manual_seed(seed)
    enc = nn.Sequential(OrderedDict(fc1=nn.Linear(6, 8), relu=nn.ReLU(), fc2=nn.Linear(8, 8)))
    return nn.Sequential(OrderedDict(enc=enc, act=nn.Tanh(), dec=nn.Linear(8, 3)))


@pytest.fixture(scope="module")
def process_group(tmp_path_factory):
    store = dist.FileStore(str(tmp_path_factory.mktemp("pg") / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    yield
    gc.collect()  # free the tests' DDP models (reference cycles) while the group lives (see watch_helpers)
    dist.destroy_process_group()


@pytest.fixture(params=WRAPPERS)
def wrap(request):
    fn, needs_group = request.param
    if needs_group:
        request.getfixturevalue("process_group")
    return fn


def _run(model, steps=2, **options):
    """Watch ``model`` for ``steps`` SGD steps; the monitor's dataframe and last record."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradlens.watch(model, opt, **options) as mon:
        train(model, opt, steps)
    return mon.dataframe(), mon.records()[-1]


def test_names_and_values_equal_the_unwrapped_models(wrap):
    plain_df, plain_rec = _run(encdec())
    df, rec = _run(wrap(encdec()))
    assert sorted(df.param.unique()) == sorted(n for n, _ in encdec().named_parameters())
    assert df[["step", "param", "layer"]].values.tolist() == plain_df[["step", "param", "layer"]].values.tolist()
    assert df.grad_norm.tolist() == pytest.approx(plain_df.grad_norm.tolist(), rel=1e-5)
    assert rec.layers == plain_rec.layers == ["enc.fc1", "enc.fc2", "dec"]


@pytest.mark.parametrize("activations", [False, 1], ids=["grads", "activations"])
def test_group_depth_1_gives_the_unwrapped_models_layers(wrap, activations):
    model = wrap(encdec())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "gradlens.watch.activations=True. is unavailable", RuntimeWarning)
        df, rec = _run(model, group_depth=1, activations=activations)
    _, plain_rec = _run(encdec(), group_depth=1, activations=activations)
    assert set(df.layer) == {"enc", "dec"}
    assert set(rec.stats["grad_norm"]) == set(plain_rec.stats["grad_norm"]) == {"enc", "dec"}
    # traced layers (activations; off for a compiled root) are named as in the plain run
    assert set(rec.layers) <= set(plain_rec.layers) == ({"enc", "act", "dec"} if activations else {"enc", "dec"})


@pytest.mark.parametrize(
    "options, expected",
    [
        pytest.param(
            {"include": "enc.*"}, ["enc.fc1.bias", "enc.fc1.weight", "enc.fc2.bias", "enc.fc2.weight"], id="include"
        ),
        pytest.param(
            {"include": "enc", "exclude": "*.bias"}, ["enc.fc1.weight", "enc.fc2.weight"], id="include-exclude"
        ),
        pytest.param({"exclude": ["enc.*", "dec.bias"]}, ["dec.weight"], id="exclude"),
    ],
)
def test_include_exclude_without_the_wrapper_prefix(wrap, options, expected):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # these patterns match: no warning
        df, _ = _run(wrap(encdec()), **options)
    assert sorted(df.param.unique()) == expected


@pytest.mark.parametrize(
    "options, shown",
    [
        pytest.param({"include": "module.enc*"}, "include=['module.enc*']", id="include-old-ddp-prefix"),
        pytest.param({"include": []}, "include=[]", id="include-empty"),
        pytest.param(
            {"include": "enc.*", "exclude": "enc*"}, "include=['enc.*'], exclude=['enc*']", id="include-exclude"
        ),
        pytest.param({"exclude": "*"}, "exclude=['*']", id="exclude-all"),
    ],
)
@pytest.mark.parametrize("wrapped", [False, True], ids=["plain", "DataParallel"])
def test_patterns_matching_no_parameter_warn_and_training_goes_on(options, shown, wrapped):
    model = nn.DataParallel(encdec()) if wrapped else encdec()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(UserWarning, match="leaves none of the model's parameters") as caught:
        mon = gradlens.watch(model, opt, **options)
    ours = [w for w in caught if "gradlens" in str(w.message)]
    assert len(ours) == 1
    assert ours[0].filename == __file__  # points at the watch() call
    msg = str(ours[0].message)
    assert shown in msg
    assert "'enc.fc1.weight', 'enc.fc1.bias', 'enc.fc2.weight', 'enc.fc2.bias', 'dec.weight'" in msg  # the first 5
    assert "(6 in all)" in msg
    assert ("'module.'" in msg) == wrapped  # the hint about the dropped prefix
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # training: no further warning, no error
        train(model, opt, 2)
    mon.close()
    assert len(mon.dataframe()) == 0


def test_patterns_matching_a_frozen_parameter_do_not_warn():
    # The warning is about names: a pattern that names a parameter is not a typo.
    model = encdec()
    model.dec.requires_grad_(False)
    opt = torch.optim.SGD(model.enc.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*leaves none", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*recorded no step", category=UserWarning)
        gradlens.watch(model, opt, include="dec").close()
