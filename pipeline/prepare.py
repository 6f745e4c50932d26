"""Stage prepare: build the fixed train/validation/test splits of a dataset.

    python -m pipeline.prepare --dataset D

Reads data/raw/<dataset>/, writes data/processed/<dataset>.npz (see gm/data/splits.py).
"""
from __future__ import annotations

if __name__ == "__main__":   # a child of the warm-start server when there is one (pipeline/warm.py)
    from pipeline.warm import delegate
    delegate("pipeline.prepare")


from gm.data import dataset_spec
from pipeline import common
from pipeline.common import log


def run(args, params) -> None:
    opts = params["datasets"][args.dataset] or {}
    splits = dataset_spec(args.dataset).prepare(common.raw_dir(args.dataset), **opts)
    digest = splits.save(common.processed_path(args.dataset))
    log.info("prepared %s: %s, sha256 %s", args.dataset,
             {k: tuple(v.shape) for k, v in splits.x.items()}, digest)


def main(argv=None) -> int:
    return common.run_stage(run, argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    common.process_main(main)
