"""One reader layer: any supported speech corpus in, one utterance table (`librispeech.Index`) out.

Formats (`--corpus-format`, detected by `detect_format` when "auto"):
- `librispeech`: a folder of `<speaker>/<chapter>/*.flac|wav` + `*.trans.txt` (`librispeech.index_librispeech`).
- `tsv`: a fairseq manifest (wav2vec/HuBERT `train.tsv`): first line the audio root folder, then one
  `relpath<TAB>num_samples` line per utterance. Transcripts from `<stem>.wrd` (words) or `<stem>.ltr`
  (letters separated by spaces, `|` between words) beside it, line for line; without either, no transcripts.
- `csv`: a `.csv` (comma) or `.tsv` (tab) table with a header naming its columns (`COLUMNS`: a path column
  is required, speaker / transcript / duration / id / chapter are optional). Relative paths are resolved
  against the manifest's folder.
- `hf`: a local Hugging Face `datasets` dataset: a `save_to_disk` folder (Dataset or DatasetDict: every
  split is read) or Parquet file(s) with an audio column (an `Audio` feature, or a struct of bytes/path).
  The audio is decoded by soundfile from the stored bytes (`audio.load_audio`), never by `datasets`.

Ids, when a source names none, are the audio file's stem (HF rows without a path: `<split>-<row>`).
Speakers, when a source names none: from a LibriSpeech-style id `<speaker>-<chapter>-<n>`, else the first
folder of the relative path, else "unknown" (so `--by speaker` keeps such a corpus on one client).
Durations always come from the audio headers; a manifest's own duration or sample count that disagrees
with the audio by more than DURATION_TOLERANCE_S makes the row a bad file (the manifest is stale).
A manifest row naming a file that does not exist is an error (the manifest is wrong, not the audio).
"""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

from fedctl.data.speech.audio import MODEL_RATE, hf_locator
from fedctl.data.speech.librispeech import BadFile, Index, Utterance, index_librispeech, probe
from fedctl.errors import FedctlError

FORMATS = ("auto", "librispeech", "tsv", "csv", "hf")
# accepted column names of CSV/TSV manifests and HF datasets (first match wins; case-insensitive)
COLUMNS = {
    "path": ("path", "audio", "audio_path", "audio_filepath", "file", "filename", "file_name", "wav", "flac"),
    "speaker": ("speaker", "speaker_id", "spk", "spk_id", "client_id"),
    "transcript": ("transcript", "text", "sentence", "transcription", "normalized_text", "words"),
    "duration": ("duration", "duration_s", "seconds"),
    "id": ("id", "utt_id", "utterance_id", "key"),
    "chapter": ("chapter", "chapter_id"),
}
DURATION_TOLERANCE_S = 0.1
_LIBRISPEECH_ID = re.compile(r"^([^-\s]+)-([^-\s]+)-[^-\s]+$")


def accepted_columns(kind: str) -> str:
    return ", ".join(COLUMNS[kind])


# ------------------------------------------------------------------------------ dispatch


def detect_format(source: str | Path) -> str:
    """The format of `source` (see module docstring), from its layout and first lines."""
    source = Path(source)
    if source.is_dir():
        if (source / "dataset_dict.json").is_file() or (source / "state.json").is_file():
            return "hf"
        if any(source.glob("*.parquet")) or any(source.glob("*/*.parquet")):
            return "hf"
        return "librispeech"
    if not source.exists():
        raise FedctlError(f"--root {source} is not a directory or a manifest file (it does not exist)",
                          "pass a LibriSpeech folder, a .tsv/.csv manifest or a local HF dataset")
    suffix = source.suffix.lower()
    if suffix == ".parquet":
        return "hf"
    if suffix == ".csv":
        return "csv"
    if suffix == ".tsv":
        return "tsv" if _looks_fairseq(source) else "csv"
    raise FedctlError(f"cannot tell the format of {source} from its name",
                      "pass --corpus-format tsv (fairseq), csv (named columns) or hf, or rename it .tsv/.csv/.parquet")


def _looks_fairseq(path: Path) -> bool:
    """A fairseq manifest's first line is one field (the root); the next ones are `relpath<TAB>integer`."""
    with open(path, encoding="utf-8", errors="replace") as f:
        first, second = f.readline().rstrip("\n"), f.readline().rstrip("\n")
    if "\t" in first:
        return False
    return not second or bool(re.fullmatch(r"[^\t]+\t\d+", second))


def read_corpus(sources: list[str | Path], corpus_format: str = "auto") -> Index:
    """The utterance table of `sources` (each of `corpus_format`, or detected), sorted by id, with every
    bad file listed; an id found twice is a bad file after its first occurrence."""
    if corpus_format not in FORMATS:
        raise FedctlError(f"--corpus-format {corpus_format!r} is not a corpus format", f"use one of: {', '.join(FORMATS)}")
    if not sources:
        raise FedctlError("no corpus given", "pass --root DIR (a LibriSpeech tree, a manifest or an HF dataset)")
    index = Index(roots=[str(Path(s)) for s in sources])
    seen: set[str] = set()
    for source in sources:
        fmt = detect_format(source) if corpus_format == "auto" else corpus_format
        index.formats.append(fmt)
        if fmt == "librispeech":
            part = index_librispeech([source])
        else:
            part = Index(roots=[str(source)])
            {"tsv": _read_fairseq, "csv": _read_table, "hf": _read_hf}[fmt](Path(source), part)
        index.bad_files += part.bad_files
        for u in part.utterances:
            if u.id in seen:
                index.bad_files.append(BadFile(u.path, f"duplicate utterance id {u.id} (already read from another source)"))
                continue
            seen.add(u.id)
            index.utterances.append(u)
    index.utterances.sort(key=lambda u: u.id)
    return index


# ------------------------------------------------------------------------------ shared row handling


def _speaker_chapter(utt_id: str, relpath: str | None) -> tuple[str, str]:
    m = _LIBRISPEECH_ID.match(utt_id)
    if m:
        return m.group(1), m.group(2)
    if relpath and len(Path(relpath).parts) > 1:
        return Path(relpath).parts[0], ""
    return "unknown", ""


def _add(index: Index, seen: set[str], *, utt_id: str, path: str, speaker: str | None, chapter: str | None,
         transcript: str | None, relpath: str | None, declared_s: float | None = None) -> None:
    """Probe `path` and append its utterance, or a bad file with the reason."""
    if utt_id in seen:
        index.bad_files.append(BadFile(path, f"duplicate utterance id {utt_id}"))
        return
    info = probe(path)
    if isinstance(info, str):
        index.bad_files.append(BadFile(path, info))
        return
    duration = info.num_samples / MODEL_RATE
    if declared_s is not None and abs(declared_s - info.frames / info.rate) > DURATION_TOLERANCE_S:
        index.bad_files.append(BadFile(path, f"the manifest says {declared_s:.3f} s but the audio holds "
                                             f"{info.frames / info.rate:.3f} s (stale manifest)"))
        return
    seen.add(utt_id)
    spk, chap = _speaker_chapter(utt_id, relpath)
    index.utterances.append(Utterance(
        id=utt_id, path=path, duration=duration, num_samples=info.num_samples, sample_rate=MODEL_RATE,
        speaker=str(speaker) if speaker not in (None, "") else spk,
        chapter=str(chapter) if chapter not in (None, "") else chap,
        transcript=transcript, source_rate=info.rate, channels=info.channels))


def _missing(manifest: Path, row: int, path: str, folder: Path) -> FedctlError:
    return FedctlError(f"{manifest} row {row}: audio file {path} does not exist",
                       f"fix or remove that row (relative paths are resolved against {folder})")


# ------------------------------------------------------------------------------ fairseq TSV


def _fairseq_transcripts(manifest: Path, rows: int) -> list[str] | None:
    """Words per row from `<stem>.wrd`, else from `<stem>.ltr`, else None."""
    for suffix in (".wrd", ".ltr"):
        side = manifest.with_suffix(suffix)
        if not side.is_file():
            continue
        lines = side.read_text(encoding="utf-8").splitlines()
        if len(lines) != rows:
            raise FedctlError(f"{side} has {len(lines)} lines but {manifest} lists {rows} utterances",
                              f"regenerate {side.name} from {manifest.name} (one line per manifest row, same order)")
        if suffix == ".wrd":
            return [" ".join(line.split()) for line in lines]
        # .ltr: "H E L L O | W O R L D |" -> "HELLO WORLD"
        return [" ".join("".join(line.split()).replace("|", " ").split()) for line in lines]
    return None


def _read_fairseq(manifest: Path, index: Index) -> None:
    lines = manifest.read_text(encoding="utf-8").splitlines()
    if not lines:
        raise FedctlError(f"{manifest} is empty", "a fairseq manifest starts with the audio root folder")
    root = Path(lines[0].strip())
    root = root if root.is_absolute() else (manifest.parent / root)
    rows = [(n, line) for n, line in enumerate(lines[1:], 2) if line.strip()]
    transcripts = _fairseq_transcripts(manifest, len(rows))
    seen: set[str] = set()
    for k, (number, line) in enumerate(rows):
        fields = line.split("\t")
        if len(fields) != 2 or not fields[1].strip().isdigit():
            raise FedctlError(f"{manifest} row {number}: {line[:80]!r} is not '<relpath><TAB><num_samples>'",
                              "fairseq manifests hold the root folder on line 1, then relpath<TAB>num_samples lines")
        rel, declared = fields[0], int(fields[1])
        path = os.path.abspath(root / rel)
        if not os.path.isfile(path):
            raise _missing(manifest, number, path, root)
        info = probe(path)
        if not isinstance(info, str) and info.frames != declared:
            index.bad_files.append(BadFile(path, f"the manifest says {declared} samples but the audio holds "
                                                 f"{info.frames} (stale manifest)"))
            continue
        _add(index, seen, utt_id=Path(rel).stem, path=path, speaker=None, chapter=None,
             transcript=transcripts[k] if transcripts is not None else None, relpath=rel)


# ------------------------------------------------------------------------------ CSV / TSV with named columns


def _pick(names: list[str], kind: str) -> str | None:
    lower = {n.strip().lower(): n for n in names if n is not None}
    return next((lower[c] for c in COLUMNS[kind] if c in lower), None)


def _no_path_column(source: Path, names: list[str]) -> FedctlError:
    return FedctlError(
        f"{source} has no audio path column (its columns: {', '.join(map(str, names))[:200]})",
        f"name the column of audio paths one of: {accepted_columns('path')} (optional: speaker "
        f"[{accepted_columns('speaker')}], transcript [{accepted_columns('transcript')}], duration in seconds "
        f"[{accepted_columns('duration')}], id [{accepted_columns('id')}])")


def _read_table(manifest: Path, index: Index) -> None:
    delimiter = "\t" if manifest.suffix.lower() == ".tsv" else ","
    with open(manifest, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        names = list(reader.fieldnames or [])
        cols = {kind: _pick(names, kind) for kind in COLUMNS}
        if cols["path"] is None:
            raise _no_path_column(manifest, names)
        seen: set[str] = set()
        for number, row in enumerate(reader, 2):
            rel = (row.get(cols["path"]) or "").strip()
            if not rel:
                raise FedctlError(f"{manifest} row {number}: the {cols['path']!r} cell is empty",
                                  "give every row an audio path, or remove the row")
            path = os.path.abspath(rel if os.path.isabs(rel) else manifest.parent / rel)
            if not os.path.isfile(path):
                raise _missing(manifest, number, path, manifest.parent)
            declared = None
            if cols["duration"] and (row.get(cols["duration"]) or "").strip():
                try:
                    declared = float(row[cols["duration"]])
                except ValueError:
                    raise FedctlError(f"{manifest} row {number}: duration {row[cols['duration']]!r} is not a number",
                                      "durations are in seconds, e.g. 3.52 (or leave the cell empty)") from None
            cell = {kind: row.get(c) if c else None for kind, c in cols.items()}
            _add(index, seen, utt_id=(cell["id"] or "").strip() or Path(rel).stem, path=path,
                 speaker=(cell["speaker"] or "").strip() or None, chapter=(cell["chapter"] or "").strip() or None,
                 transcript=cell["transcript"] if cols["transcript"] else None, relpath=rel, declared_s=declared)


# ------------------------------------------------------------------------------ local Hugging Face datasets


def _hf_splits(source: Path) -> list[tuple[str, str, object, dict]]:
    """(locator source, split name, Arrow table, features JSON) per split or Parquet file of `source`."""
    if source.is_dir() and ((source / "dataset_dict.json").is_file() or (source / "state.json").is_file()):
        import datasets

        try:
            ds = datasets.load_from_disk(str(source))
        except Exception as exc:  # noqa: BLE001 - datasets raises many types for a damaged folder
            raise FedctlError(f"{source} is not a readable `save_to_disk` dataset ({type(exc).__name__}: "
                              f"{str(exc)[:120]})", "re-save it with Dataset.save_to_disk") from None
        splits = ds.items() if isinstance(ds, datasets.DatasetDict) else [("train", ds)]
        return [(str(source), name, d.data, d.features.to_dict()) for name, d in sorted(splits)]
    import pyarrow.parquet as pq

    files = [source] if source.is_file() else sorted([*source.glob("*.parquet"), *source.glob("*/*.parquet")])
    out = []
    for f in files:
        table = pq.read_table(f)
        meta = (table.schema.metadata or {}).get(b"huggingface")
        features = json.loads(meta).get("info", {}).get("features", {}) if meta else {}
        out.append((str(f), "data", table, features))
    return out


def _audio_column(names: list[str], table, features: dict) -> str | None:
    typed = [n for n in names if isinstance(features.get(n), dict) and features[n].get("_type") == "Audio"]
    if typed:
        return typed[0]
    for n in names:  # a struct with bytes and path, as datasets stores audio
        t = table.schema.field(n).type
        if hasattr(t, "names") and "bytes" in getattr(t, "names", []):
            return n
    return _pick(names, "path")


def _read_hf(source: Path, index: Index) -> None:
    seen: set[str] = set()
    for loc_source, split, table, features in _hf_splits(source):
        names = list(table.column_names)
        audio_col = _audio_column(names, table, features)
        if audio_col is None:
            raise _no_path_column(Path(loc_source), names)
        cols = {kind: _pick(names, kind) for kind in COLUMNS if kind != "path"}
        values = {kind: table.column(c).to_pylist() if c else None for kind, c in cols.items()}
        audio = table.column(audio_col)
        folder = Path(loc_source) if Path(loc_source).is_dir() else Path(loc_source).parent
        for row in range(table.num_rows):
            cell = audio[row].as_py()
            stored_path = cell.get("path") if isinstance(cell, dict) else cell
            if isinstance(cell, dict) and cell.get("bytes"):
                path, rel = hf_locator(loc_source, split, row, audio_col), stored_path
            elif stored_path:
                path, rel = os.path.abspath(stored_path if os.path.isabs(stored_path) else folder / stored_path), stored_path
                if not os.path.isfile(path):
                    raise _missing(Path(loc_source), row, path, folder)
            else:
                index.bad_files.append(BadFile(hf_locator(loc_source, split, row, audio_col), "no audio bytes or path"))
                continue
            meta = {kind: v[row] if v is not None else None for kind, v in values.items()}
            utt_id = str(meta["id"] if meta["id"] not in (None, "") else
                         (Path(rel).stem if rel else f"{split}-{row:06d}"))
            declared = meta["duration"]
            _add(index, seen, utt_id=utt_id, path=path, speaker=meta["speaker"], chapter=meta["chapter"],
                 transcript=None if meta["transcript"] is None else str(meta["transcript"]), relpath=None,
                 declared_s=float(declared) if isinstance(declared, (int, float)) else None)
