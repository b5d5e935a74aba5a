"""RetinaVQA from the public graded fundus datasets: APTOS 2019, EyePACS, IDRiD, Messidor-2, DDR, or any CSV.

``python -m retina_vqa.build_dataset --source eyepacs --labels trainLabels.csv --images train --output_dir OUT``
writes a ``DatasetDict`` (train/validation/test, ``save_to_disk``) in the synthetic set's format, which
``run_vqa.py --dataset_dir OUT`` trains on unchanged. Its parts, in the order a build runs them:

- :mod:`.sources`: one reader per label file format, as the publishers ship them;
- :mod:`.checks`: label rows matched to image files, every image checked, all problems found up front;
- :mod:`.patients`: each image's patient from ``--patients FILE`` (any source) or Messidor-2's examination pairs;
- :mod:`.records`: the records and problems passed between stages, the report and its error;
- :mod:`.splits`: the source's split kept, or a split stratified by grade and grouped by patient (by image, with
  a warning, where no patient is known);
- :mod:`.rows`: the question/answer rows of an image (catalogue: :mod:`retina_vqa.questions`) and the columns;
- :mod:`.images`: the stored image bytes (reduced-scale JPEG decode, resize to ``--max_image_side``);
- :mod:`.writer`: streaming, parallel writing into a temporary folder, moved into place at the end;
- :mod:`.card`: the dataset card;
- :mod:`.build`: the phases, `build_dataset`; :mod:`.__main__`: the command line.
"""

from __future__ import annotations

from .build import BuildOptions, BuildResult, build_dataset
from .records import InputError, InputReport, LabelRecord, Problem
from .sources import SOURCES, CsvColumns, read_labels
from .splits import SPLITS, assign_splits

__all__ = [
    "SOURCES",
    "SPLITS",
    "BuildOptions",
    "BuildResult",
    "CsvColumns",
    "InputError",
    "InputReport",
    "LabelRecord",
    "Problem",
    "assign_splits",
    "build_dataset",
    "read_labels",
]
