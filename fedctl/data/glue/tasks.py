"""The nine GLUE tasks (Wang et al. 2019): text columns, label sets, official metrics, file layouts.

Column names follow the Hugging Face `nyu-mll/glue` dataset; `tsv_*` fields describe the original GLUE
download (`<GLUE>/<SST-2>/train.tsv`, `dev.tsv`, MNLI's `dev_matched.tsv` / `dev_mismatched.tsv`).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from fedctl.errors import FedctlError


@dataclass(frozen=True)
class GlueSpec:
    name: str  # Hugging Face config name: sst2, mnli, ...
    text_keys: tuple[str, ...]  # one or two text columns (HF names)
    num_labels: int  # 1 = regression (STS-B)
    metrics: tuple[str, ...]  # reported as val_<metric>
    val_splits: tuple[str, ...] = ("validation",)
    tsv_dir: str = ""  # folder name in the GLUE download
    tsv_text: tuple[str, ...] = ()  # the text columns' names in the TSV header
    tsv_label: str = "label"
    tsv_header: bool = True  # CoLA's train/dev files have none
    label_names: tuple[str, ...] = ()  # string labels in TSV files, in HF's id order
    categories: tuple[str, ...] = field(default=("label",))  # keys `shard --mode category` can split by

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1


_NLI = ("entailment", "not_entailment")
GLUE_TASKS: dict[str, GlueSpec] = {
    s.name: s
    for s in (
        GlueSpec("cola", ("sentence",), 2, ("matthews", "accuracy"), tsv_dir="CoLA", tsv_header=False),
        GlueSpec("sst2", ("sentence",), 2, ("accuracy",), tsv_dir="SST-2", tsv_text=("sentence",)),
        GlueSpec("mrpc", ("sentence1", "sentence2"), 2, ("f1", "accuracy"), tsv_dir="MRPC",
                 tsv_text=("#1 String", "#2 String"), tsv_label="Quality"),
        GlueSpec("qqp", ("question1", "question2"), 2, ("f1", "accuracy"), tsv_dir="QQP",
                 tsv_text=("question1", "question2"), tsv_label="is_duplicate"),
        GlueSpec("stsb", ("sentence1", "sentence2"), 1, ("pearson", "spearman"), tsv_dir="STS-B",
                 tsv_text=("sentence1", "sentence2"), tsv_label="score"),
        GlueSpec("mnli", ("premise", "hypothesis"), 3, ("accuracy",),
                 val_splits=("validation_matched", "validation_mismatched"), tsv_dir="MNLI",
                 tsv_text=("sentence1", "sentence2"), tsv_label="gold_label",
                 label_names=("entailment", "neutral", "contradiction"), categories=("label", "genre")),
        GlueSpec("qnli", ("question", "sentence"), 2, ("accuracy",), tsv_dir="QNLI",
                 tsv_text=("question", "sentence"), label_names=_NLI),
        GlueSpec("rte", ("sentence1", "sentence2"), 2, ("accuracy",), tsv_dir="RTE",
                 tsv_text=("sentence1", "sentence2"), label_names=_NLI),
        GlueSpec("wnli", ("sentence1", "sentence2"), 2, ("accuracy",), tsv_dir="WNLI",
                 tsv_text=("sentence1", "sentence2")),
    )
}

# The project's own sentiment task (fedctl.data.glue.demo), shaped like SST-2.
DEMO = GlueSpec("sentiment-demo", ("sentence",), 2, ("accuracy",))
_ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "demo": DEMO.name, "mnli-m": "mnli", "mnli-mm": "mnli"}


def get_spec(name: str | None) -> GlueSpec:
    """The spec of a GLUE task by name (case-insensitive; None or 'demo' = the built-in sentiment task)."""
    if name is None:
        return DEMO
    key = _ALIASES.get(name.lower(), name.lower())
    if key == DEMO.name:
        return DEMO
    if key not in GLUE_TASKS:
        close = difflib.get_close_matches(key, GLUE_TASKS, n=1)
        raise FedctlError(
            f"unknown GLUE task '{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""),
            f"choose one of: {', '.join(GLUE_TASKS)} (or demo)",
        )
    return GLUE_TASKS[key]
