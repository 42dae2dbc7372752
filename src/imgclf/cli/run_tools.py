"""What `imgclf samples`, `env` and `models` run. Imported only when one of them runs (cli/commands.py)."""

from __future__ import annotations

import json
import logging

from imgclf.cli.options import EnvOptions, ModelsOptions, SamplesOptions
from imgclf.compute.machine import format_env, machine_report
from imgclf.core.errors import UsageError
from imgclf.core.options import check_output_folder
from imgclf.data.samples import save_samples
from imgclf.models.registry import get_spec, list_models
from imgclf.training.api import probe_precision

log = logging.getLogger(__name__)


def samples_command(o: SamplesOptions) -> int:
    check_output_folder(o.out, "--out")
    paths = save_samples(o.data, o.out, split=o.split, n=o.n, data_root=o.data_root)
    log.info("wrote %d images to %s", len(paths), o.out)
    return 0


def env_command(o: EnvOptions) -> int:
    probe = None
    if o.probe is not None:
        get_spec(o.probe)  # an unknown name: one line with 'did you mean', before any work
        probe = probe_precision(o.probe, o.img_size, o.batch_size, o.refresh)
    r = machine_report(probe)
    print(json.dumps(r, indent=2) if o.json else format_env(r))
    return 0


def models_command(o: ModelsOptions) -> int:
    if o.timm is not None:
        return timm_models(o)
    rows = list_models()
    if o.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':<20} {'params':>12} {'input':>6}  {'pretrained (offline)':<22} description")
    for r in rows:
        print(f"{r['name']:<20} {r['params']:>12,} {r['img_size']:>6}  {r['pretrained']:<22} {r['description']}")
    print("params are counted from the model with a 1000-class head; the head is replaced for your classes")
    return 0


def timm_models(o: ModelsOptions) -> int:
    """`imgclf models --timm PATTERN`: timm's models matching PATTERN, and whether their weights are offline."""
    rows = list_models(timm=o.timm)
    if o.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        raise UsageError(f"no timm model matches '{o.timm}': patterns take * wildcards, as in 'resnet*' or '*vit*'")
    width = max(len(r["name"]) for r in rows)
    print(f"{'model':<{width}}  pretrained (offline)")
    for r in rows:
        print(f"{r['name']:<{width}}  {r['pretrained']}")
    return 0
