"""--mixup and --cutmix as a callback: each training batch mixed before it moves to the device."""

from __future__ import annotations

from imgclf.core.callback import Callback
from imgclf.data.mixing import Mixer


class Mixing(Callback):
    """Each training batch mixed (data/mixing.py), its draws from the epoch's augmentation generator while the
    batch is still on the CPU, so that a resumed run draws the same ones (before --adv-train's attack, which
    runs on the device)."""

    order = 15

    def __init__(self, mixer: Mixer):
        self.mixer = mixer

    def on_batch(self, trainer, x, y):
        return self.mixer(x, y, trainer.aug)
