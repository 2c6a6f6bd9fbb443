"""Copy a batch's requests into one array with the GIL released once (``concatenate_into``).

``numpy.concatenate(parts, out=out)`` takes the GIL back after every part's copy; a merge runs on a
worker thread beside the event loop, which holds the GIL most of the time under load, and each take can
wait the interpreter's whole switch interval (5 ms). For image-sized requests that made the merge the
slowest step of a batch (36 ms for 72 ResNet-50 images on a GPU machine, against 31 ms of model). The C
helper (``_gather_native``, built with the other native extensions) takes every part's buffer, then
copies them all without the GIL; where it is not built, or a part is not a plain C-contiguous array of
``out``'s type, numpy does it as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

try:
    from sidecar.batching._gather_native import gather as _gather
except ImportError:  # not built (no C compiler at install)
    _gather = None

NATIVE = _gather is not None
GATHER_MIN_BYTES = 1 << 18  # below this numpy copies each part without releasing the GIL: it is as good


def concatenate_into(out: np.ndarray, parts: Sequence[np.ndarray]) -> None:
    """``numpy.concatenate(parts, out=out)`` for parts whose rows together are exactly ``out``'s."""
    if _gather is not None and out.nbytes >= GATHER_MIN_BYTES and out.flags.c_contiguous and out.flags.writeable:
        dtype, row_shape = out.dtype, out.shape[1:]
        plain = all(p.dtype == dtype and p.shape[1:] == row_shape and p.flags.c_contiguous for p in parts)
        if plain and sum(p.shape[0] for p in parts) == out.shape[0]:
            _gather(out, parts)
            return
    np.concatenate(parts, out=out)
