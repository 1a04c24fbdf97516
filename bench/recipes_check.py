"""An independent re-implementation of the papers' training losses and GReg+ selection, against the project's presets.

Written from the formulas in docs/methods.md ("Training methods", "Paper recipes") and the authors'
description, without ood_core's loss or selection functions (no ``ood_core.training.losses``, no
``ood_core.training.sampling``): the project is only called through its methods' ``loss`` and
``select_aux`` with its presets (``recipe=paper``), on the same tiny model and random data.

- GReg's penalty, reference form: ``φ = −mean_in[relu(m_in − E)] + mean_aux[relu(E − m_out)]``, its
  input gradient taken, as the authors do, by ``torch.autograd.functional.jacobian`` of a function
  that re-runs the model; per-row L2 norm, mean over all N rows. Total ``CE + λ_S·L_S + λ_∇S·L_∇S``,
  ``L_S = mean_in[relu(E − m_in)²] + mean_aux[relu(m_out − E)²]``. With and without batch norm
  (train mode), and with ``bn_double_update`` both ways.
- GReg+ selection with the published defaults: pool of ⌊6·B⌋, energies ``−LSE`` in eval mode,
  sorted ascending, drop 0, k = min(64, B) scikit-learn k-means (n_init 3, the same seed) on the
  L2-normalised features of the kept candidates in that order, per cluster its ⌊B/k⌋ lowest and
  highest energies (two-way), filled to 2B at random. The pool draw and the fill use the project's
  stated random conventions (``numpy.random.default_rng``: the pool with ``choice(N, P, replace=False)``
  from seed+1, the fill with ``default_rng(seed').choice`` over the kept candidates not yet picked,
  in index order; seed' = seed·1,000,003 + step): the authors' ``random.sample`` has no portable
  counterpart, and without them no two implementations can pick the same rows.
- GQ on pixels (``pixel_space``): ``‖∇_p Σ_n f_{y_n}‖₁ / ‖∇_p Σ_n Σ_{j≠y_n} f_j‖₁`` with respect to the
  [0, 1] pixels ``p = x·std + mean``, total ``CE + 1e-6·GQ``.

Every loss is compared in value and in its gradient with respect to the parameters (float64).
Usage: ``python bench/recipes_check.py`` (CPU, seconds). Prints the max abs differences.
"""
from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans

from ood_core.training import METHODS

torch.set_default_dtype(torch.float64)
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # CIFAR-10's: per-channel std matters for GQ


class Net(torch.nn.Module):
    """A tiny CNN with features (the penultimate layer) and, optionally, batch norm."""

    def __init__(self, bn: bool) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(6) if bn else torch.nn.Identity()
        self.fc1, self.fc2 = torch.nn.Linear(6 * 4, 8), torch.nn.Linear(8, 5)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = F.avg_pool2d(torch.relu(self.bn(self.conv(x))), 4).flatten(1)
        return torch.relu(self.fc1(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.features(x))


def energy(logits: torch.Tensor) -> torch.Tensor:
    return -torch.logsumexp(logits, 1)


# --- the independent side --------------------------------------------------------------------

def greg_total(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, aux: torch.Tensor, m_in: float, m_out: float,
               lam_s: float, lam_grad: float) -> dict[str, torch.Tensor]:
    data = torch.cat([x, aux])
    n_id = len(x)
    logit = net(data)
    ce = F.cross_entropy(logit[:n_id], y)
    e = energy(logit)
    ls = F.relu(e[:n_id] - m_in).pow(2).mean() + F.relu(m_out - e[n_id:]).pow(2).mean()

    def phi(inputs: torch.Tensor) -> torch.Tensor:  # the model re-run, as the authors' penalty does
        er = energy(net(inputs))
        return -F.relu(m_in - er[:n_id]).mean() + F.relu(er[n_id:] - m_out).mean()

    jac = torch.autograd.functional.jacobian(phi, data, create_graph=True)
    grad = jac.reshape(len(data), -1).norm(2, dim=1).mean()
    return {"total": ce + lam_s * ls + lam_grad * grad, "ce": ce, "ls": ls, "grad": grad}


def select_two_way(net: torch.nn.Module, pool: torch.Tensor, b: int, seed: int) -> tuple[np.ndarray, int]:
    """Pool indices of the 2B selected outliers (drop 0, two-way, k = min(64, B)) and how many the fill drew."""
    net.eval()
    with torch.no_grad():
        feats = net.features(pool)
        en = energy(net.fc2(feats))
    net.train()
    feats, en = feats.float().numpy(), en.float().numpy().astype(np.float64)  # the pool is scored in float32
    order = np.argsort(en, kind="stable")  # ascending energy; drop 0 keeps them all
    rep = feats[order].astype(np.float64)
    rep = rep / np.maximum(np.linalg.norm(rep, axis=1, keepdims=True), 1e-12)
    k = min(64, b)
    labels = KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(rep)
    per = 1 if k > b else b // k
    picked: list[int] = []
    for c in range(min(k, b)):
        members = order[labels == c]  # pool indices, already in ascending energy
        if len(members) <= per:
            picked += members.tolist()
            continue
        low, high = members[:per].tolist(), members[-per:].tolist()
        picked += low + [m for m in high if m not in low]
    n_fill = max(0, 2 * b - len(picked))
    if n_fill:
        rest = sorted(set(order.tolist()) - set(picked))
        picked += np.random.default_rng(seed).choice(rest, 2 * b - len(picked), replace=False).tolist()
    return np.asarray(picked[:2 * b]), n_fill


def gq_total(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, lam: float) -> dict[str, torch.Tensor]:
    m, s = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    p = (x * s + m).detach().requires_grad_(True)
    logits = net((p - m) / s)
    target = logits.gather(1, y[:, None]).sum()
    others = logits.sum() - target
    (g_y,) = torch.autograd.grad(target, p, create_graph=True)
    (g_o,) = torch.autograd.grad(others, p, create_graph=True)
    gq = g_y.abs().sum() / g_o.abs().sum()
    ce = F.cross_entropy(logits, y)
    return {"total": ce + lam * gq, "ce": ce, "gq": gq}


# --- the project's side (its presets, through the methods) ------------------------------------

def view(net: torch.nn.Module, k: dict, aux: torch.Tensor | None = None, x_aux: torch.Tensor | None = None,
         seed: int = 0) -> SimpleNamespace:
    """What a method's hooks use of the Trainer, over ``net``: identity augmentation, one process."""
    independent = not any(isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) for mod in net.modules())
    logits = lambda *parts: net(torch.cat(parts))  # noqa: E731
    bundle = SimpleNamespace(logits=net, forward=lambda x: (net.fc2(h := net.features(x)), h),
                             preprocess=SimpleNamespace(mean=MEAN, std=STD))
    return SimpleNamespace(k=k, logits=logits, forward=net, bundle=bundle, model=net, sample_independent=independent,
                           world=1, rank=0, step_no=0, cfg=SimpleNamespace(seed=seed, aux="random"),
                           np_rng=np.random.default_rng(seed + 1), x_aux=x_aux, aux_batch=lambda n: aux,
                           augment=lambda x, total=None, start=None: x)


def params_grad(net: torch.nn.Module, total: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(total, list(net.parameters()), allow_unused=True))


def compare(name: str, ours: dict, theirs: dict, n_ours: torch.nn.Module, n_theirs: torch.nn.Module) -> float:
    terms = [t for t in ours if t in theirs]
    d_terms = {t: abs(float(ours[t].detach()) - float(theirs[t].detach())) for t in terms}
    g1, g2 = params_grad(n_ours, ours["total"]), params_grad(n_theirs, theirs["total"])
    d_grad = max(float((a - b).abs().max()) for a, b in zip(g1, g2) if a is not None)
    scale = max(float(g.abs().max()) for g in g1 if g is not None)
    print(f"{name:<44} " + "  ".join(f"{t} {float(theirs[t].detach()):.6g} |Δ| {d:.1e}" for t, d in d_terms.items())
          + f"  |Δ ∂total/∂θ| {d_grad:.1e} (of {scale:.2g})")
    return max([*d_terms.values(), d_grad])


def main() -> None:
    torch.manual_seed(0)
    b = 16
    x, y = torch.randn(b, 3, 8, 8), torch.randint(0, 5, (b,))
    aux = torch.randn(b, 3, 8, 8) * 1.5
    worst = 0.0
    for bn in (False, True):
        torch.manual_seed(1)
        net0 = Net(bn).train()
        with torch.no_grad():  # margins at the medians, so both sides of each margin occur
            e0 = energy(copy.deepcopy(net0)(torch.cat([x, aux])))
        m_in, m_out = round(float(e0[:b].median()), 6), round(float(e0[b:].median()), 6)
        for twice in ((False, True) if bn else (False,)):
            k = METHODS["greg"].resolve({"recipe": "paper", "m_in": m_in, "m_out": m_out,
                                         "bn_double_update": twice})
            n_ours, n_theirs = copy.deepcopy(net0), copy.deepcopy(net0)
            ours = greg_total(n_ours, x, y, aux, m_in, m_out, k["lam_s"], k["lam_grad"])
            theirs = METHODS["greg"].loss(view(n_theirs, k, aux=aux), x, y)
            worst = max(worst, compare(f"greg paper, {'BN' if bn else 'no BN'}"
                                       + (f", bn_double_update={twice}" if bn else ""), ours, theirs, n_ours, n_theirs))
            if bn:
                d_rm = float((n_ours.bn.running_mean - n_theirs.bn.running_mean).abs().max())
                print(f"{'':<44} running_mean |Δ| vs the authors' two forwards: {d_rm:.1e} "
                      f"(num_batches_tracked {int(n_theirs.bn.num_batches_tracked)} vs "
                      f"{int(n_ours.bn.num_batches_tracked)})")

    # GReg+ with the published selection, on a pool from 200 random outliers.
    torch.manual_seed(2)
    net0 = Net(bn=True).train()
    x_aux = torch.randn(200, 3, 8, 8) * 1.5
    k = METHODS["greg_plus"].resolve({"recipe": "paper", "batch_size": b, "max_clusters": 64})
    assert (k["drop_lowest"], k["two_way"], k["pool_factor"]) == (0, True, 6.0)
    seed = 0
    same_all = True
    for step in range(3):
        n_theirs = copy.deepcopy(net0)
        v = view(n_theirs, k, x_aux=x_aux, seed=seed)
        v.np_rng = np.random.default_rng(seed + 1)
        for _ in range(step):  # the project's pool draws of the earlier steps
            v.np_rng.choice(len(x_aux), int(6 * b), replace=False)
        v.step_no = step
        sel, _ = METHODS["greg_plus"].select_aux(v, b)
        rng = np.random.default_rng(seed + 1)
        for _ in range(step + 1):
            pool_idx = rng.choice(len(x_aux), int(6 * b), replace=False)
        picks, n_fill = select_two_way(copy.deepcopy(net0).train(), x_aux[torch.as_tensor(pool_idx)], b,
                               seed * 1_000_003 + step)
        theirs_idx = [int(np.flatnonzero((x_aux == r).flatten(1).all(1).numpy())[0]) for r in sel]
        same = theirs_idx == pool_idx[picks].tolist()
        same_all &= same
        print(f"greg_plus paper selection, step {step}: {len(picks)} picks (pool {len(pool_idx)}, k {min(64, b)}, {n_fill} by the fill), "
              f"identical: {same}")
    n_ours, n_theirs = copy.deepcopy(net0), copy.deepcopy(net0)
    m_in, m_out = -1.5, -1.8
    k = METHODS["greg_plus"].resolve({"recipe": "paper", "batch_size": b, "m_in": m_in, "m_out": m_out})
    sel_rows = x_aux[torch.as_tensor(pool_idx[picks])]
    ours = greg_total(n_ours, x, y, sel_rows, m_in, m_out, k["lam_s"], k["lam_grad"])
    v = view(n_theirs, k)
    # GReg+'s loss (it inherits GReg's) with the selected rows: the selection was compared above.
    theirs = type(METHODS["greg_plus"]).loss(SelectedOnly(sel_rows), v, x, y)
    worst = max(worst, compare("greg_plus paper loss on the selected 2B, BN", ours, theirs, n_ours, n_theirs))

    torch.manual_seed(3)
    net0 = Net(bn=False).train()
    k = METHODS["gq"].resolve({"recipe": "paper"})
    assert k["pixel_space"] and k["form"] == "batch" and k["operand"] == "logits"
    n_ours, n_theirs = copy.deepcopy(net0), copy.deepcopy(net0)
    ours = gq_total(n_ours, x, y, k["lam"])
    theirs = METHODS["gq"].loss(view(n_theirs, k), x, y)
    worst = max(worst, compare("gq paper (pixel space, batch form, logits)", ours, theirs, n_ours, n_theirs))
    print(f"max abs difference over every loss term and parameter gradient: {worst:.1e}; "
          f"GReg+ picks identical on every step: {same_all}")


class SelectedOnly:
    """GReg+'s loss with its selection replaced by given rows (the loss half of the comparison)."""

    def __init__(self, rows: torch.Tensor) -> None:
        self.rows = rows

    def select_aux(self, trainer, b):  # noqa: ANN001, ANN201
        return self.rows, self.rows


if __name__ == "__main__":
    main()
