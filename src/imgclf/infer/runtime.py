"""One way to run any model imgclf can load: a checkpoint, or a file written by `imgclf export`.

`open_model(path)` returns a Runner. Every runner knows its class names and preprocessing, so callers
(Predictor, evaluate, bench, serve) never need the original checkpoint next to an exported file.

How a file is recognised (`_recognise`: by content first, the extension only for ONNX, which has no magic bytes);
each export format is then opened by the opener its entry in core/formats.py's FORMATS names:
- a zip archive holding `*/extra/imgclf.json`: TorchScript (`*/code/` present) or `torch.export` (.pt2), or the
  format that metadata records when it is another of the table's (one that shares the container);
- any other zip archive written by `torch.save`: loaded with `weights_only=True` (plain data and tensors
  only) and dispatched on its `format` marker: an imgclf checkpoint, or a dynamic-int8 export (a quantized
  state dict that is rebuilt through the model registry and `quantize_dynamic`, so no pickled code runs);
- a `.onnx` file (or any file that parses as an ONNX model): onnxruntime, with the metadata in
  `metadata_props["imgclf"]`.
Every exported file carries the same metadata (see `exporting/export.py`'s `make_metadata`): format, model name,
classes, preprocessing and the training config.
"""

from __future__ import annotations

import json
import logging
import warnings
import zipfile
from dataclasses import dataclass, field, fields

import torch
from torch.ao.quantization import quantize_dynamic

from imgclf.compute.device import autocast, resolve_device, resolve_precision, to_layout
from imgclf.core import modelfile, onnxrt
from imgclf.core import ood as oodscores
from imgclf.core.artifact import Preprocess
from imgclf.core.errors import CheckpointError, UsageError
from imgclf.core.formats import FORMATS as EXPORT_FORMATS
from imgclf.core.modelfile import check_model_file, export_extra, is_onnx_path
from imgclf.core.multilabel import MULTILABEL, SINGLE, task_fields
from imgclf.models.checkpoint import (
    load_checkpoint,
    model_from_checkpoint,
    ood_of,
    task_of,
    temperature_of,
    validate_checkpoint,
)
from imgclf.models.embedding import FeatureOutputs
from imgclf.models.registry import build_model
from imgclf.models.tta import as_temperature, check_mode, shift_for, tta_logits, wrap

log = logging.getLogger(__name__)

META_NAME = "imgclf.json"  # extra file in TorchScript / pt2 archives; metadata_props key "imgclf" in ONNX
META_KEY = onnxrt.META_KEY


@dataclass
class Runner:
    """A loaded model. `logits(x)` takes a normalised float32 N x 3 x S x S batch and returns N x C float32 on cpu."""

    path: str
    format: str  # "checkpoint", or an export format name
    model_name: str
    classes: list[str]
    preprocess: Preprocess
    config: dict = field(default_factory=dict)  # the training config (data, data_root, val_fraction, seed, ...)
    extra: dict = field(default_factory=dict)  # anything format-specific worth showing (opset, precision, ...)
    # softmax(logits) are calibrated probabilities: `logits` divides by this temperature (a checkpoint's, from
    # imgclf calibrate; 1.0 if none), or an export has the division in its graph
    temperature: float | list[float] = 1.0  # a multi-label model's may be one per label
    tta: str | None = None  # test-time augmentation in `logits` (models/tta.py): None (its own), none, flip, flip-crop
    task: str = SINGLE  # core/multilabel.py: single (softmax) or multilabel (a sigmoid per label)
    thresholds: list[float] | None = None  # multilabel: a label is in an image's set when its score reaches it
    ood: dict | None = None  # core/ood.py's record: out-of-distribution thresholds fitted on validation

    def logits(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - implemented by subclasses
        raise NotImplementedError

    def outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Everything one forward pass gives, by core/ood.py's OUTPUTS names: "logits" always; "features" (N x D
        L2-normalised penultimate features) and "knn" (the k-th neighbour distance) where the model has them (a
        checkpoint; an ONNX export written with them)."""
        return {"logits": self.logits(x)}

    def gives_knn(self) -> bool:
        """Whether `outputs` includes the kNN distance: a checkpoint with a feature bank, an ONNX export with a "knn"
        output; not test-time augmentation around an export (it runs the file's logits only)."""
        return False

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """N x D L2-normalised penultimate features; a UsageError line for a model file that has none."""
        out = self.outputs(x)
        if "features" not in out:
            raise UsageError(
                f"'{self.path}' ({self.format}) gives no features: use the checkpoint, or an ONNX export of it "
                "made by this imgclf (imgclf export --format onnx)"
            )
        return out["features"]

    def ood_scores(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """(logits, {score name: N numbers}) of one forward pass: every out-of-distribution score this model can
        give (core/ood.py; knn only where it has a bank)."""
        out = self.outputs(x)
        return out["logits"], oodscores.scores({k: v.numpy() for k, v in out.items()}, self.task)

    def lanes(self) -> int:
        """How many `logits` calls may run at once, each on one core of its own (1: a call uses every core)."""
        return 1

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """The model's probabilities from its logits: softmax over classes, or one sigmoid per label."""
        return logits.sigmoid() if self.task == MULTILABEL else logits.softmax(1)

    def metadata(self) -> dict:
        more = {"task": self.task, "thresholds": self.thresholds} if self.task != SINGLE else {}
        if self.ood is not None:
            more["ood"] = self.ood
        return modelfile.metadata(self, temperature=self.temperature, tta=self.tta, **more)


class CheckpointRunner(Runner):
    """Eager PyTorch from an imgclf checkpoint (loaded with weights_only=True).

    `channels_last=False` runs the default NCHW layout, as the seed did (bench compares both). `temperature`:
    None for the checkpoint's own (1.0 if it has none), or one to use instead (calibrate fits T on T=1 logits).
    `tta`: test-time augmentation (models/tta.py). `model` is the bare network (what attacks and feature hooks need);
    `net` is what `logits` runs: the network with its temperature and test-time augmentation."""

    def __init__(
        self,
        path: str,
        *,
        device: str = "auto",
        precision: str = "auto",
        channels_last: bool = True,
        ckpt: dict | None = None,
        temperature: float | None = None,
        tta: str | None = None,
    ):
        ckpt = ckpt if ckpt is not None else load_checkpoint(path)
        super().__init__(
            path=str(path),
            format="checkpoint",
            model_name=ckpt["model"]["name"],
            classes=list(ckpt["classes"]),
            preprocess=Preprocess.from_dict(ckpt["preprocess"]),
            config=dict(ckpt.get("config", {})),
            temperature=temperature_of(ckpt) if temperature is None else float(temperature),
            tta=check_mode(tta),
        )
        self.task, self.thresholds = task_of(ckpt)
        self.ood, self.bank = ood_of(ckpt)
        self._tapped = None  # FeatureOutputs around `net`, made on the first `outputs`
        self.ckpt = ckpt
        self.device = resolve_device(device)
        self.amp = resolve_precision(precision, self.device)
        self.channels_last = channels_last
        self.model = model_from_checkpoint(ckpt, self.device, channels_last=channels_last)
        self.net = wrap(
            self.model, temperature=self.temperature, tta=self.tta, img_size=self.preprocess.img_size, task=self.task
        )
        self.extra = {
            "device": str(self.device),
            "precision": str(self.amp).replace("torch.", "") if self.amp else "fp32",
            "layout": "channels_last" if channels_last else "NCHW",
        }

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.amp):
            return self.net(to_layout(x.to(self.device), self.channels_last)).float().cpu()

    def gives_knn(self) -> bool:
        return self.bank is not None

    @torch.no_grad()
    def outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self._tapped is None:
            bank = self.bank.to(self.device) if self.bank is not None else None
            self._tapped = FeatureOutputs(self.net, self.model, self.model_name, bank, (self.ood or {}).get("k"))
        with autocast(self.device, self.amp):
            got = self._tapped(to_layout(x.to(self.device), self.channels_last))
        return {name: t.float().cpu() for name, t in zip(oodscores.OUTPUTS, got)}


# --------------------------------------------------------------------------------------------- exported files


def _fields_from_meta(path: str, meta: dict, fmt: str) -> dict:
    oodscores.check_record(meta.get("ood"), f"'{path}'")  # a damaged record is its own line
    try:
        task, thresholds = task_fields(meta, len(meta["classes"]), where=f"'{path}'")
        return dict(
            task=task,
            thresholds=thresholds,
            path=str(path),
            format=fmt,
            model_name=meta["model"],
            classes=list(meta["classes"]),
            preprocess=Preprocess.from_dict(meta["preprocess"]),
            config=dict(meta.get("config") or {}),
            temperature=as_temperature(meta.get("temperature")),  # in the graph already, recorded for people
            tta=meta.get("tta"),
            ood=oodscores.check_record(meta.get("ood"), f"'{path}'"),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"'{path}' has incomplete imgclf metadata (missing {e}): export it again with imgclf export"
        ) from None


class TorchScriptRunner(Runner):
    """A TorchScript archive (`torch.jit.save`; the seed's format). torch.jit is deprecated in current PyTorch:
    kept because existing deployments load it; `pt2` is the modern replacement."""

    def __init__(self, path: str, meta: dict, *, device: str = "auto"):
        super().__init__(**_fields_from_meta(path, meta, "torchscript"))
        self.device = resolve_device(device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "torch.jit is deprecated": we know, see above
            self.module = torch.jit.load(str(path), map_location=self.device)
        self.module.eval()
        self.extra = export_extra(meta, device=str(self.device), precision="fp32")

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.to(self.device)).float().cpu()


class ExportedProgramRunner(Runner):
    """A `torch.export` program (.pt2), run as the GraphModule `ExportedProgram.module()` returns.

    Loading deserialises an ATen graph and tensors, not Python code."""

    def __init__(self, path: str, meta: dict, *, device: str = "auto"):
        super().__init__(**_fields_from_meta(path, meta, "pt2"))
        self.device = resolve_device(device)
        try:
            ep = torch.export.load(str(path))
        except Exception as e:
            raise CheckpointError(
                f"cannot load torch.export program '{path}' ({str(e).splitlines()[0][:160]}): "
                f"export it again with this version of PyTorch"
            ) from None
        self.module = ep.module().to(self.device)
        self.extra = export_extra(meta, device=str(self.device), precision="fp32")

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.to(self.device)).float().cpu()


class DynamicInt8Runner(Runner):
    """`quantize_dynamic` on the Linear layers (the seed's int8), stored as a quantized state dict.

    Rebuilt as registry model -> quantize_dynamic -> load_state_dict, so the file loads with
    weights_only=True like a checkpoint. Quantized kernels are CPU-only: it always runs on the CPU."""

    def __init__(self, path: str, blob: dict):
        meta = blob.get("meta") or {}
        super().__init__(**_fields_from_meta(path, meta, "dynamic-int8"))
        model = build_model(self.model_name, len(self.classes), pretrained=False).eval()
        self.module = quantize_linear_dynamic(model)
        try:
            self.module.load_state_dict(blob["state_dict"])
        except (RuntimeError, KeyError) as e:
            raise CheckpointError(
                f"'{path}' does not fit model {self.model_name} ({str(e).splitlines()[0][:160]})"
            ) from None
        # a quantized state dict holds no graph: the temperature and TTA of its metadata are applied here
        self.net = wrap(
            self.module, temperature=self.temperature, tta=self.tta, img_size=self.preprocess.img_size, task=self.task
        )
        self.extra = export_extra(meta, device="cpu", precision="int8 (Linear weights), fp32 elsewhere")

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.cpu()).float()


def quantize_linear_dynamic(model: torch.nn.Module) -> torch.nn.Module:
    """The seed's dynamic quantization: int8 weights for nn.Linear, activations quantized on the fly."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization deprecation notices
        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def onnx_session_options(threads: int | None = None, *, spin: bool = True):
    """onnxruntime options (`onnxrt.session_options`, shared with the slim server) with intra-op threads =
    PyTorch's thread count (`onnxrt.default_threads`: the cores PyTorch would use, honouring OMP_NUM_THREADS /
    torch.set_num_threads)."""
    return onnxrt.session_options(int(threads or onnxrt.default_threads()), spin=spin)


class OnnxRunner(Runner):
    """An ONNX model in an onnxruntime InferenceSession (CUDA provider when asked for and available), opened
    as the slim server opens it (`onnxrt.open_export`)."""

    def __init__(self, path: str, *, device: str = "auto", threads: int | None = None, spin: bool = True):
        # threads 0 or None: PyTorch's thread count (this process runs PyTorch), never onnxruntime's own
        self.session, meta, runs_on = onnxrt.open_export(path, device=device, threads=threads or None, spin=spin)
        super().__init__(**_fields_from_meta(path, meta, meta.get("format", "onnx")))
        self.input_name = self.session.get_inputs()[0].name
        self.extra = export_extra(meta, **runs_on)
        # one intra-op thread on the CPU: as many runs at once as PyTorch would use cores (an onnxruntime session
        # runs concurrent calls), each run on a core of its own
        self._lanes = lane_count() if runs_on["device"] == "cpu" and threads == 1 else 1

    def lanes(self) -> int:
        return self._lanes

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.outputs(x)["logits"]

    def gives_knn(self) -> bool:
        return any(o.name == "knn" for o in self.session.get_outputs())

    def outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The graph's outputs by name: "logits" (the first, whatever the file calls it), and "features" and "knn"
        where the export wrote them (core/ood.py's OUTPUTS)."""
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        got = self.session.run(None, {self.input_name: arr})
        names = [o.name for o in self.session.get_outputs()]
        out = {"logits": torch.from_numpy(got[0]).float()}
        out.update({n: torch.from_numpy(v).float() for n, v in zip(names[1:], got[1:]) if n in oodscores.OUTPUTS})
        return out


def lane_count() -> int:
    """How many single-threaded runs of an ONNX session to have at once on the CPU (predict's lanes): PyTorch's
    thread count, the cores it would use (honouring OMP_NUM_THREADS and torch.set_num_threads)."""
    return max(1, torch.get_num_threads())


class TTARunner(Runner):
    """Test-time augmentation (models/tta.py) around an exported file's runner: the file's own calibrated logits on
    each view, their probabilities averaged. (A checkpoint does it inside its network instead, and `imgclf
    export --tta` puts it in the exported graph.)"""

    def __init__(self, inner: Runner, tta: str):
        super().__init__(**{f.name: getattr(inner, f.name) for f in fields(Runner)})
        self.inner, self.tta = inner, tta
        self.extra = {**inner.extra, "tta_outside_graph": True}

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return tta_logits(self.inner.logits, x, self.tta, shift_for(self.preprocess.img_size), task=self.task)

    def lanes(self) -> int:  # views made in PyTorch would start its threads in every lane: lanes only without them
        return self.inner.lanes() if self.tta == "none" else 1


def _with_tta(runner: Runner, tta: str | None) -> Runner:
    """An exported file's runner with `tta` (checked), which it cannot have twice."""
    tta = check_mode(tta)
    if tta is None:
        return runner
    if runner.tta is not None:
        raise UsageError(
            f"'{runner.path}' was exported with --tta {runner.tta} in its graph: drop --tta, or export the "
            f"checkpoint again with the test-time augmentation you want"
        )
    return TTARunner(runner, tta)


# --------------------------------------------------------------------------------------------- recognising files


def _zip_meta(path: str) -> tuple[str | None, dict | None]:
    """('torchscript' | 'pt2' | 'torch-save', metadata or None) for a zip archive, (None, None) otherwise."""
    if not zipfile.is_zipfile(path):
        return None, None
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        meta_names = [n for n in names if n.endswith("/extra/" + META_NAME)]
        meta = json.loads(z.read(meta_names[0]).decode()) if meta_names else None
        if any("/code/" in n for n in names) and any(n.endswith("/constants.pkl") for n in names):
            return "torchscript", meta
        if any(n.endswith("/archive_format") for n in names) or any(n.endswith("/models/model.json") for n in names):
            return "pt2", meta
        return "torch-save", meta


def open_model(
    path: str,
    *,
    device: str = "auto",
    precision: str = "auto",
    format: str | None = None,
    spin: bool = True,
    tta: str | None = None,
    threads: int | None = None,
) -> Runner:
    """A Runner for `path`: an imgclf checkpoint, or a file written by `imgclf export` (any format).

    `precision` applies to checkpoints (autocast); an exported file runs in the precision it was exported in.
    `format` ("checkpoint" or an export format) skips recognition (export uses it on its temporary files).
    `spin=False`: onnxruntime's threads sleep between runs instead of spin-waiting (see `onnx_session_options`).
    `threads`: an ONNX file's intra-op threads (None: `onnxrt.default_threads()`); `threads=1` on the CPU gives a
    runner whose `lanes()` is that count, to run so many batches at once (Predictor does).
    `tta`: test-time augmentation (models/tta.py: none, flip, flip-crop; None: the model's own). A checkpoint's runner
    applies its temperature (from imgclf calibrate) in `logits`; an exported file has it in its graph.
    Each export format is opened by the opener its entry in core/formats.py's FORMATS names."""
    path = str(path)
    check_model_file(path)  # before a byte is read: a FIFO or a device would block the reads below
    fmt, found = (format, None) if format is not None else _recognise(path)
    if fmt == "checkpoint":
        return CheckpointRunner(path, device=device, precision=precision, ckpt=found, tta=tta)
    if fmt not in EXPORT_FORMATS:
        raise CheckpointError(
            f"'{path}': unknown model format '{fmt}' (formats: checkpoint, {', '.join(EXPORT_FORMATS)})"
        )
    return _with_tta(EXPORT_FORMATS[fmt].open(path, found, device=device, spin=spin, threads=threads), tta)


def _recognise(path: str) -> tuple[str, object]:
    """(format, what reading it found: the metadata of a zip archive, the checkpoint or the dynamic-int8 dict
    of a torch.save file, else None), from the content (the extension only for ONNX, which has no magic bytes)."""
    if is_onnx_path(path):
        return "onnx", None
    kind, meta = _zip_meta(path)
    if kind in ("torchscript", "pt2"):
        if meta is None:
            raise CheckpointError(
                f"'{path}' is a {kind} archive without imgclf metadata (class names, preprocessing): "
                f"export it with imgclf export"
            )
        # the format its metadata records, where it names one of the table's: a format that shares a container
        # (another kind of TorchScript, say) is opened by its own opener without `format=`
        recorded = meta.get("format") if isinstance(meta, dict) else None
        return (recorded if recorded in EXPORT_FORMATS else kind), meta
    if kind is None and _looks_like_onnx(path):
        return "onnx", None
    # torch.save archives: a checkpoint or a dynamic-int8 export, told apart by their format marker
    blob = _load_plain(path)
    if blob is None:
        return "checkpoint", load_checkpoint(path)  # raises the precise reason (unsafe pickle, unreadable, ...)
    if isinstance(blob, dict) and blob.get("format") == DYNAMIC_INT8_FORMAT:
        return "dynamic-int8", blob
    return "checkpoint", validate_checkpoint(blob, path)


# Openers, named by the export formats table: (path, what recognising it found or None, device, spin, threads) ->
# Runner; only ONNX's onnxruntime takes `threads` (the others run on PyTorch's threads).


def open_onnx(path: str, found, *, device: str, spin: bool, threads: int | None = None) -> Runner:
    return OnnxRunner(path, device=device, spin=spin, threads=threads)


def open_torchscript(path: str, found, *, device: str, spin: bool, threads: int | None = None) -> Runner:
    return TorchScriptRunner(path, found if found is not None else _zip_meta(path)[1] or {}, device=device)


def open_pt2(path: str, found, *, device: str, spin: bool, threads: int | None = None) -> Runner:
    return ExportedProgramRunner(path, found if found is not None else _zip_meta(path)[1] or {}, device=device)


def open_dynamic_int8(path: str, found, *, device: str, spin: bool, threads: int | None = None) -> Runner:
    blob = found if found is not None else _load_plain(path)
    if not (isinstance(blob, dict) and blob.get("format") == DYNAMIC_INT8_FORMAT):
        raise CheckpointError(f"'{path}' is not a dynamic-int8 export: export it again with imgclf export")
    return DynamicInt8Runner(path, blob)


DYNAMIC_INT8_FORMAT = "imgclf-dynamic-int8"


def _load_plain(path: str):
    """torch.load(weights_only=True), or None to let load_checkpoint produce its own precise error."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # quantized-tensor and TypedStorage deprecation notices (dynamic-int8)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None


def _looks_like_onnx(path: str) -> bool:
    """An ONNX file under another name: parses as a ModelProto with a graph (random bytes rarely do)."""
    try:
        import onnx  # noqa: PLC0415 - optional package (the onnx extra), needed only for a file like this

        m = onnx.load(path, load_external_data=False)
        return m.ir_version > 0 and len(m.graph.node) > 0
    except Exception:
        return False
