"""Property-based fuzzing of what users feed in: any bytes as a data file, any nested values as data, any mapping or
YAML text as a configuration either load or raise an :class:`sbridge.SBridgeError` — never anything else."""

from __future__ import annotations

from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sbridge.cli import _train_spec, build_parser
from sbridge.core.errors import SBridgeError
from sbridge.core.validation import as_data_tensor
from sbridge.runs.datasets import read_data_file
from sbridge.runs.spec import RunSpec

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                      max_leaves=12)
field_names = [f for f in RunSpec.__dataclass_fields__]


@FUZZ
@given(raw=st.one_of(st.binary(max_size=600),
                     st.text(alphabet="0123456789.,-+e \n\tnaifNA", max_size=300).map(str.encode)),
       suffix=st.sampled_from([".npy", ".csv", ".txt"]))
def test_any_bytes_as_a_data_file_load_or_raise_an_sbridge_error(tmp_path: Path, raw: bytes, suffix: str) -> None:
    path = tmp_path / f"data{suffix}"
    path.write_bytes(raw)
    try:
        x = read_data_file(path)
    except SBridgeError:
        return
    assert x.ndim >= 2 and x.shape[0] > 0 and bool(torch.isfinite(x).all())


@FUZZ
@given(data=values)
def test_any_nested_values_as_data_load_or_raise_an_sbridge_error(data: object) -> None:
    try:
        x = as_data_tensor(data)
    except SBridgeError:
        return
    assert x.ndim >= 2 and x.dtype == torch.float32 and bool(torch.isfinite(x).all())


@FUZZ
@given(cfg=st.dictionaries(st.one_of(st.sampled_from(field_names), st.text(max_size=6), st.integers()), values,
                           max_size=6))
def test_any_mapping_as_a_run_spec_builds_or_raises_an_sbridge_error(cfg: dict) -> None:
    try:
        spec = RunSpec.from_dict(cfg)
    except SBridgeError:
        return
    assert isinstance(spec, RunSpec)


@FUZZ
@given(text=st.one_of(st.text(max_size=200),
                      st.lists(st.tuples(st.sampled_from(field_names), st.text(max_size=10)), max_size=5)
                      .map(lambda kv: "".join(f"{k}: {v}\n" for k, v in kv))),
       sets=st.lists(st.text(max_size=12), max_size=2))
def test_any_yaml_text_and_set_flags_parse_or_raise_an_sbridge_error(tmp_path: Path, text: str,
                                                                      sets: list[str]) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(text.encode("utf-8", errors="replace"))
    argv = ["train", "--config", str(path)]
    for item in sets:
        argv += ["--set", item]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit:  # argparse's own usage error (exit 2, e.g. a --set value starting with "-"), not ours
        return
    try:
        spec = _train_spec(args)
    except SBridgeError:
        return
    assert isinstance(spec, RunSpec)
