"""The CONVPLAN_* variables (`convplan.settings`): today's defaults, every size spelling the
planner's `parse_bytes` reads, a wrong value named in the error, one declaration of every name
the source uses, and the README's table generated from the declarations."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from convplan.selector.planning import parse_bytes
from convplan.settings import (
    GROUPS,
    GiB,
    MiB,
    ServiceSettings,
    SettingsError,
    StoreSettings,
    markdown_table,
    undeclared,
    variables,
)
from tests.support import ROOT

PREFIX = "CONVPLAN" + "_"     # (spelt so that this file's own made-up names are not matched)


def service(**env: str) -> ServiceSettings:
    """The service's settings from ``env`` only (names without the prefix)."""
    return ServiceSettings.from_env({PREFIX + k: v for k, v in env.items()})


# -- defaults ------------------------------------------------------------------------------
def test_the_service_defaults_are_todays() -> None:
    s = service()
    assert (s.max_body, s.max_layers, s.max_tensor_bytes, s.max_weight_bytes) == \
        (64 * MiB, 1000, GiB, GiB)
    assert (s.max_time_limit, s.max_budget, s.max_repeat) == (60.0, 2.0, 10)
    assert (s.queue, s.queue_timeout, s.retry_after) == (32, 10.0, 2)
    assert (s.max_jobs, s.max_pending_jobs) == (64, 4)
    assert (s.request_timeout, s.job_timeout, s.kill_grace, s.body_timeout) == \
        (120.0, 900.0, 1.0, 60.0)
    assert s.concurrency == max(1, min(4, os.cpu_count() or 1))
    assert s.api_key is None and s.key is None
    assert s.json_body_limit == 1000 * 4096 + MiB
    cores = os.cpu_count() or 1
    assert s.worker_memory_limit == 2 * GiB + 64 * MiB * cores + 3 * GiB


def test_the_store_default_is_the_user_cache(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    from convplan.profiles.store import default_db_path

    monkeypatch.delenv("CONVPLAN_DB", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_db_path() == tmp_path / ".cache" / "convplan" / "costs.sqlite"
    monkeypatch.setenv("CONVPLAN_DB", "~/elsewhere.sqlite")
    assert default_db_path() == tmp_path / "elsewhere.sqlite"     # ~ expanded
    assert StoreSettings.from_env({}).db.name == "costs.sqlite"   # a mapping, not os.environ


def test_the_blas_default_is_what_kernels_blas_reads() -> None:
    """kernels/blas.py reads the variable itself (kernels depend on NumPy only); its default
    and the declaration's must agree."""
    text = (ROOT / "kernels" / "blas.py").read_text()
    found = re.search(r'os\.environ\.get\("CONVPLAN_BLAS_CORETYPE", "(\w+)"\)', text)
    assert found is not None, "kernels/blas.py no longer reads CONVPLAN_BLAS_CORETYPE"
    assert variables()["CONVPLAN_BLAS_CORETYPE"].default == found.group(1)
    found = re.search(r'os\.environ\.get\("CONVPLAN_BLAS_THREAD_TIMEOUT", "(\d+)"\)', text)
    assert found is not None, "kernels/blas.py no longer reads CONVPLAN_BLAS_THREAD_TIMEOUT"
    assert variables()["CONVPLAN_BLAS_THREAD_TIMEOUT"].default == int(found.group(1))


# -- reading values --------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["24MiB", "64MB", "1.5 GiB", "500kB", "123456", "16k", "2m",
                                  "1g", "8b", "3 KiB", " 7MiB ", "1GB", "10 mb"])
def test_sizes_read_as_the_planner_reads_them(text: str) -> None:
    assert service(MAX_BODY=text).max_body == parse_bytes(text)
    assert service(WORKER_MEMORY=text).worker_memory_limit == parse_bytes(text)


@pytest.mark.parametrize("text", ["off", "none", "0", "OFF"])
def test_worker_memory_off_means_no_limit(text: str) -> None:
    assert service(WORKER_MEMORY=text).worker_memory_limit is None


def test_a_given_json_body_limit_wins_and_a_derived_one_stays_under_the_body_limit() -> None:
    assert service(MAX_JSON_BODY="3MiB").json_body_limit == 3 * MiB
    assert service(MAX_LAYERS="10").json_body_limit == 10 * 4096 + MiB
    assert service(MAX_BODY="1MiB").json_body_limit == MiB


def test_an_empty_value_is_unset() -> None:
    assert service(MAX_BODY="", API_KEY="", CONCURRENCY="") == service()


def test_the_environment_is_read_and_a_mapping_replaces_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVPLAN_MAX_LAYERS", "77")
    monkeypatch.setenv("CONVPLAN_API_KEY", "from-the-environment")
    assert ServiceSettings.from_env().max_layers == 77
    assert ServiceSettings.from_env().key == "from-the-environment"
    assert ServiceSettings.from_env({}).max_layers == 1000
    assert ServiceSettings.from_env({}, max_layers=5).max_layers == 5


def test_settings_travel_to_worker_processes_and_hide_the_key() -> None:
    s = service(API_KEY="s3cr3t", MAX_BODY="2MiB")
    assert pickle.loads(pickle.dumps(s)) == s
    assert "s3cr3t" not in repr(s) and "s3cr3t" not in str(s.model_dump())
    with pytest.raises(ValidationError):    # frozen: what the app was built with stays
        s.max_body = 1                  # type: ignore[misc]


#: A wrong value for every service variable (`test_every_variable_has_a_bad_value` keeps the
#: list complete): not a size, not a count, not a finite duration, or out of bounds.
BAD = {
    "MAX_BODY": ["lots", "0", "-1", "24 parsecs", "2**62", "1MiB;"], "MAX_JSON_BODY": ["big", "0"],
    "BODY_TIMEOUT": ["soon", "0", "inf"], "MAX_LAYERS": ["0", "2.5", "many"],
    "MAX_TENSOR_BYTES": ["1 ton", "0"], "MAX_WEIGHT_BYTES": ["heavy"],
    "MAX_TIME_LIMIT": ["0.001", "nan"], "MAX_BUDGET": ["0", "-1"], "MAX_REPEAT": ["0", "1.5"],
    "REQUEST_TIMEOUT": ["0.01", "1e9"], "JOB_TIMEOUT": ["forever", "-inf"],
    "WORKER_MEMORY": ["plenty", "-5"], "KILL_GRACE": ["-1", "2 s"],
    "CONCURRENCY": ["0", "all"], "SESSION_CACHE": ["-1", "65", "some"],
    "QUEUE": ["-1", "x"], "QUEUE_TIMEOUT": ["soon", "-0.5"],
    "RETRY_AFTER": ["0", "0.5"], "MAX_JOBS": ["0"], "MAX_PENDING_JOBS": ["none"],
}


def test_every_variable_has_a_bad_value() -> None:
    assert {PREFIX + k for k in BAD} | {"CONVPLAN_API_KEY"} == set(ServiceSettings.variables())


@pytest.mark.parametrize(("name", "text"), [(k, v) for k, vs in BAD.items() for v in vs])
def test_a_bad_value_names_its_variable(name: str, text: str) -> None:
    with pytest.raises(SettingsError) as error:
        service(**{name: text})
    message = str(error.value)
    assert message.startswith(f"{PREFIX}{name}="), message
    assert repr(text) in message and "validation error" not in message
    assert isinstance(error.value, ValueError)      # what `convplan serve` reports


def test_a_bad_size_says_how_to_write_one() -> None:
    with pytest.raises(SettingsError, match=r"CONVPLAN_MAX_BODY='lots': .*24MiB"):
        service(MAX_BODY="lots")


def test_every_bad_variable_is_named_at_once() -> None:
    with pytest.raises(SettingsError) as error:
        service(MAX_BODY="lots", QUEUE="-1", API_KEY="k")
    assert "CONVPLAN_MAX_BODY" in str(error.value) and "CONVPLAN_QUEUE" in str(error.value)


def test_a_misspelt_name_is_found() -> None:
    env = {PREFIX + "MAX_BODDY": "1MiB", PREFIX + "MAX_BODY": "1MiB", "HOME": "/"}
    assert undeclared(env) == [PREFIX + "MAX_BODDY"]
    assert service(MAX_BODDY="1MiB").max_body == 64 * MiB      # ignored, hence the warning


def test_a_wrong_service_limit_does_not_break_the_store(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    from convplan.profiles.store import default_db_path

    monkeypatch.setenv("CONVPLAN_MAX_BODY", "lots")
    monkeypatch.setenv("CONVPLAN_DB", str(tmp_path / "c.sqlite"))
    assert default_db_path() == tmp_path / "c.sqlite"


# -- one declaration of every name ---------------------------------------------------------
def _names_in(path: Path) -> set[str]:
    # (not _CONVPLAN_COMPLETE: Click's shell-completion variable of the `convplan` command)
    return set(re.findall(r"(?<![A-Za-z0-9_])" + PREFIX + r"[A-Z0-9_]*[A-Z0-9]",
                          path.read_text(errors="replace")))


def _source_files() -> list[Path]:
    files = [ROOT / "README.md", *(ROOT / "docker").glob("*")]
    for folder in ("api", "convplan", "kernels", "profiles", "selector", "tests", "bench"):
        files += (ROOT / folder).rglob("*.py")
    return [f for f in files if f.is_file()]


def test_every_name_in_the_source_is_declared() -> None:
    declared = set(variables())
    undeclared = {f"{name} ({path.relative_to(ROOT)})" for path in _source_files()
                  for name in _names_in(path) - declared}
    assert undeclared == set()


def test_every_declaration_is_used_by_the_code() -> None:
    """A declared variable that no code reads by its field is dead configuration."""
    code = "\n".join(p.read_text() for folder in ("api", "kernels", "profiles", "selector")
                     for p in (ROOT / folder).rglob("*.py"))
    for group in GROUPS:
        for field in group.model_fields:
            used = f"settings.{field}" in code or f"{PREFIX}{field.upper()}" in code or \
                f"from_env().{field}" in code
            assert used, f"{group.__name__}.{field} is declared but nothing reads it"


def test_the_readme_table_is_the_declarations() -> None:
    text = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- convplan-settings -->\n(.*?\n)\n", text, re.S)
    assert found is not None, "README.md lost its table of CONVPLAN_* variables"
    table = found.group(1)
    listed = re.findall(r"^\| `(" + PREFIX + r"[A-Z0-9_]+)` \|", table, re.M)
    assert listed == list(variables())
    assert table == markdown_table(), (
        "README.md's table differs from convplan/settings.py: paste the output of "
        "`python -m convplan.settings`")
