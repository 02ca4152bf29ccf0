"""`markdown_table`: the deployment table's formatting (the full report runs in benchmarks/)."""

from __future__ import annotations

from keras_kd.export import markdown_table


def test_markdown_table_rows_and_formats():
    rows = [
        {"variant": "teacher float32", "accuracy": 99.123, "size_kb": 1000.0, "gzip_kb": 900.0,
         "latency_ms": 0.5},
        {"variant": "student int8", "accuracy": 98.5, "delta": -0.25, "agreement": 99.5,
         "max_abs_diff": 0.123, "size_kb": 30.04, "size_ratio": 0.2601, "gzip_kb": 20.0,
         "latency_ms": 0.01234, "integer_only": True},
    ]
    lines = markdown_table(rows).splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("| variant | accuracy (%)")
    assert lines[2] == "| teacher float32 | 99.12 | — | — | — | 1000.0 | — | 900.0 | 0.500 | — |"
    assert lines[3] == (
        "| student int8 | 98.50 | -0.25 | 99.50 | 0.123 | 30.0 | 0.260 | 20.0 | 0.012 | yes |"
    )
