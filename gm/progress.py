"""Progress bars for long loops, written to the job's log (stderr) at a modest rate."""
from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm


def progress(iterable, *, desc: str, total: int | None = None):
    """tqdm over ``iterable``; silent when GM_PROGRESS=0 (e.g. in tests)."""
    disable = os.environ.get("GM_PROGRESS", "1") == "0"
    return tqdm(iterable, desc=desc, total=total, file=sys.stderr, mininterval=5.0,
                disable=disable, leave=False, dynamic_ncols=False, ascii=True)
