"""The end-to-end demo behind ``wsnodule demo``, in two parts, each a library call a user can script.

* Real CT (:mod:`~wsnodule_core.demo.real`): the shipped LIDC-IDRI-0001 crop segmented with the
  shipped default model, the training-free blob filter and ``medsam-box`` (box from the reader label),
  each scored against the readers' label.
* Training from weak labels (:mod:`~wsnodule_core.demo.phantom`): NAM trained from slice labels on a
  built-in phantom set, its test split segmented and evaluated.

:func:`run_demo` runs both (or one) and writes ``metrics.json`` and ``report.md``.
"""

from wsnodule_core.demo.common import BLOB_METHOD
from wsnodule_core.demo.phantom import NAM_METHOD, PhantomPart, run_phantom
from wsnodule_core.demo.real import BOX_MARGIN_PX, RealPart, box_row, default_row, label_box, run_real
from wsnodule_core.demo.run import DemoResult, check_out_dir, run_demo

#: The reference row's name (kept for scripts written against the one-part demo).
METHOD = BLOB_METHOD

__all__ = ["BLOB_METHOD", "BOX_MARGIN_PX", "METHOD", "NAM_METHOD", "DemoResult", "PhantomPart", "RealPart",
           "box_row", "check_out_dir", "default_row", "label_box", "run_demo", "run_phantom", "run_real"]
