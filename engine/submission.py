"""Kryptonite submission files: write them, read them, score them against labels.

A submission is a CSV ``pair_id,similarity`` with one row per pair, ordered by
pair id, ids zero-padded to 8 digits. Order matters: the organisers' scorer
(``eer.py``) pairs the k-th submission row with the k-th ground-truth row by
position, so :func:`write_submission` sorts by pair id, as their label file is.
The scorer here does not trust row order: it joins the submission with a label
CSV ``pair_id,label[,type,attack]`` on the pair id, reports ids that are
missing, extra or duplicated, and warns when the rows are not in the labels'
order (the organisers would score such a file wrongly).
"""
from __future__ import annotations

import csv
import io
import math
import os
import stat
import tempfile
import warnings
from pathlib import Path

import numpy as np

from engine.files import current_umask, printable
from engine.datasets import DataError

ID_WIDTH = 8
SUBMISSION_HEADER = ("pair_id", "similarity")


class SubmissionWarning(UserWarning):
    """A problem in a submission or label file that still allows scoring (missing or duplicate ids)."""


def normalise_pair_id(raw) -> str:
    """A pair id as written in submissions: digits zero-padded to 8; other ids stripped, unchanged."""
    if isinstance(raw, (int, np.integer)) and not isinstance(raw, bool):
        if raw < 0:
            raise ValueError(f"pair id must not be negative, got {raw}")
        return str(int(raw)).zfill(ID_WIDTH)
    text = str(raw).strip()
    return text.zfill(ID_WIDTH) if _is_id(text) else text


def _is_id(text: str) -> bool:
    # ASCII only: str.isdigit() (and int()) also take Arabic-Indic and other digits.
    return text.isascii() and text.isdigit()


def _sort_key(pair_id: str):
    return (0, int(pair_id), "") if _is_id(pair_id) and len(pair_id) <= 18 else (1, 0, pair_id)


def write_submission(path, pair_ids, scores) -> Path:
    """Write ``pair_id,similarity`` rows ordered by pair id, ids zero-padded to 8 digits.

    Ids may be integers or digit strings; duplicates, non-numeric ids and
    non-finite scores are refused (ValueError). The file appears atomically
    (temporary file in the same folder, then ``os.replace``).
    """
    path = Path(path)
    scores = np.asarray(scores)
    ids = [normalise_pair_id(i) for i in pair_ids]
    if scores.ndim != 1 or len(ids) != len(scores):
        raise ValueError(f"{len(ids)} pair ids but scores of shape {scores.shape}")
    if not ids:
        raise ValueError("no pairs to write")
    bad = [i for i in ids if not (_is_id(i) and len(i) <= 18)]
    if bad:
        raise ValueError(f"pair ids must be non-negative integers of ASCII digits (at most 18), got {bad[0][:40]!r}")
    try:
        values = scores.astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"scores must be numbers, got dtype {scores.dtype}") from None
    nonfinite = np.flatnonzero(~np.isfinite(values))
    if nonfinite.size:
        k = int(nonfinite[0])
        raise ValueError(f"score for pair {ids[k]} (row {k}) is {values[k]}; scores must be finite")
    order = sorted(range(len(ids)), key=lambda k: int(ids[k]))
    for a, b in zip(order, order[1:]):
        if ids[a] == ids[b]:
            raise ValueError(f"duplicate pair id {ids[a]}")
    # float32 round-trips with 9 significant digits; float64 needs repr's shortest form.
    fmt = "{:.9g}".format if scores.dtype.kind == "f" and scores.dtype.itemsize <= 4 else repr
    floats = values.tolist()
    lines = [",".join(SUBMISSION_HEADER)] + [f"{ids[k]},{fmt(floats[k])}" for k in order]
    _write_text_atomic(path, "\n".join(lines) + "\n")
    return path


def _write_text_atomic(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder, then ``os.replace``.

    The file keeps the mode of the one it replaces, and a new file gets the
    umask's default (as ``open`` would give it), not ``mkstemp``'s private 0600.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except FileNotFoundError:
            mode = 0o666 & ~current_umask()
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _rows(path: Path, required: tuple[str, ...], optional: tuple[str, ...] = ()):
    """Yield (line number, {column: text}) from a CSV with a header naming ``required`` columns."""
    from engine.datasets import read_text

    # Through the one reader of named files: a FIFO or /dev/zero is refused by what it is, not read forever.
    with io.StringIO(read_text(path, "utf-8-sig"), newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}: empty file, expected a header {','.join(required)}")
            header = [h.strip() for h in header]
            missing = [c for c in required if c not in header]
            if missing:
                raise DataError(f"{path}:1: header {','.join(header)!r} lacks column(s) {missing}; "
                                f"expected {','.join(required + optional)}")
            where = {c: header.index(c) for c in required + optional if c in header}
            for row in reader:
                if not row or all(not cell.strip() for cell in row):
                    continue
                if len(row) != len(header):
                    raise DataError(f"{path}:{reader.line_num}: {len(row)} fields, header has {len(header)}")
                yield reader.line_num, {c: row[k].strip() for c, k in where.items()}
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text ({exc.reason})") from None
        except csv.Error as exc:
            raise DataError(f"{path}:{reader.line_num}: {exc}") from None


def _read_submission(path) -> tuple[dict[str, float], list[str]]:
    path = Path(path)
    out: dict[str, float] = {}
    duplicates: list[str] = []
    for line, row in _rows(path, SUBMISSION_HEADER):
        pid = normalise_pair_id(row["pair_id"])
        if not pid:
            raise DataError(f"{path}:{line}: empty pair_id")
        try:
            value = float(row["similarity"])
        except ValueError:
            raise DataError(f"{path}:{line}: similarity {row['similarity']!r} is not a number") from None
        if not math.isfinite(value):
            raise DataError(f"{path}:{line}: similarity is {value}; scores must be finite")
        if pid in out:
            duplicates.append(pid)
            continue  # the first row for an id counts
        out[pid] = value
    if not out:
        raise DataError(f"{path}: no rows after the header")
    return out, duplicates


def read_submission(path) -> dict[str, float]:
    """``{pair_id: similarity}`` from a submission CSV; warns about duplicate ids (first row wins).

    Raises :class:`engine.datasets.DataError` naming ``file:line`` for malformed rows.
    """
    scores, duplicates = _read_submission(path)
    if duplicates:
        _warn(f"{path}: {len(duplicates)} duplicate pair id(s), first row kept", duplicates)
    return scores


def _read_labels(path) -> dict[str, tuple[int, str, str]]:
    """:func:`engine.datasets.read_label_csv` with ids normalised like submission ids."""
    from engine.datasets import read_label_csv

    out: dict[str, tuple[int, str, str]] = {}
    for raw, value in read_label_csv(path).items():
        pid = normalise_pair_id(raw)
        if pid in out:
            raise DataError(f"{path}: pair id {raw!r} repeats another id once zero-padded ({pid})")
        out[pid] = value
    if not out:
        raise DataError(f"{path}: no rows after the header")
    return out


def _warn(message: str, ids: list[str]) -> None:
    shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
    warnings.warn(f"{message}: {shown}", SubmissionWarning, stacklevel=3)


def _warn_row_order(submission_csv, labels_csv, sub_ids: list[str], label_ids: list[str]) -> None:
    """Warn where row k of the submission is not row k of the labels: the organisers pair rows by position."""
    if sub_ids == label_ids:
        return
    k = next((k for k, (a, b) in enumerate(zip(sub_ids, label_ids)) if a != b), min(len(sub_ids), len(label_ids)))
    got = sub_ids[k] if k < len(sub_ids) else "end of file"
    want = label_ids[k] if k < len(label_ids) else "end of file"
    warnings.warn(f"{submission_csv}: rows are not in the order of {labels_csv} (row {k + 1}: {got}, labels: {want}); "
                  f"scored here by pair id, but the organisers' scorer pairs rows by position and would score "
                  f"this file wrongly: write it sorted by pair id (engine.verify --out does)",
                  SubmissionWarning, stacklevel=3)


def score_submission(submission_csv, labels_csv, out_dir=None, *, method: str = "interpolated",
                     bootstrap: int = 1000, seed: int = 0, threshold: float | None = None) -> dict:
    """Score a submission against labels, joined on pair id; optionally write a report folder.

    The label CSV is read by :func:`engine.datasets.read_label_csv` (a repeated
    id there is an error). Missing ids (labelled but not submitted), extra ids
    (submitted but not labelled) and duplicate submission rows are warned about
    (:class:`SubmissionWarning`) and returned under ``result["join"]``; the
    metrics cover the ids present in both. A submission whose rows are not in
    the labels' order is warned about too: the organisers' scorer pairs rows
    by position. Returns the :func:`engine.metrics.evaluate`
    dict plus ``join``, ``submission`` and ``labels`` (paths).
    """
    from engine.metrics import evaluate

    scores_by_id, dup_sub = _read_submission(submission_csv)
    labels_by_id = _read_labels(labels_csv)
    missing = sorted((i for i in labels_by_id if i not in scores_by_id), key=_sort_key)
    extra = sorted((i for i in scores_by_id if i not in labels_by_id), key=_sort_key)
    if dup_sub:
        _warn(f"{submission_csv}: {len(dup_sub)} duplicate pair id(s), first row kept", dup_sub)
    if missing:
        _warn(f"{submission_csv}: {len(missing)} labelled pair id(s) missing, scored without them", missing)
    if extra:
        _warn(f"{submission_csv}: {len(extra)} pair id(s) not in {labels_csv}, ignored", extra)
    _warn_row_order(submission_csv, labels_csv, list(scores_by_id), list(labels_by_id))
    common = sorted((i for i in labels_by_id if i in scores_by_id), key=_sort_key)
    if not common:
        raise DataError(f"{submission_csv}: no pair id in common with {labels_csv}")
    labels = np.array([labels_by_id[i][0] for i in common], dtype=np.int8)
    scores = np.array([scores_by_id[i] for i in common], dtype=np.float64)
    types = np.array([labels_by_id[i][1] for i in common])
    attacks = np.array([labels_by_id[i][2] for i in common])
    # Columns absent (or left empty) in the label CSV: no split by type / attack.
    types = types if (types != "").any() else None
    attacks = attacks if (attacks != "").any() else None
    try:
        result = evaluate(labels, scores, types, attacks, threshold=threshold, bootstrap=bootstrap,
                          seed=seed, method=method)
    except ValueError as exc:
        raise DataError(f"{labels_csv} joined with {submission_csv}: {exc}") from None
    result["submission"] = str(submission_csv)
    result["labels"] = str(labels_csv)
    result["join"] = {"scored": len(common), "missing": missing, "extra": extra,
                      "duplicate_submission": sorted(set(dup_sub), key=_sort_key)}
    if out_dir is not None:
        from engine.report import write_report

        write_report(result, out_dir, labels, scores, types)
    return result


# ----------------------------------------------------------------------------- CLI

def main(argv=None) -> int:
    """Score a Kryptonite submission against a label CSV; write the report folder."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m engine.submission",
        description="Score a submission CSV (pair_id,similarity) against a label CSV "
                    "(pair_id,label[,type,attack]), joining on pair id; print the metrics "
                    "and write metrics.json, metrics.md, roc.png, det.png, scores.png. "
                    "The organisers' scorer pairs submission and label rows by position instead, "
                    "so a warning says when the submission's row order differs from the labels' "
                    "(engine.verify --out writes rows sorted by pair id, as their labels are).")
    parser.add_argument("--submission", required=True, metavar="SUB.csv",
                        help="submission CSV with header pair_id,similarity")
    parser.add_argument("--labels", required=True, metavar="LABELS.csv",
                        help="label CSV with header pair_id,label and optional type,attack columns "
                             "(label 1 = two real images of the same person)")
    parser.add_argument("--out", default=None, metavar="REPORT_DIR",
                        help="folder for the report files (created; existing report files replaced); "
                             "omit to only print the metrics")
    from engine.metrics import METHODS

    parser.add_argument("--method", choices=METHODS, default="interpolated",
                        help="headline EER: 'interpolated' (between the two ROC points where FNR and "
                             "FPR cross) or 'organiser' (the Kryptonite scorer exactly: FNR at the ROC point "
                             "minimising |FNR-FPR| on scikit-learn's default ROC, i.e. roc_curve with "
                             "drop_intermediate=True); both are always reported (default: %(default)s)")
    parser.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                        help="bootstrap resamples for the 95%% EER confidence interval; 0 disables "
                             "(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap random seed (default: %(default)s)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="also report FAR/FRR/fake acceptance at this similarity threshold")
    args = parser.parse_args(argv)
    if args.bootstrap < 0:
        parser.error(f"--bootstrap must be >= 0, got {args.bootstrap}")

    import warnings

    from engine.report import format_markdown

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = score_submission(args.submission, args.labels, args.out, method=args.method,
                                      bootstrap=args.bootstrap, seed=args.seed, threshold=args.threshold)
        except (ValueError, OSError) as exc:  # DataError is a ValueError
            print(f"error: {printable(exc)}", file=sys.stderr)
            return 2
        finally:
            for w in caught:
                print(f"warning: {w.message}", file=sys.stderr)
    print(format_markdown(result), end="")
    if args.out:
        print(f"\nreport written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
