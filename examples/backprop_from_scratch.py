"""Backpropagation from scratch: an MLP and an LSTM, every gradient by hand, each checked against torch.

Run:
    python examples/backprop_from_scratch.py            # the full walk-through
    python examples/backprop_from_scratch.py --tiny     # smaller sizes (what the test runs)

What it shows, in order:

1. **MLP forward** through ``gradlens.functional`` (``linear``, ``relu``), keeping every
   layer's pre-activation ``z`` and activation ``a``: the backward pass needs them.
2. **Losses**: cross-entropy (``dL/dlogits = (softmax - onehot) / N``) and MSE
   (``dL/dy = 2 (y - t) / numel``).
3. **Backward, layer by layer**: the incoming gradient ``dL/da``, the local derivative
   ``relu'(z) = 1[z > 0]``, the gradient at ``z``, the weight gradient
   ``dL/dW = (dL/dz)^T a_prev``; each compared with torch autograd on the same model
   written in plain torch, and with gradlens' own hand-written backward.
4. **SGD (momentum) and Adam updates by hand**, step by step beside ``torch.optim``'s.
5. **Vanishing gradients**: the weight-gradient norm per layer of a deep sigmoid MLP
   against a ReLU one.
6. **LSTM**: the forward step by step (gates ``i, f, g, o``, cell ``c``), then backprop
   through time by hand, printing ``‖dL/dh_t‖``, the forget gate (the local derivative
   ``dc_{t-1} = dc_t f_t``) and ``‖dL/dc_t‖`` per step; checked against torch.
7. **Over time**: ``‖dL/dh_t‖`` of a tanh RNN against an LSTM (``hidden_grad_norm=``).

Every check raises on a mismatch; the script ends with ``all checks passed``.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def check(name: str, ours, ref, tol: float = 1e-10) -> float:
    """Max |ours - ref|; raise when it is above ``tol`` (float64 throughout)."""
    err = float((ours - ref).detach().abs().max()) if ours.numel() else 0.0
    if err > tol:
        raise AssertionError(f"{name}: differs from torch by {err:.3g} (tolerance {tol:g})")
    return err


# ------------------------------------------------------------------------ 1-3. the MLP
def mlp_walkthrough(torch, GF, F, sizes, n):
    gen = torch.Generator().manual_seed(0)
    layers = [(torch.randn(o, i, generator=gen, dtype=torch.float64) / i ** 0.5,
               torch.zeros(o, dtype=torch.float64)) for i, o in zip(sizes[:-1], sizes[1:])]
    x = torch.randn(n, sizes[0], generator=gen, dtype=torch.float64)
    labels = torch.randint(0, sizes[-1], (n,), generator=gen)
    target = torch.randn(n, sizes[-1], generator=gen, dtype=torch.float64)
    last = len(layers) - 1

    # 1. forward, keeping z (pre-activation) and a (activation) of every layer
    params = [t.clone().requires_grad_() for wb in layers for t in wb]
    a, zs, acts = x, [], [x]
    for k in range(len(layers)):
        z = GF.linear(a, params[2 * k], params[2 * k + 1])
        a = GF.relu(z) if k < last else z
        zs.append(z)
        acts.append(a)
    out = acts[-1]

    for loss_name in ("cross_entropy", "mse"):
        print(f"\n== MLP {sizes}, ReLU, loss {loss_name} ==")
        # the same model in plain torch: the reference, with every intermediate's gradient kept
        ref_params = [t.clone().requires_grad_() for wb in layers for t in wb]
        r, ref_z, ref_a = x, [], []
        for k in range(len(layers)):
            zk = F.linear(r, ref_params[2 * k], ref_params[2 * k + 1])
            r = torch.relu(zk) if k < last else zk
            zk.retain_grad()
            r.retain_grad()
            ref_z.append(zk)
            ref_a.append(r)
        ref_loss = F.cross_entropy(r, labels) if loss_name == "cross_entropy" else F.mse_loss(r, target)
        ref_loss.backward()

        # 2. the loss and its gradient at the output, by hand
        if loss_name == "cross_entropy":
            loss = GF.cross_entropy(out, labels)
            # dL/dlogits = (softmax(logits) - onehot(y)) / N
            g = (torch.softmax(out.detach(), 1) - F.one_hot(labels, sizes[-1])) / n
        else:
            loss = GF.mse_loss(out, target)
            # dL/dy = 2 (y - t) / numel
            g = 2 * (out.detach() - target) / out.numel()
        check("loss", loss.detach(), ref_loss.detach())
        print(f"loss {float(loss.detach()):.6f} (torch {float(ref_loss.detach()):.6f})")

        # 3. backward, layer by layer, from the output to the input
        print(f"{'layer':<22}{'|dL/da| in':>12}{'local mean':>12}{'|dL/dz|':>11}{'|dL/dW|':>11}{'max|diff|':>11}")
        hand_grads = {}
        for k in reversed(range(len(layers))):
            w = params[2 * k].detach()
            err = check(f"dL/da of layer {k + 1}", g, ref_a[k].grad)
            if k < last:
                # a = relu(z):  local derivative 1[z > 0];  dL/dz = dL/da * 1[z > 0]
                local = (zs[k].detach() > 0).to(g.dtype)
            else:
                local = torch.ones_like(g)  # the output layer has no activation
            gz = g * local
            err = max(err, check(f"dL/dz of layer {k + 1}", gz, ref_z[k].grad))
            # z = a_prev W^T + b:  dL/dW = (dL/dz)^T a_prev,  dL/db = Σ dL/dz,  dL/da_prev = dL/dz W
            dw, db = gz.t() @ acts[k].detach(), gz.sum(0)
            err = max(err, check(f"dL/dW of layer {k + 1}", dw, ref_params[2 * k].grad),
                      check(f"dL/db of layer {k + 1}", db, ref_params[2 * k + 1].grad))
            hand_grads[2 * k], hand_grads[2 * k + 1] = dw, db
            kind = "ReLU" if k < last else "output"
            name = f"{k + 1}: Linear {w.shape[1]}->{w.shape[0]} {kind}"
            print(f"{name:<22}{float(g.norm()):>12.3e}{float(local.mean()):>12.3f}{float(gz.norm()):>11.3e}"
                  f"{float(dw.norm()):>11.3e}{err:>11.1e}")
            g = gz @ w
        # gradlens' own hand-written backward (the Functions' backward) gives the same
        grads = __import__("torch").autograd.grad(loss, params, retain_graph=True)
        for i, gr in enumerate(grads):
            check(f"gradlens backward, parameter {i}", gr, hand_grads[i])
        print("gradlens.functional's backward == the hand computation == torch autograd")
    return layers, x, labels


# ------------------------------------------------------------------------ 4. optimizers
def optimizers(torch, GF, layers, x, labels, steps):
    print(f"\n== SGD (momentum 0.9) and Adam by hand beside torch.optim, {steps} steps ==")

    def loss_grads(params):
        a = x
        for k in range(0, len(params), 2):
            a = GF.linear(a, params[k], params[k + 1])
            if k + 2 < len(params):
                a = GF.relu(a)
        loss = GF.cross_entropy(a, labels)
        return loss, torch.autograd.grad(loss, params)

    for opt_name in ("SGD", "Adam"):
        ours = [t.clone() for wb in layers for t in wb]
        ref = [t.clone().requires_grad_() for wb in layers for t in wb]
        if opt_name == "SGD":
            lr, mu = 0.1, 0.9
            opt = torch.optim.SGD(ref, lr=lr, momentum=mu)
            buf = [None] * len(ours)
        else:
            lr, b1, b2, eps = 1e-2, 0.9, 0.999, 1e-8
            opt = torch.optim.Adam(ref, lr=lr, betas=(b1, b2), eps=eps)
            m = [torch.zeros_like(p) for p in ours]
            v = [torch.zeros_like(p) for p in ours]
        for step in range(1, steps + 1):
            loss, grads = loss_grads([p.requires_grad_() for p in ours])
            ours = [p.detach() for p in ours]
            for i, g in enumerate(grads):
                if opt_name == "SGD":
                    # v = mu v + g;  w = w - lr v   (torch's form: no dampening, v_1 = g)
                    buf[i] = g.clone() if buf[i] is None else mu * buf[i] + g
                    ours[i] = ours[i] - lr * buf[i]
                else:
                    # m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  bias-corrected;  w -= lr m̂ / (sqrt(v̂) + eps)
                    m[i] = b1 * m[i] + (1 - b1) * g
                    v[i] = b2 * v[i] + (1 - b2) * g * g
                    m_hat, v_hat = m[i] / (1 - b1 ** step), v[i] / (1 - b2 ** step)
                    ours[i] = ours[i] - lr * m_hat / (v_hat.sqrt() + eps)
            opt.zero_grad()
            ref_loss, ref_grads = loss_grads(ref)
            for p, g in zip(ref, ref_grads):
                p.grad = g
            opt.step()
            err = max(check(f"{opt_name} step {step}", a, b.detach(), tol=1e-12) for a, b in zip(ours, ref))
            print(f"{opt_name:<5} step {step}: loss {float(loss.detach()):.6f}  max|w_hand - w_torch.optim| {err:.1e}")


# ------------------------------------------------------------------------ 5. vanishing
def vanishing(torch, GF, depth, width, n):
    print(f"\n== vanishing: |dL/dW| per layer, {depth} layers of width {width} (input side first) ==")
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, width, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, width, (n,), generator=gen)
    norms = {}
    for act_name, act, init in (("sigmoid", GF.sigmoid, torch.nn.init.xavier_normal_),
                                ("relu", GF.relu, torch.nn.init.kaiming_normal_)):
        torch.manual_seed(2)
        weights = [init(torch.empty(width, width, dtype=torch.float64)).requires_grad_() for _ in range(depth)]
        a = x
        for k, w in enumerate(weights):
            a = GF.linear(a, w)
            if k < depth - 1:
                a = act(a)
        grads = torch.autograd.grad(GF.cross_entropy(a, labels), weights)
        norms[act_name] = [float(g.norm()) for g in grads]
    print(f"{'layer':>6}{'sigmoid':>12}{'relu':>12}")
    for k in range(depth):
        print(f"{k + 1:>6}{norms['sigmoid'][k]:>12.3e}{norms['relu'][k]:>12.3e}")
    ratio = {name: v[0] / v[-1] for name, v in norms.items()}
    print(f"first/last layer: sigmoid {ratio['sigmoid']:.2e}, relu {ratio['relu']:.2e} "
          "(sigmoid' <= 1/4 shrinks the gradient at every layer)")
    if not ratio["sigmoid"] < ratio["relu"]:
        raise AssertionError("expected the sigmoid net's gradient to shrink more than the ReLU net's")


# ------------------------------------------------------------------------ 6. the LSTM
def lstm_walkthrough(torch, GF, seq, batch, inp, hid):
    print(f"\n== LSTM by hand: {seq} steps, batch {batch}, input {inp}, hidden {hid}; loss = MSE of h_T ==")
    torch.manual_seed(3)
    ref = torch.nn.LSTM(inp, hid).double()
    w_ih, w_hh, b_ih, b_hh = (p.detach().clone() for p in ref._flat_weights)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(seq, batch, inp, generator=gen, dtype=torch.float64)
    target = torch.randn(batch, hid, generator=gen, dtype=torch.float64)

    # forward, step by step, keeping every gate and state (gate order i, f, g, o, as torch)
    h = torch.zeros(batch, hid, dtype=torch.float64)
    c = torch.zeros_like(h)
    kept = []
    for t in range(seq):
        gates = GF.linear(x[t], w_ih, b_ih) + GF.linear(h, w_hh, b_hh)
        i, f, o = (GF.sigmoid(gates[:, k * hid:(k + 1) * hid]) for k in (0, 1, 3))
        g = GF.tanh(gates[:, 2 * hid:3 * hid])
        c_prev, h_prev = c, h
        c = f * c_prev + i * g  # c_t = f c_{t-1} + i g
        h = o * GF.tanh(c)  # h_t = o tanh(c_t)
        kept.append((i, f, g, o, c_prev, c, h_prev))
    loss = GF.mse_loss(h, target)

    # backprop through time by hand
    dh = 2 * (h - target) / h.numel()  # dL/dh_T
    dc = torch.zeros_like(dh)
    dw_ih, dw_hh, db = torch.zeros_like(w_ih), torch.zeros_like(w_hh), torch.zeros_like(b_ih)
    rows = []
    for t in reversed(range(seq)):
        i, f, g, o, c_prev, c, h_prev = kept[t]
        tc = torch.tanh(c)
        do = dh * tc  # h = o tanh(c)
        dc = dc + dh * o * (1 - tc * tc)
        di, dg, df = dc * g, dc * i, dc * c_prev  # c = f c_prev + i g
        da = torch.cat([di * i * (1 - i), df * f * (1 - f), dg * (1 - g * g), do * o * (1 - o)], 1)
        dw_ih += da.t() @ x[t]  # gates = x W_ih^T + h_prev W_hh^T + b
        dw_hh += da.t() @ h_prev
        db += da.sum(0)
        rows.append((t, float(dh.norm()), float(f.mean()), float(dc.norm())))
        dh, dc = da @ w_hh, dc * f  # into step t-1
    print(f"{'t':>4}{'|dL/dh_t|':>12}{'mean f_t':>10}{'|dL/dc_t|':>12}")
    for t, n_h, f_mean, n_c in reversed(rows):
        print(f"{t:>4}{n_h:>12.3e}{f_mean:>10.3f}{n_c:>12.3e}")

    # torch: the module's autograd, and an unrolled loop of its cells for dL/dh_t
    out, _ = ref(x)
    ref_loss = torch.nn.functional.mse_loss(out[-1], target)
    ref_loss.backward()
    hc, hs = (torch.zeros(batch, hid, dtype=torch.float64),) * 2, []
    cell_weights = [p.detach().clone().requires_grad_() for p in ref._flat_weights]
    for t in range(seq):
        hc = torch.lstm_cell(x[t], hc, *cell_weights)
        hc[0].retain_grad()
        hs.append(hc[0])
    torch.nn.functional.mse_loss(hc[0], target).backward()
    errs = [check("loss", loss, ref_loss.detach()),
            check("dW_ih", dw_ih, ref.weight_ih_l0.grad), check("dW_hh", dw_hh, ref.weight_hh_l0.grad),
            check("db_ih", db, ref.bias_ih_l0.grad), check("db_hh", db, ref.bias_hh_l0.grad)]
    ref_norms = torch.tensor([float(hh.grad.norm()) for hh in hs], dtype=torch.float64)
    hand_norms = torch.tensor([r[1] for r in reversed(rows)], dtype=torch.float64)
    errs.append(check("|dL/dh_t|", hand_norms, ref_norms))
    # gradlens.functional.lstm (its backward is this loop) and its per-step norms
    norms = torch.zeros(1, seq, dtype=torch.float64)
    params = [p.detach().clone().requires_grad_() for p in ref._flat_weights]
    zeros = torch.zeros(1, batch, hid, dtype=torch.float64)
    out_gl = GF.lstm(x, (zeros, zeros), params, True, 1, 0.0, False, False, False, hidden_grad_norm=norms)[0]
    grads = torch.autograd.grad(GF.mse_loss(out_gl[-1], target), params)
    errs += [check("gradlens.functional.lstm dW_hh", grads[1], ref.weight_hh_l0.grad),
             check("gradlens hidden_grad_norm", norms[0], ref_norms)]
    print(f"loss, dW_ih, dW_hh, db, |dL/dh_t|: hand == torch == gradlens.functional.lstm (max|diff| {max(errs):.1e})")


# ------------------------------------------------------------------------ 7. over time
def over_time(torch, GF, seq, hid):
    print(f"\n== |dL/dh_t| over time, loss on the last step only: tanh RNN vs LSTM, hidden {hid} ==")
    torch.manual_seed(5)
    x = torch.randn(seq, 4, hid, dtype=torch.float64)
    h0 = torch.zeros(1, 4, hid, dtype=torch.float64)
    result = {}
    variants = (("rnn", torch.nn.RNN(hid, hid), GF.rnn_tanh, h0, 0.0),
                ("lstm", torch.nn.LSTM(hid, hid), GF.lstm, (h0, h0), 0.0),
                # forget-gate bias +1 (Jozefowicz et al., 2015): f_t starts near 0.73, not 0.5
                ("lstm f+1", torch.nn.LSTM(hid, hid), GF.lstm, (h0, h0), 1.0))
    for name, module, fn, hx, forget_bias in variants:
        params = [p.detach().double().clone() for p in module._flat_weights]
        if forget_bias:
            params[2][hid:2 * hid] += forget_bias  # bias_ih, gate order i, f, g, o
        params = [p.requires_grad_() for p in params]
        norms = torch.zeros(1, seq, dtype=torch.float64)
        out = fn(x, hx, params, True, 1, 0.0, False, False, False, hidden_grad_norm=norms)[0]
        out[-1].pow(2).sum().backward()
        result[name] = norms[0]
    print(f"{'t':>4}" + "".join(f"{name:>12}" for name in result))
    for t in sorted(set(list(range(0, seq, max(1, seq // 8))) + [seq - 1])):
        print(f"{t:>4}" + "".join(f"{float(v[t]):>12.3e}" for v in result.values()))
    for name, v in result.items():
        print(f"{name:<9}: |dL/dh_0| / |dL/dh_T| = {float(v[0] / v[-1]):.2e}")
    if not result["rnn"][0] / result["rnn"][-1] < result["lstm f+1"][0] / result["lstm f+1"][-1]:
        raise AssertionError("expected the tanh RNN's gradient to vanish faster through time than the LSTM's")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Backprop from scratch, checked against torch.")
    parser.add_argument("--tiny", action="store_true", help="small sizes (a smoke run)")
    args = parser.parse_args(argv)
    import torch
    import torch.nn.functional as F

    import gradlens.functional as GF

    tiny = args.tiny
    layers, x, labels = mlp_walkthrough(torch, GF, F, [4, 8, 8, 3] if tiny else [10, 32, 32, 16, 4], 8 if tiny else 64)
    optimizers(torch, GF, layers, x, labels, steps=2 if tiny else 5)
    vanishing(torch, GF, depth=5 if tiny else 10, width=16 if tiny else 64, n=16 if tiny else 128)
    lstm_walkthrough(torch, GF, seq=4 if tiny else 8, batch=2 if tiny else 4, inp=3, hid=4 if tiny else 8)
    over_time(torch, GF, seq=12 if tiny else 40, hid=8 if tiny else 32)
    print("\nall checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
