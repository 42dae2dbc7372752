"""The monitored metric (--monitor), and early stopping on it (--patience)."""

from __future__ import annotations

from imgclf.core.callback import Callback

MONITOR_MODE = {
    "val_loss": "min",
    "val_acc": "max",
    "val_macro_f1": "max",
    "val_robust_acc": "max",
    "val_mAP": "max",  # multi-label (training/multilabel.py)
    "val_micro_f1": "max",
}


def improves(value: float, best: float | None, monitor: str) -> bool:
    if best is None:
        return True
    return value < best if MONITOR_MODE[monitor] == "min" else value > best


def monitored(row: dict, monitor: str) -> float:
    """The --monitor metric of an epoch's row: of the model, or of its EMA when that is better."""
    ema = row.get("ema_" + monitor)
    return ema if ema is not None and improves(ema, row[monitor], monitor) else row[monitor]


class EarlyStopping(Callback):
    """--patience N: stop when the monitored metric (of the model or its EMA, whichever is better) has not
    improved for N epochs in a row."""

    order = 50
    state_key = "early_stopping"

    def __init__(self, patience: int, monitor: str):
        self.patience, self.monitor = patience, monitor
        self.best, self.bad_epochs = None, 0

    def on_validation_end(self, trainer, row: dict) -> None:
        value = monitored(row, self.monitor)
        if improves(value, self.best, self.monitor):
            self.best, self.bad_epochs = value, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs >= self.patience:
            trainer.stop(
                f"early stopping: {self.monitor} has not improved on {self.best:.4f} for {self.patience} "
                f"epoch{'s' * (self.patience != 1)} (--patience {self.patience})"
            )

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_epochs = state["best"], int(state["bad_epochs"])
