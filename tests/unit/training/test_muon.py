"""--optimizer muon: the filters' orthogonalised step, the rest exactly SGD's, and a run that resumes exactly."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest
import torch
import yaml
from torch import nn

from imgclf.training.build import make_optimizer, param_groups
from imgclf.training.muon import MuonSGD, muon_filters, orthogonalise
from imgclf.training.options import TrainConfig

SPEC = SimpleNamespace(head="fc")  # the registry entry's part param_groups reads


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, bias=False)
        self.conv = nn.Conv2d(8, 16, 3, bias=False)
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.norm = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = self.norm(self.depthwise(self.conv(torch.relu(self.stem(x)))))
        return self.fc(torch.relu(x).mean((2, 3)))


@pytest.mark.parametrize("shape", [(16, 72), (72, 16)])
def test_orthogonalise_moves_every_singular_value_near_one(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 3
    g[:, 0] *= 10  # one direction dominates the raw gradient
    s = torch.linalg.svdvals(orthogonalise(g))
    assert orthogonalise(g).shape == g.shape and s.min() > 0.5 and s.max() < 1.3  # three steps: near 1, not at it
    assert torch.linalg.svdvals(g).max() / torch.linalg.svdvals(g).min() > 10


def test_the_filters_but_the_input_layer_take_muon_and_the_rest_sgd():
    model = Net()
    cfg = TrainConfig(optimizer="muon", lr=0.1, weight_decay=1e-3, momentum=0.9, nesterov=True, muon_lr=0.05)
    groups = param_groups(cfg, model, SPEC, [])
    assert muon_filters(model) == {id(model.conv.weight)}
    muon = [g for g in groups if g.get("muon")]
    assert len(muon) == 1 and muon[0]["params"] == [model.conv.weight] and muon[0]["lr"] == 0.05
    everything = [p for g in groups for p in g["params"]]
    assert sorted(map(id, everything)) == sorted(map(id, model.parameters()))  # each once, none lost
    assert isinstance(make_optimizer(cfg, groups), MuonSGD)
    # --freeze-epochs: a filter frozen now but unfrozen later is in Muon's group from the start
    model.conv.weight.requires_grad_(False)
    later = param_groups(cfg, model, SPEC, ["conv"])
    assert [g["params"] for g in later if g.get("muon")] == [[model.conv.weight]]
    assert not [g for g in param_groups(cfg, model, SPEC, []) if g.get("muon")]


def test_a_step_is_sgd_s_for_the_rest_and_muon_s_for_the_filters():
    torch.manual_seed(0)
    model, twin = Net(), Net()
    twin.load_state_dict(model.state_dict())
    cfg = TrainConfig(optimizer="muon", lr=0.1, weight_decay=1e-3, momentum=0.9, nesterov=True, muon_lr=0.05)
    groups = param_groups(cfg, model, SPEC, [])
    opt = make_optimizer(cfg, groups)
    rest = [p for n, p in twin.named_parameters() if n != "conv.weight"]
    sgd = torch.optim.SGD(rest, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
    x = torch.randn(4, 3, 12, 12)
    for _ in range(3):
        for m, o in ((model, opt), (twin, sgd)):
            o.zero_grad()
            m(x).square().mean().backward()
        g, w = model.conv.weight.grad.clone(), model.conv.weight.detach().clone()
        buf = opt.state[model.conv.weight].get("momentum_buffer", torch.zeros_like(g)).clone()
        opt.step()
        sgd.step()
        buf = 0.6 * buf + g
        w = w * 16**0.5 / w.norm()
        expected = w - 0.05 * orthogonalise((g + 0.6 * buf).reshape(16, -1)).view_as(w)
        assert torch.allclose(model.conv.weight, expected, atol=1e-6)
        for (name, a), b in zip(((n, p) for n, p in model.named_parameters() if n != "conv.weight"), rest):
            assert torch.equal(a, b), name
        with torch.no_grad():
            twin.conv.weight.copy_(model.conv.weight)  # the same filter, so the next gradients agree too


@pytest.mark.kernels
def test_a_muon_run_resumes_exactly(tmp_path, make_folder):
    from imgclf import train

    data = make_folder(tmp_path / "d", classes=("a", "b", "c"), n=24, n_val=6, size=32)
    common = dict(data=str(data), recipe="fast", optimizer="muon", batch_size=16, workers=0, out=str(tmp_path / "r"))
    full = train(**common, epochs=3, name="full")
    assert yaml.safe_load(open(tmp_path / "r/full/config.yaml"))["optimizer"] == "muon" and full["steps"] == 15
    (tmp_path / "r/resumed").mkdir()
    shutil.copy(tmp_path / "r/full/epoch_2.pt", tmp_path / "r/resumed/epoch_2.pt")
    train(resume=str(tmp_path / "r/resumed/epoch_2.pt"), workers=0)
    wa = torch.load(tmp_path / "r/full/last.pt", weights_only=True)["state_dict"]
    wb = torch.load(tmp_path / "r/resumed/last.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
