"""The papers' recipes (docs/methods.md, "Paper recipes"): the documented table equals the shared constant,
the published GReg+ selection defaults, the optimisers against hand-written updates, GQ on pixels, and
a short paper-recipe GReg+ run whose sidecar says what ran."""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from ood_core.training import METHODS, TrainConfig, train
from ood_core.training import losses as L
from ood_core.training.loop import _schedule, make_optimizer
from ood_core.training.methods.gq import pixel_space
from ood_core.training.recipes import PAPER_RECIPES
from ood_core.training.sampling import select_reference

DOCS = Path(__file__).resolve().parents[2] / "docs" / "methods.md"


def _doc_table() -> dict[str, dict[str, str]]:
    text = DOCS.read_text()
    body = text[text.index("<!-- paper-recipes-table -->"):text.index("<!-- /paper-recipes-table -->")]
    out: dict[str, dict[str, str]] = {}
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 4 or cells[0] in ("method", "---") or set(cells[0]) <= {"-"}:
            continue
        assert cells[3], f"no source for {cells[0]}.{cells[1]}"
        out.setdefault(cells[0], {})[cells[1]] = cells[2]
    return out


def _same(doc: str, value) -> bool:
    if isinstance(value, bool):
        return doc == str(value)
    if isinstance(value, (int, float)):
        return math.isclose(float(doc), float(value), rel_tol=0, abs_tol=1e-12)
    return doc == value


def test_docs_table_is_the_shared_constant():
    table = _doc_table()
    assert set(table) == set(PAPER_RECIPES)
    for method, recipe in PAPER_RECIPES.items():
        assert set(table[method]) == set(recipe), method
        for knob, value in recipe.items():
            assert _same(table[method][knob], value), (method, knob, table[method][knob], value)


@pytest.mark.parametrize("method", list(PAPER_RECIPES))
def test_recipe_paper_sets_every_value(method):
    m = METHODS[method]
    knobs = {k.name for k in m.all_knobs}
    recipe = PAPER_RECIPES[method]
    assert set(recipe) - {"epochs"} <= knobs  # every value is a knob the run honours
    got = m.resolve({"recipe": "paper"})
    assert {k: got[k] for k in recipe if k != "epochs"} == {k: v for k, v in recipe.items() if k != "epochs"}
    assert got["preset"] == next(iter(m.presets)) if m.presets else True  # the loss form stays the reference
    assert TrainConfig(method, params={"recipe": "paper"}).resolved().epochs == recipe["epochs"]
    assert TrainConfig(method, epochs=3, params={"recipe": "paper"}).resolved().epochs == 3  # explicit wins
    assert m.resolve({"recipe": "paper", "lr": 0.002})["lr"] == 0.002
    assert m.resolve()["recipe"] == "default"


def test_greg_plus_defaults_are_the_published_selection():
    ref = METHODS["greg_plus"].resolve()
    assert (ref["drop_lowest"], ref["two_way"], ref["max_clusters"], ref["selection"]) == (0, True, 64, "reference")
    code = METHODS["greg_plus"].resolve({"preset": "code_defaults"})
    assert (code["drop_lowest"], code["two_way"], code["max_clusters"]) == (16, False, 64)
    assert METHODS["greg_plus"].form(code) == "reference"  # the same loss form
    # A version-2 config ran with the argparse defaults and k = B: it reruns that way.
    old = TrainConfig.from_dict({"version": 2, "method": "greg_plus", "params": {"preset": "reference"}}).resolved()
    assert (old.params["preset"], old.params["drop_lowest"], old.params["two_way"], old.params["max_clusters"]) == \
        ("code_defaults", 16, False, 4096)


def test_select_reference_with_fewer_clusters_than_b():
    """k < B: each cluster gives its ⌊B/k⌋ lowest (two_way: also as many highest) members."""
    dirs = np.eye(3)
    feats = np.concatenate([d[None] * np.array([0.5, 3.0, 40.0, 200.0])[:, None] for d in dirs])
    energies = np.array([-3.0, -20.0, -1.0, -5.0, -2.0, -4.0, -19.0, -8.0, -7.0, -0.5, -3.0, -11.0])
    sel = select_reference(feats, energies, b=6, drop=0, clusters=3, seed=0)
    assert sorted(sel.tolist()) == [1, 3, 6, 7, 8, 11]
    both = select_reference(feats, energies, b=6, drop=0, two_way=True, clusters=3, seed=0)
    assert sorted(both.tolist()) == list(range(12))


def _tiny(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 5 * 5, 3))


def _hand_steps(p0: list[torch.Tensor], grads: list[list[torch.Tensor]], k: dict, lrs: list[float]) -> list[torch.Tensor]:
    """Adam / SGD (momentum, Nesterov, L2 weight decay) written out from their formulas."""
    p = [t.clone().double() for t in p0]
    wd, mom = float(k["weight_decay"]), float(k["momentum"])
    state = [None] * len(p)
    for step, (gs, lr) in enumerate(zip(grads, lrs), start=1):
        for i, g in enumerate(gs):
            g = g.double() + wd * p[i]
            if k["optimizer"] == "adam":
                b1, b2, eps = 0.9, 0.999, 1e-8
                m, v = state[i] if state[i] is not None else (torch.zeros_like(g), torch.zeros_like(g))
                m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
                state[i] = (m, v)
                p[i] = p[i] - lr * (m / (1 - b1 ** step)) / ((v / (1 - b2 ** step)).sqrt() + eps)
            else:
                buf = g if state[i] is None else mom * state[i] + g
                state[i] = buf
                p[i] = p[i] - lr * ((g + mom * buf) if k["nesterov"] else buf)
    return p


@pytest.mark.parametrize("method", list(PAPER_RECIPES))
def test_recipe_steps_equal_hand_written_updates(method):
    """Two steps of the recipe's optimiser and schedule against the update formulas (Adam, Nesterov SGD, SGD)."""
    k = METHODS[method].resolve({"recipe": "paper", "lr": 0.01})
    model = _tiny()
    params = list(model.parameters())
    p0 = [t.detach().clone() for t in params]
    opt = make_optimizer(params, k)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(k, total_steps=4, steps_per_epoch=1))
    factor = _schedule(k, total_steps=4, steps_per_epoch=1)
    gen = torch.Generator().manual_seed(1)
    grads, lrs = [], []
    for s in range(2):
        x, y = torch.randn(6, 3, 5, 5, generator=gen), torch.randint(0, 3, (6,), generator=gen)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        grads.append([q.grad.detach().clone() for q in params])
        lrs.append(0.01 * factor(s))
        opt.step()
        sched.step()
    want = _hand_steps(p0, grads, k, lrs)
    assert type(opt).__name__ == ("Adam" if k["optimizer"] == "adam" else "SGD")
    for got, w in zip(params, want):
        np.testing.assert_allclose(got.detach().double().numpy(), w.numpy(), atol=1e-6, rtol=0)
    assert any((g - q).abs().max() > 1e-4 for g, q in zip(params, p0))  # the step moved the weights


def test_gq_on_pixels_is_the_hand_written_pixel_ratio():
    """A 3-channel model behind per-channel normalisation: the quotient w.r.t. the [0, 1] pixels."""
    model = _tiny(3).double()
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.12, 0.5)
    gen = torch.Generator().manual_seed(0)
    pixels = torch.rand(5, 3, 5, 5, generator=gen, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1, 0])
    m, s = torch.tensor(mean).view(1, 3, 1, 1).double(), torch.tensor(std).view(1, 3, 1, 1).double()
    x = (pixels - m) / s  # what the workbench's model sees
    p = pixels.clone().requires_grad_(True)
    logits = model((p - m) / s)
    onehot = torch.nn.functional.one_hot(y, 3).double()
    g_y, = torch.autograd.grad((logits * onehot).sum(), p, retain_graph=True)
    g_o, = torch.autograd.grad((logits * (1 - onehot)).sum(), p)
    want = float(g_y.abs().sum() / g_o.abs().sum())
    fn, px = pixel_space(model, x, mean, std)
    got, _ = L.gradient_quotient(fn, px, y, "logits", "batch")
    assert math.isclose(float(got.detach()), want, rel_tol=1e-9)
    on_x, _ = L.gradient_quotient(model, x, y, "logits", "batch")
    assert not math.isclose(float(on_x), want, rel_tol=1e-4)  # the input space matters with per-channel std


def test_greg_plus_paper_recipe_run_says_what_ran(default_bundle, tmp_path):
    """A short paper-recipe GReg+ run: Adam, drop 0, two-way, k = min(max_clusters, B); sidecar and label say so."""
    cfg = TrainConfig("greg_plus", init="default", epochs=1, seed=0, n_train=32, n_eval=50,
                      params={"recipe": "paper", "batch_size": 16, "lr": 1e-4})
    meta = train(cfg, out_dir=tmp_path).meta
    assert meta["recipe"] == "paper" and meta["optimizer"] == "Adam" and meta["preset"] == "reference"
    p = meta["training"]["params"]
    assert (p["drop_lowest"], p["two_way"], p["max_clusters"], p["optimizer"], p["weight_decay"]) == \
        (0, True, 32, "adam", 0.0)
    assert "· paper recipe" in meta["label"] and "lr=0.0001" in meta["label"] and "optimizer" not in meta["label"]
    assert re.search(r"· reference form", meta["label"])
    # The authors' CIFAR augmentation ran, and the label and sidecar say so.
    assert p["augment"] == "crop_flip" and meta["augmentation"].startswith("crop_flip: random crop")
    assert "· crop+flip augmentation" in meta["label"] and "augment=" not in meta["label"]


def test_crop_flip_equals_hand_written_pad_crop_flip_on_pixels():
    """Per row: pad 4 with zero pixels, crop back at the drawn offsets, flip where drawn, then normalise,
    written out with torchvision's functional ops on the pixels, equals crop_flip on the normalised batch
    (padding = a zero pixel's normalised value). Same seed, same output; the draws are per row."""
    from torchvision.transforms.v2 import functional as TF

    from ood_core.training.augment import CROP_PAD, crop_flip, crop_flip_at, zero_pixel

    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    gen = torch.Generator().manual_seed(0)
    pixels = torch.rand(6, 3, 10, 12, generator=gen)
    x = TF.normalize(pixels, list(mean), list(std))
    fill = zero_pixel(mean, std)
    out = crop_flip(x, torch.Generator().manual_seed(7), fill=fill)
    g = torch.Generator().manual_seed(7)  # the documented draw order: row offsets, column offsets, flips
    dy, dx = (torch.randint(0, 2 * CROP_PAD + 1, (6,), generator=g) for _ in range(2))
    flip = torch.rand(6, generator=g) < 0.5
    for i in range(6):
        p = TF.crop(TF.pad(pixels[i], [CROP_PAD], fill=0.0), int(dy[i]), int(dx[i]), 10, 12)
        p = TF.horizontal_flip(p) if flip[i] else p
        torch.testing.assert_close(out[i], TF.normalize(p, list(mean), list(std)), rtol=0, atol=1e-6)
    assert 0 < int(flip.sum()) < 6 and len(set(dy.tolist())) > 1  # the draws differ between rows
    assert torch.equal(out, crop_flip(x, torch.Generator().manual_seed(7), fill=fill))  # deterministic for a seed
    assert not torch.equal(out, crop_flip(x, torch.Generator().manual_seed(8), fill=fill))
    # Given offsets: offset (4, 4) without a flip is the identity; a flip mirrors the columns.
    z, f = torch.full((6,), 4), torch.zeros(6, dtype=torch.bool)
    assert torch.equal(crop_flip_at(x, z, z, f, fill=fill), x)
    assert torch.equal(crop_flip_at(x, z, z, ~f, fill=fill), x.flip(-1))
    # A shard of a global batch (torchrun) gets the rows the whole batch would.
    a = crop_flip(x[:2], torch.Generator().manual_seed(7), fill=fill, draw=(6, 0))
    b = crop_flip(x[2:], torch.Generator().manual_seed(7), fill=fill, draw=(6, 2))
    assert torch.equal(torch.cat([a, b]), out)


def test_augment_knob_keeps_its_old_spellings_and_the_trainer_uses_crop_flip(default_bundle, tmp_path):
    """augment was a bool: True/False (saved configs, --param ...=false) read as shift/none. A run with
    augment=crop_flip crops and flips its batches from the run's generator, padding with a zero pixel."""
    from ood_core.training import Trainer
    from ood_core.training.augment import crop_flip, zero_pixel

    m = METHODS["ce"]
    assert [m.resolve({"augment": v})["augment"] for v in (True, False, "false", "crop_flip")] == \
        ["shift", "none", "none", "crop_flip"]
    assert m.resolve()["augment"] == "shift" and METHODS["greg"].resolve({"recipe": "paper"})["augment"] == "crop_flip"
    tr = Trainer(TrainConfig("ce", epochs=1, n_train=16, n_eval=20, params={"batch_size": 16, "augment": "crop_flip"}),
                 out_dir=tmp_path)
    x = tr.x_train[torch.arange(4)]
    g = torch.Generator().set_state(tr.gen.get_state())
    pp = tr.bundle.preprocess
    assert torch.equal(tr.augment(x), crop_flip(x, g, fill=zero_pixel(pp.mean, pp.std)))


def test_fine_tune_a_state_dict_resumes_from_its_weights(default_bundle, tmp_path):
    """--init a plain state_dict with its arch: the first step's loss is the loaded model's loss, and the
    checkpoint written loads back with the same preprocessing."""
    from ood_core.models import build_arch
    from ood_core.models.checkpoints import load_checkpoint
    from ood_core.models.files import load_model_file
    from ood_core.training import Trainer

    torch.manual_seed(5)
    sd = tmp_path / "published.pt"
    torch.save(build_arch("small_cnn", 10, 1).state_dict(), sd)
    load = {"arch": "small_cnn", "mean": 0.3, "std": 0.7}
    cfg = TrainConfig("ce", init=str(sd), epochs=1, seed=0, n_train=32, n_eval=50, load=load,
                      params={"batch_size": 16, "augment": False})
    tr = Trainer(cfg, out_dir=tmp_path)
    ref = load_model_file(sd, **load)
    idx = torch.arange(16)
    with torch.no_grad():
        ref.model.train(tr.model.training)
        want = float(torch.nn.functional.cross_entropy(ref.logits(tr.x_train[idx]), tr.y_train[idx]))
    assert tr.step(idx)["total"] == pytest.approx(want, rel=1e-5)
    res = tr.run()
    back = load_checkpoint(res.path)
    assert back.preprocess.to_dict() == ref.preprocess.to_dict() and tuple(back.preprocess.mean) == (0.3,)


def test_greg_plus_pool_on_a_streamed_aux_decodes_only_the_pool(default_bundle, tmp_path, monkeypatch):
    """GReg+ on an auxiliary folder streamed from disk: each step decodes only its candidate pool (never the
    whole set), and the picks equal those on the same pixels held in memory, same seed."""
    from PIL import Image

    from ood_core.data import ImageDataset, streamed
    from ood_core.data.registry import DatasetSpec, add_source, get_dataset, register, unregister
    from ood_core.training import Trainer
    from ood_core.training.methods import energy

    imgs = np.random.default_rng(0).integers(0, 256, (40, 28, 28), dtype=np.uint8)
    folder = tmp_path / "aux_png"
    folder.mkdir()
    for i, a in enumerate(imgs):
        Image.fromarray(a).save(folder / f"img_{i:03d}.png")
    mem = ImageDataset("t_aux_mem", imgs, np.full(40, -1), role="aux")
    try:
        add_source(folder, "t_aux_stream", "aux", labelled=False)
        register(DatasetSpec("t_aux_mem", "", "aux", lambda split: mem, embedded=False), replace=True)
        assert isinstance(get_dataset("t_aux_stream"), streamed.StreamedDataset)
        decoded: list[str] = []
        real = streamed._decode
        monkeypatch.setattr(streamed, "_decode", lambda path, gray: decoded.append(path) or real(path, gray))
        picks: list[np.ndarray] = []
        real_sel = energy.select_reference
        monkeypatch.setattr(energy, "select_reference", lambda *a, **kw: picks.append(real_sel(*a, **kw)) or picks[-1])
        params = {"batch_size": 8, "pool_factor": 3.0, "lr": 1e-4}  # pool 24 of 40, 16 picked (two-way)

        def trainer(aux: str) -> Trainer:
            return Trainer(TrainConfig("greg_plus", init="default", epochs=1, seed=3, n_train=16, n_eval=20,
                                       aux=aux, params=params), out_dir=tmp_path)

        tr_s, tr_m = trainer("t_aux_stream"), trainer("t_aux_mem")
        assert decoded == []  # setting up reads no auxiliary pixels
        method = METHODS["greg_plus"]
        for _ in range(2):  # two iterations: fresh pools from the same seeded draws
            n0 = len(decoded)
            xs, _ = method.select_aux(tr_s, 8)
            assert len(decoded) - n0 == 24 and len(set(decoded[n0:])) == 24  # the pool, not the 40
            xm, _ = method.select_aux(tr_m, 8)
            assert len(decoded) - n0 == 24  # the in-memory set decodes nothing
            assert np.array_equal(picks[-2], picks[-1]) and len(picks[-1]) == 16
            assert torch.equal(xs, xm)
        n0 = len(decoded)
        row = tr_s.step(torch.arange(8))  # a whole update decodes one pool as well
        assert len(decoded) - n0 == 24 and math.isfinite(row["total"])
    finally:
        unregister("t_aux_stream")
        unregister("t_aux_mem")


class _BNNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


@pytest.mark.parametrize("twice", [False, True])
def test_bn_double_update_moves_running_statistics_twice(twice):
    """bn_double_update: batch norm's running mean moves twice per GReg step (the authors' re-forward),
    else once; closed form for one batch from zeros: (1 - 0.9^n)·batch mean. Loss and gradients agree."""
    from types import SimpleNamespace

    torch.manual_seed(0)
    x, aux = torch.randn(6, 1, 8, 8), torch.randn(6, 1, 8, 8)
    y = torch.randint(0, 5, (6,))
    out = {}
    for flag in (False, twice):
        torch.manual_seed(1)
        net = _BNNet().double().train()
        k = METHODS["greg"].resolve({"bn_double_update": flag, "m_in": -1.0, "m_out": -3.0})
        view = SimpleNamespace(k=k, logits=lambda *p: net(torch.cat(p)), aux_batch=lambda n: aux.double(),
                               sample_independent=False, world=1)
        loss = METHODS["greg"].loss(view, x.double(), y)
        assert float(loss["grad"].detach()) > 0 and 0 < loss["frac_aux"]  # the penalty ran on detected rows
        grads = torch.autograd.grad(loss["total"], list(net.parameters()))
        out[flag] = (net, float(loss["total"]), grads)
    net, total, grads = out[twice]
    with torch.no_grad():
        batch_mean = _conv_batch_mean(net, torch.cat([x, aux]).double())
    n = 2 if twice else 1
    assert int(net.bn.num_batches_tracked) == n
    torch.testing.assert_close(net.bn.running_mean, (1 - 0.9 ** n) * batch_mean, rtol=1e-10, atol=1e-12)
    assert total == pytest.approx(out[False][1], rel=1e-12)
    for g, g0 in zip(grads, out[False][2]):
        torch.testing.assert_close(g, g0, rtol=1e-9, atol=1e-12)


def _conv_batch_mean(net: _BNNet, x: torch.Tensor) -> torch.Tensor:
    return net.conv(x).mean((0, 2, 3))


def test_train_config_load_defaults_to_no_options(tmp_path):
    """``load`` is a field ({} by default), and a sidecar written while a method shadowed it reruns."""
    import json

    assert TrainConfig("ce").load == {} and TrainConfig("ce").to_dict()["load"] == {}
    side = {**TrainConfig("ce").to_dict(), "load": "<bound method TrainConfig.load of <class '...'>>"}
    (tmp_path / "c.json").write_text(json.dumps({"training": side}))
    assert TrainConfig.from_file(tmp_path / "c.json").load == {}
