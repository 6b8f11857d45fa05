"""GLUE data: shard modes (exact stratification, overlap, disjoint categories, reproducible Dirichlet),
official metrics against scikit-learn / scipy, loaders for TSV / csv / json / parquet, and bad input."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef

from fedctl.data.glue import (
    GLUE_TASKS,
    get_spec,
    glue_metrics,
    load_glue,
    make_shards,
    read_shards,
    shard_glue,
)
from fedctl.data.glue.demo import sentiment_demo
from fedctl.errors import FedctlError

LABELS = [0] * 70 + [1] * 30 + [2] * 7  # 107 examples, skewed


# ------------------------------------------------------------------------------------------ shard modes


@pytest.mark.parametrize("k", [1, 3, 5])
def test_iid_is_stratified_to_within_one_per_label(k):
    shards = make_shards(LABELS, k, "iid", seed=1)
    assert sorted(i for s in shards for i in s) == list(range(len(LABELS)))  # a partition
    for label, n in Counter(LABELS).items():
        counts = [sum(LABELS[i] == label for i in s) for s in shards]
        assert max(counts) - min(counts) <= 1 and sum(counts) == n
        assert all(abs(c - n / k) < 1 for c in counts)
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1


def test_overlap_shares_exactly_the_requested_fraction():
    shards = make_shards(LABELS, 4, "overlap", overlap_ratio=0.2, seed=3)
    common = set.intersection(*map(set, shards))
    assert len(common) == round(0.2 * len(LABELS)) == 21
    counts = Counter(i for s in shards for i in s)
    assert set(counts) == set(range(len(LABELS)))  # every example somewhere
    assert {i for i, c in counts.items() if c > 1} == common  # the rest on exactly one client
    assert sum(LABELS[i] == 0 for i in common) in (13, 14, 15)  # the shared pool is stratified too (70/107·21 = 13.7)
    assert make_shards(LABELS, 4, "overlap", overlap_ratio=0.0, seed=3) == make_shards(LABELS, 4, "iid", seed=3)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_category_assigns_whole_categories_disjointly(k):
    shards = make_shards(LABELS, k, "category", seed=0)
    assert sorted(i for s in shards for i in s) == list(range(len(LABELS)))  # disjoint and complete
    owners = {}
    for client, s in enumerate(shards):
        for i in s:
            owners.setdefault(LABELS[i], set()).add(client)
    if k <= 3:  # fewer clients than labels: a label lives on exactly one client, client k gets labels ≡ k (mod K)
        assert all(len(o) == 1 for o in owners.values())
        assert {label: next(iter(o)) for label, o in owners.items()} == {0: 0, 1: 1 % k, 2: 2 % k}
    else:  # more clients than labels: every client holds exactly one label
        assert all(len({LABELS[i] for i in s}) == 1 for s in shards)
        assert owners == {0: {0, 3}, 1: {1, 4}, 2: {2}}


def test_category_by_genre_column():
    genres = ["fiction", "government", "slate", "telephone", "travel"] * 8
    shards = make_shards([0, 1] * 20, 5, "category", categories=genres)
    assert [sorted({genres[i] for i in s}) for s in shards] == [[g] for g in sorted(set(genres))]


def test_dirichlet_is_reproducible_and_skewed():
    a = make_shards(LABELS, 4, "dirichlet", alpha=0.3, seed=7)
    assert a == make_shards(LABELS, 4, "dirichlet", alpha=0.3, seed=7)
    assert a != make_shards(LABELS, 4, "dirichlet", alpha=0.3, seed=8)
    assert sorted(i for s in a for i in s) == list(range(len(LABELS))) and all(a)
    # skew: with alpha 0.3 some client's label mix is far from the global 65% zeros
    assert max(abs(sum(LABELS[i] == 0 for i in s) / len(s) - 70 / 107) for s in a) > 0.2


def test_stsb_scores_stratify_by_rounded_value():
    scores = [0.2, 1.4, 2.6, 3.0, 4.8, 5.0] * 5
    shards = make_shards(scores, 3, "iid", regression=True)
    for score_bin in (0, 1, 3, 5):  # bins of 5, 5, 10, 10 examples over 3 clients
        counts = [sum(round(scores[i]) == score_bin for i in s) for s in shards]
        assert max(counts) - min(counts) <= 1


# ------------------------------------------------------------------------------------------ metrics


def test_metrics_match_sklearn_and_scipy():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 50)
    p = np.where(rng.random(50) < 0.8, y, 1 - y)
    assert glue_metrics(get_spec("cola"), p, y) == pytest.approx(
        {"matthews": matthews_corrcoef(y, p), "accuracy": float((p == y).mean())})
    assert glue_metrics(get_spec("mrpc"), p, y)["f1"] == pytest.approx(f1_score(y, p))
    assert glue_metrics(get_spec("qqp"), p, y)["accuracy"] == pytest.approx((p == y).mean())
    s, t = rng.random(40) * 5, rng.random(40) * 5
    m = glue_metrics(get_spec("stsb"), s, t)
    assert m == pytest.approx({"pearson": pearsonr(s, t)[0], "spearman": spearmanr(s, t)[0]})
    # hand-computed: 3 of 4 right; TP=1 FP=1 FN=0 → F1 = 2/3; MCC = (1·2 − 1·0)/√(2·1·3·2) = 0.5774
    m = glue_metrics(get_spec("mrpc"), np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0]))
    assert m == pytest.approx({"f1": 2 / 3, "accuracy": 0.75})
    assert glue_metrics(get_spec("cola"), np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0]))["matthews"] == pytest.approx(
        2 / np.sqrt(12))


def test_every_glue_task_has_its_official_metric():
    assert {n: s.metrics[0] for n, s in GLUE_TASKS.items()} == {
        "cola": "matthews", "sst2": "accuracy", "mrpc": "f1", "qqp": "f1", "stsb": "pearson",
        "mnli": "accuracy", "qnli": "accuracy", "rte": "accuracy", "wnli": "accuracy"}
    assert get_spec("mnli").val_splits == ("validation_matched", "validation_mismatched")
    assert get_spec("stsb").is_regression and get_spec("SST-2").name == "sst2"


# ------------------------------------------------------------------------------------------ loaders

TSV = {  # the GLUE download's layouts, two rows each
    "CoLA": (False, "gj04\t1\t\tthe cat sat .\ngj04\t0\t*\tcat the sat .\n"),
    "SST-2": (True, "sentence\tlabel\na great film \t1\na dull \"mess\t0\n"),
    "MRPC": (True, "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tA b .\tA b !\n0\t3\t4\tC d .\tE f .\n"),
    "QQP": (True, "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n0\t1\t2\tq a?\tq b?\t1\n1\t3\t4\tq c?\tq d?\t0\n3\tbroken row\n"),
    "STS-B": (True, "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
                    "0\tmain\tf\t2012\t1\tnone\tnone\tA man .\tA guy .\t4.2\n1\tmain\tf\t2012\t2\tnone\tnone\tX .\tY .\t0.5\n"),
    "QNLI": (True, "index\tquestion\tsentence\tlabel\n0\tWho?\tHim .\tentailment\n1\tWhy?\tNo .\tnot_entailment\n"),
    "RTE": (True, "index\tsentence1\tsentence2\tlabel\n0\tA .\tB .\tnot_entailment\n1\tC .\tD .\tentailment\n"),
    "WNLI": (True, "index\tsentence1\tsentence2\tlabel\n0\tA .\tB .\t1\n1\tC .\tD .\t0\n"),
}
MNLI_HEADER = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
               "sentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n")


def _mnli_rows(genres):
    labels = ["entailment", "neutral", "contradiction", "-"]
    return "".join(f"{i}\t1\t1\t{g}\tx\tx\tx\tx\tP {i} .\tH {i} .\tl\t{labels[i % 4]}\n" for i, g in enumerate(genres))


@pytest.fixture
def glue_dir(tmp_path):
    root = tmp_path / "glue_data"
    for folder, (_, body) in TSV.items():
        (root / folder).mkdir(parents=True)
        for split in ("train", "dev"):
            (root / folder / f"{split}.tsv").write_text(body)
    (root / "MNLI").mkdir()
    (root / "MNLI" / "train.tsv").write_text(MNLI_HEADER + _mnli_rows(["fiction", "slate", "travel", "fiction", "slate"]))
    for split in ("dev_matched", "dev_mismatched"):
        (root / "MNLI" / f"{split}.tsv").write_text(MNLI_HEADER + _mnli_rows(["letters", "oup", "verbatim"]))
    return root


def test_all_nine_tasks_load_from_the_glue_tsv_layout(glue_dir):
    expect = {"cola": [1, 0], "sst2": [1, 0], "mrpc": [1, 0], "qqp": [1, 0], "stsb": [4.2, 0.5],
              "qnli": [0, 1], "rte": [1, 0], "wnli": [1, 0], "mnli": [0, 1, 2, 0]}
    messages = []
    for name, labels in expect.items():
        splits = load_glue(name, glue_dir, log=messages.append)
        spec = get_spec(name)
        assert list(splits) == ["train", *spec.val_splits]
        assert splits["train"].labels == labels, name
        assert len(splits["train"].texts) == len(spec.text_keys)
    assert load_glue("sst2", glue_dir)["train"].texts == [["a great film ", 'a dull "mess']]  # quotes kept verbatim
    assert load_glue("mrpc", glue_dir)["train"].texts == [["A b .", "C d ."], ["A b !", "E f ."]]
    assert load_glue("mnli", glue_dir)["train"].extra["genre"] == ["fiction", "slate", "travel", "slate"]  # "-" dropped
    assert any("QQP" in m and "skipped 1" in m for m in messages)


@pytest.mark.parametrize("ext", ["csv", "json", "jsonl", "parquet"])
def test_local_tables_with_hf_column_names(tmp_path, ext):
    import pandas as pd

    df = pd.DataFrame({"premise": ["a", "b", "c"], "hypothesis": ["x", "y", "z"], "label": [2, 0, 1]})
    for split in ("train", "validation_matched", "validation_mismatched"):
        path = tmp_path / f"{split}.{ext}"
        {"csv": lambda p: df.to_csv(p, index=False), "json": lambda p: df.to_json(p, orient="records"),
         "jsonl": lambda p: df.to_json(p, orient="records", lines=True), "parquet": df.to_parquet}[ext](path)
    splits = load_glue("mnli", tmp_path)
    assert splits["train"].labels == [2, 0, 1] and splits["validation_mismatched"].texts == [["a", "b", "c"], ["x", "y", "z"]]


def test_shard_glue_writes_clients_and_summary(glue_dir, tmp_path):
    summary = shard_glue("mnli", 3, "category", tmp_path / "s", category_key="genre", data_dir=glue_dir)
    assert [c["categories"] for c in summary["per_client"]] == [["fiction"], ["slate"], ["travel"]]
    client_1 = json.loads((tmp_path / "s" / "client_1.json").read_text())
    assert client_1["indices"] == [1, 3] and json.loads((tmp_path / "s" / "summary.json").read_text()) == summary
    assert read_shards(tmp_path / "s", 4) == [[0], [1, 3], [2]]


def test_demo_task_is_balanced_deterministic_and_negated():
    a, b = sentiment_demo(200, 100, seed=0), sentiment_demo(200, 100, seed=0)
    assert a["train"].texts == b["train"].texts and a["train"].labels == b["train"].labels
    assert 0.4 < sum(a["validation"].labels) / 100 < 0.6
    texts = a["train"].texts[0]
    assert sum(" not " in t or " never " in t or " hardly " in t or "far from" in t for t in texts) > 20


# ------------------------------------------------------------------------------------------ bad input


def test_unknown_task_names_the_valid_ones():
    with pytest.raises(FedctlError) as exc:
        get_spec("sst3")
    assert "did you mean 'sst2'" in exc.value.message and "cola, sst2" in exc.value.hint


def test_shard_index_beyond_the_dataset(tmp_path):
    (tmp_path / "client_0.json").write_text(json.dumps({"indices": [0, 1, 99]}))
    with pytest.raises(FedctlError) as exc:
        read_shards(tmp_path, 50)
    assert "index 99 is beyond the training set (50 examples)" in exc.value.message
    assert "re-run `fedctl data shard glue`" in exc.value.hint


def test_bad_shard_options():
    with pytest.raises(FedctlError, match="unknown shard mode"):
        make_shards(LABELS, 2, "random")
    with pytest.raises(FedctlError, match="overlap-ratio"):
        make_shards(LABELS, 2, "overlap", overlap_ratio=1.5)
    with pytest.raises(FedctlError, match="alpha"):
        make_shards(LABELS, 2, "dirichlet", alpha=0)
    with pytest.raises(FedctlError, match="cannot fill"):
        make_shards([0, 1], 3, "iid")


def test_missing_split_file_names_the_layout(tmp_path):
    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "train.tsv").write_text(TSV["SST-2"][1])
    with pytest.raises(FedctlError) as exc:
        load_glue("sst2", tmp_path)
    assert "no validation file" in exc.value.message and "dev" in exc.value.hint
