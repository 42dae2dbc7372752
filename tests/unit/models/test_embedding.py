"""models/embedding.py and the Runner's outputs: features beside the logits, for every family on the unit path."""

import numpy as np
import pytest
import torch

from imgclf.core import ood
from imgclf.infer.runtime import open_model
from imgclf.models.checkpoint import load_checkpoint, ood_of, save_checkpoint


@pytest.mark.parametrize("name", ["test_tiny", "smallcnn"])
def test_features_are_normalised_and_leave_the_logits_alone(family_checkpoint, name):
    r = open_model(family_checkpoint(name))
    x = torch.randn(3, 3, r.preprocess.img_size, r.preprocess.img_size)
    out = r.outputs(x)
    assert set(out) == {"logits", "features"}
    torch.testing.assert_close(out["logits"], r.logits(x))
    torch.testing.assert_close(out["features"].norm(dim=1), torch.ones(3))
    logits, scores = r.ood_scores(x)
    assert set(scores) == {"msp", "energy"}


def test_a_bank_in_the_checkpoint_gives_the_knn_distance(family_checkpoint, tmp_path):
    path = family_checkpoint("smallcnn")
    r = open_model(path)
    x = torch.randn(5, 3, r.preprocess.img_size, r.preprocess.img_size)
    bank = r.features(x)
    ckpt = load_checkpoint(path)
    rec = ood.fit_record({"knn": np.zeros(5)}, accept=0.95, temperature=1.0, bank_size=5, k=2)
    ckpt["ood"] = {"record": rec, "bank": bank.half()}
    save_checkpoint(ckpt, str(tmp_path / "with_bank.pt"))
    r2 = open_model(str(tmp_path / "with_bank.pt"))
    assert ood_of(r2.ckpt)[0]["k"] == 2 and r2.ood == rec and r2.metadata()["ood"] == rec
    _, scores = r2.ood_scores(x)
    want = ood.knn_distance(bank.numpy(), bank.half().float().numpy(), 2)
    np.testing.assert_allclose(scores["knn"], want, atol=2e-3)


def test_a_damaged_ood_entry_is_refused(family_checkpoint, tmp_path):
    ckpt = load_checkpoint(family_checkpoint("smallcnn"))
    ckpt["ood"] = {"record": {"thresholds": {"knn": "x"}}, "bank": None}
    save_checkpoint(ckpt, str(tmp_path / "bad.pt"))
    with pytest.raises(Exception, match="'ood'"):
        load_checkpoint(str(tmp_path / "bad.pt"))
