"""Read a GLUE task into memory: from a local folder (GLUE TSV layout, or csv / json / jsonl / parquet files
with the Hugging Face column names) or from the `datasets` cache (`nyu-mll/glue`; nothing downloads offline).

Every split becomes a `GlueSplit`: the one or two text columns, the labels (int ids; float scores for STS-B)
and any other string columns the file has (MNLI's `genre`, usable by `shard --mode category`).
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fedctl.data.glue.tasks import DEMO, GlueSpec, get_spec
from fedctl.errors import FedctlError

_TABLE_EXTS = (".parquet", ".jsonl", ".json", ".csv", ".tsv")
# Split names as files may spell them, in order of preference.
_SPLIT_FILES = {
    "train": ("train",),
    "validation": ("validation", "dev", "val"),
    "validation_matched": ("validation_matched", "dev_matched"),
    "validation_mismatched": ("validation_mismatched", "dev_mismatched"),
}


@dataclass
class GlueSplit:
    texts: list[list[str]]  # one list per text column (1 or 2), all of equal length
    labels: list[float] | list[int]
    extra: dict[str, list[str]] = field(default_factory=dict)  # other columns, e.g. MNLI's genre

    def __len__(self) -> int:
        return len(self.labels)

    def column(self, key: str) -> list:
        """`label` or an extra column (for category sharding)."""
        if key == "label":
            return list(self.labels)
        if key not in self.extra:
            raise FedctlError(
                f"the data has no column '{key}'",
                f"use --category-key label{''.join(', ' + k for k in self.extra)}",
            )
        return self.extra[key]


def load_glue(
    task: str | None,
    data_dir: str | Path | None = None,
    *,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, GlueSplit]:
    """Splits `train` and the task's validation splits (`validation`, or MNLI's `validation_matched` and
    `validation_mismatched`). `task` None or 'demo': the project's generated sentiment task."""
    spec = get_spec(task)
    if spec is DEMO:
        from fedctl.data.glue.demo import sentiment_demo

        return sentiment_demo(seed=seed)
    if data_dir is not None:
        return _load_local(spec, Path(data_dir), log)
    return _load_hub(spec)


def _label(spec: GlueSpec, raw: object, where: str) -> float | int:
    text = str(raw).strip()
    if spec.is_regression:
        try:
            return float(text)
        except ValueError:
            raise FedctlError(f"{where}: score {text!r} is not a number", "STS-B scores are floats in [0, 5]") from None
    if spec.label_names and text in spec.label_names:
        return spec.label_names.index(text)
    try:
        value = int(float(text))
    except ValueError:
        valid = ", ".join(spec.label_names) or ", ".join(map(str, range(spec.num_labels)))
        raise FedctlError(f"{where}: label {text!r} is not one of {valid}", "check the label column of the file") from None
    if not 0 <= value < spec.num_labels:
        raise FedctlError(f"{where}: label {value} is outside 0..{spec.num_labels - 1}", f"{spec.name} has {spec.num_labels} classes")
    return value


def _task_dir(spec: GlueSpec, data_dir: Path) -> Path:
    """data_dir itself, or its subfolder for the task (GLUE root: SST-2/, or sst2/)."""
    if not data_dir.is_dir():
        raise FedctlError(f"--data-dir {data_dir} is not a directory", "pass the GLUE root or the task's folder")
    for name in (spec.tsv_dir, spec.name):
        for child in data_dir.iterdir():
            if name and child.is_dir() and child.name.lower() == name.lower():
                return child
    return data_dir


def _find(task_dir: Path, split: str) -> Path | None:
    for stem in _SPLIT_FILES[split]:
        for ext in _TABLE_EXTS:
            path = task_dir / f"{stem}{ext}"
            if path.is_file():
                return path
    return None


def _load_local(spec: GlueSpec, data_dir: Path, log: Callable[[str], None]) -> dict[str, GlueSplit]:
    task_dir = _task_dir(spec, data_dir)
    splits = {}
    for split in ("train", *spec.val_splits):
        path = _find(task_dir, split)
        if path is None:
            names = " or ".join(f"{s}.tsv/.csv/.json/.parquet" for s in _SPLIT_FILES[split][:2])
            raise FedctlError(
                f"no {split} file for GLUE task {spec.name} in {task_dir}",
                f"expected {names} (GLUE download layout, or Hugging Face column names)",
            )
        splits[split] = _read_tsv(spec, path, log) if path.suffix == ".tsv" else _read_table(spec, path)
    return splits


def _read_tsv(spec: GlueSpec, path: Path, log: Callable[[str], None]) -> GlueSplit:
    # csv module rather than pandas: GLUE's TSVs contain unbalanced quotes (QUOTE_NONE), and a few QQP
    # rows have too few fields, which we skip and count instead of failing.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with path.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows:
        raise FedctlError(f"{path} is empty", "re-download the GLUE task")
    if spec.tsv_header:
        header, body = rows[0], rows[1:]
        try:
            text_cols = [header.index(c) for c in spec.tsv_text]
            label_col = header.index(spec.tsv_label)
        except ValueError:
            want = ", ".join((*spec.tsv_text, spec.tsv_label))
            raise FedctlError(
                f"{path}: header {header[:6]} lacks the {spec.name} columns ({want})",
                f"pass the {spec.tsv_dir} folder of the GLUE download",
            ) from None
        extra_cols = {name: i for i, name in enumerate(header) if name in spec.categories and name != "label"}
    else:  # CoLA: source, label, original label, sentence
        text_cols, label_col, extra_cols = [3], 1, {}
    width = 1 + max([label_col, *text_cols, *extra_cols.values()])
    texts: list[list[str]] = [[] for _ in text_cols]
    labels, extra, skipped = [], {k: [] for k in extra_cols}, 0
    for line, row in enumerate(body if spec.tsv_header else rows, start=2 if spec.tsv_header else 1):
        if len(row) < width or row[label_col].strip() in ("", "-"):  # MNLI marks no-consensus pairs "-"
            skipped += 1
            continue
        labels.append(_label(spec, row[label_col], f"{path}:{line}"))
        for out, col in zip(texts, text_cols):
            out.append(row[col])
        for name, col in extra_cols.items():
            extra[name].append(row[col])
    if skipped:
        log(f"{path}: skipped {skipped} malformed or unlabelled row(s)")
    if not labels:
        raise FedctlError(f"{path} holds no labelled rows", "re-download the GLUE task")
    return GlueSplit(texts, labels, extra)


def _read_table(spec: GlueSpec, path: Path) -> GlueSplit:
    import pandas as pd

    try:
        if path.suffix == ".parquet":
            df = pd.read_parquet(path)
        elif path.suffix in (".json", ".jsonl"):
            text = path.read_text(encoding="utf-8").lstrip()
            df = pd.read_json(path, lines=not text.startswith("["))
        else:
            df = pd.read_csv(path, keep_default_na=False)
    except Exception as exc:  # pandas/pyarrow raise many types for a corrupt file
        raise FedctlError(f"cannot read {path}: {type(exc).__name__}: {str(exc)[:120]}", "check the file") from None
    cols = list(df.columns)
    for text_keys, label_key in ((spec.text_keys, "label"), (spec.tsv_text, spec.tsv_label)):
        if text_keys and all(c in cols for c in (*text_keys, label_key)):
            break
    else:
        raise FedctlError(
            f"{path}: columns {cols[:8]} lack the {spec.name} columns ({', '.join(spec.text_keys)}, label)",
            "name the columns as the Hugging Face GLUE dataset does",
        )
    labels = [_label(spec, v, str(path)) for v in df[label_key].tolist()]
    if not spec.is_regression and any(v < 0 for v in labels):
        raise FedctlError(f"{path} holds unlabelled rows (label -1, e.g. a test split)", "use the train/validation files")
    extra = {c: [str(v) for v in df[c].tolist()] for c in spec.categories if c != "label" and c in cols}
    return GlueSplit([[str(v) for v in df[c].tolist()] for c in text_keys], labels, extra)


def _load_hub(spec: GlueSpec) -> dict[str, GlueSplit]:
    try:
        import datasets

        ds = datasets.load_dataset("nyu-mll/glue", spec.name)
    except Exception as exc:  # offline and not cached: datasets raises ConnectionError / OfflineModeIsEnabled / ...
        raise FedctlError(
            f"GLUE task {spec.name} is not in the local datasets cache ({type(exc).__name__})",
            f"pass --data-dir DIR with the GLUE files (e.g. {spec.tsv_dir}/train.tsv), or run "
            f"`datasets.load_dataset('nyu-mll/glue', '{spec.name}')` once on a machine with network",
        ) from None
    splits = {}
    for split in ("train", *spec.val_splits):
        part = ds[split]
        splits[split] = GlueSplit([list(part[c]) for c in spec.text_keys], list(part["label"]))
    return splits
