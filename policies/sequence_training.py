"""Training the sequence classifier (``policies.sequence``): a GRU on the same
``(LightCurveSet, position seed)`` pairs that ``classifier_training.fit`` takes (positions
are not used), Adam with early stopping on the validation loss, and a temperature fitted
on the validation set. Deterministic for a seed on one thread."""

from __future__ import annotations

import time

import numpy as np

from policies.classifier_training import fit_temperature
from policies.sequence import SequenceClassifier, build_network, network_logits, tokenise


def set_tokens(pairs: list):
    """Tokens, lengths, globals and labels of ``(LightCurveSet, seed)`` pairs."""
    parts = [(*tokenise(d.obj, d.mjd, d.band, d.mag, d.err, d.n), d.label) for d, _ in pairs]
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(4))


def train_sequence(train_sets: list, valid_sets: list, seed: int = 1, epochs: int = 30,
                   patience: int = 4, batch: int = 256, lr: float = 3e-3,
                   progress: bool = False, max_seconds: float | None = None):
    """A calibrated ``SequenceClassifier`` from ``(LightCurveSet, seed)`` pairs: at most
    ``epochs`` passes (or ``max_seconds``), keeping the weights of the epoch with the
    lowest validation loss and stopping after ``patience`` epochs without improvement.
    Returns (model, report)."""
    import torch  # lazy: heavy library

    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 11])
    tr = set_tokens(train_sets)
    va = set_tokens(valid_sets)
    tr = tuple(a[tr[1] > 0] for a in tr)
    va = tuple(a[va[1] > 0] for a in va)
    net = build_network()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    t_tr = [torch.from_numpy(a) for a in tr]
    y_va = va[3]
    best, best_state, since, history = np.inf, None, 0, []
    start = time.perf_counter()
    for epoch in range(epochs):
        net.train()
        order = rng.permutation(len(tr[3]))
        for s in range(0, order.size, batch):
            ix = torch.from_numpy(order[s:s + batch])
            opt.zero_grad()
            loss = loss_fn(net(t_tr[0][ix], t_tr[1][ix], t_tr[2][ix]), t_tr[3][ix])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
        raw = network_logits(net, *va[:3]).astype(np.float64)
        z = raw - raw.max(axis=1, keepdims=True)
        nll = float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y_va)), y_va]))
        acc = float(np.mean(raw.argmax(axis=1) == y_va))
        history.append({"epoch": epoch + 1, "valid_nll": round(nll, 4),
                        "valid_acc": round(acc, 4)})
        if progress:
            print(history[-1], f"{time.perf_counter() - start:.0f} s", flush=True)
        if nll < best - 1e-4:
            best, since = nll, 0
            best_state = {k: v.clone() for k, v in net.state_dict().items()}
        else:
            since += 1
        if since >= patience or (max_seconds and time.perf_counter() - start > max_seconds):
            break
    net.load_state_dict(best_state)
    raw = network_logits(net, *va[:3]).astype(np.float64)
    temperature = fit_temperature(raw, y_va)
    report = {"seed": seed, "n_train": len(tr[3]), "n_valid": len(y_va),
              "epochs_run": len(history), "best_valid_nll": round(best, 4),
              "temperature": temperature, "weights": int(sum(p.numel()
                                                           for p in net.parameters())),
              "train_seconds": round(time.perf_counter() - start, 1), "history": history}
    return SequenceClassifier(net, temperature, report=report), report
