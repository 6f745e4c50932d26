"""Stage fetch: download or copy a dataset's raw files into data/raw/<dataset>/.

    python -m pipeline.fetch --dataset D
"""
from __future__ import annotations

if __name__ == "__main__":   # a child of the warm-start server when there is one (pipeline/warm.py)
    from pipeline.warm import delegate
    delegate("pipeline.fetch")


from gm.data import dataset_spec
from pipeline import common


def run(args, params) -> None:
    opts = params["datasets"][args.dataset] or {}
    dataset_spec(args.dataset).fetch(common.raw_dir(args.dataset), **opts)


def main(argv=None) -> int:
    return common.run_stage(run, argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    common.process_main(main)
