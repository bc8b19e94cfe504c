"""The bench harness compares and counts exported data files, not sluicegate's own files."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _exports(folder: Path, destination_id: str) -> Path:
    (folder / "records").mkdir(parents=True)
    (folder / "records" / "a.csv").write_text("x\n1\n")
    (folder / "_manifests").mkdir()
    (folder / "_manifests" / "m.json").write_text(destination_id)
    (folder / "_sluicegate").mkdir()
    (folder / "_sluicegate" / "destination-id").write_text(destination_id + "\n")
    return folder


def test_the_destinations_random_id_is_not_a_data_file(tmp_path: Path, monkeypatch: object) -> None:
    """Each run's destination holds a random id (_sluicegate/destination-id): bench/ab.py hashed it
    with the data, so two versions writing the same bytes never showed the same hash, and
    bench/run.py counted it as one more data file."""
    sys.path.insert(0, str(BENCH))
    try:
        import ab
        import run
    finally:
        sys.path.remove(str(BENCH))
    one, two = _exports(tmp_path / "one", "a" * 32), _exports(tmp_path / "two", "b" * 32)
    assert ab.digest(one) == ab.digest(two)
    assert run.dir_stats(one) == (1, 4)
