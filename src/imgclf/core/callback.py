"""Named hooks into the training loop, and the callbacks built on them.

The Trainer calls every callback's hooks in list order, at these points of `fit()`:

    on_fit_start          once, before the first epoch (after a resume too: `trainer.state.epoch` says where)
    on_epoch_start        before each epoch's training steps (model in train mode, epoch seeds set)
    on_step_start         before each optimisation step's forward pass
    on_after_backward     gradients ready, not yet clipped or applied; `trainer.loss` is the step's loss
    on_step_end           after the optimizer step (and the EMA update); `trainer.state.step` counts steps done
    on_train_epoch_end    after the epoch's last step, before validation
    on_validation_end     with the epoch's metrics row, before the checkpoints are written
    on_fit_end            after the last epoch, before the best checkpoint is evaluated again

A callback with state that resume must restore returns it from `state_dict()` (plain types and tensors) under
its `name`; `TrainState` saves and restores it with everything else. To end a run early a callback calls
`trainer.stop(reason)`: the epoch finishes, is saved, and the reason goes to the log and results.json.

Model-specific behaviour (airnet's whitening) comes from the model's registry entry (`ModelSpec.callbacks`),
so a newcomer finds it beside the model, not as an attribute the loop probes for.
"""

from __future__ import annotations


class Callback:
    name = "callback"

    def on_fit_start(self, trainer) -> None: ...
    def on_epoch_start(self, trainer) -> None: ...
    def on_step_start(self, trainer) -> None: ...
    def on_after_backward(self, trainer) -> None: ...
    def on_step_end(self, trainer) -> None: ...
    def on_train_epoch_end(self, trainer) -> None: ...
    def on_validation_end(self, trainer, row: dict) -> None: ...
    def on_fit_end(self, trainer) -> None: ...

    def state_dict(self) -> dict | None:
        return None

    def load_state_dict(self, state: dict) -> None: ...
