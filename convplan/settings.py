"""Every ``CONVPLAN_*`` environment variable, declared once (pydantic-settings).

A leaf module: it imports nothing else from convplan, so every layer may read it without
breaking the import direction (api -> selector -> profiles -> kernels). Each group of settings
is its own class, read where it is used, so a wrong service limit cannot break the CLI's cost
store. `ServiceSettings.from_env` (and the others) raise `SettingsError`, a ValueError whose
message names the variable that is wrong and what it should be.

Sizes are `pydantic.ByteSize`: plain bytes or a number with a unit (24MiB, 64MB, 1.5 GiB,
500kB, 16k, TB, PiB ...); `Size` is the one grammar of a size, which a memory cap
(`selector.planning.PlanRequest`) is read with too. Durations are seconds, finite and bounded.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Self

import platformdirs
from pydantic import (
    BeforeValidator,
    ByteSize,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.sources.utils import parse_env_vars

PREFIX = "CONVPLAN_"
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
#: What the default JSON body limit allows a layer of a network description.
JSON_BYTES_PER_LAYER = 4 * KiB
#: No duration may be longer: a deadline of more than a week is a mistake, not a setting.
MAX_SECONDS = 7 * 86400.0

#: How to write a size, for the message of one that cannot be read.
SIZE_HINT = ("use bytes or a number with a unit (B, kB, MB, GB, KiB, MiB, GiB; e.g. 24MiB, "
             "64MB)")
#: The pydantic error types of a size that cannot be read (as opposed to one out of bounds).
SIZE_ERRORS = ("byte_size", "byte_size_unit")
_WHOLE_SIZE = re.compile(r"\s*[0-9]*\.?[0-9]+\s*[A-Za-z]*\s*")


def _whole_size(value: Any) -> Any:
    """ByteSize reads a leading number and unit and ignores the rest ("2**62" would be 2
    bytes), and takes True for 1: a size is an int, or a text that is a number and a unit and
    nothing else (the unit is ByteSize's to read)."""
    if isinstance(value, bool) or (isinstance(value, str) and not _WHOLE_SIZE.fullmatch(value)):
        raise PydanticCustomError("byte_size", "could not parse value and unit from byte string")
    return value


#: A size: bytes (an int) or a number with a unit (24MiB, 64MB, 1.5 GiB, 500kB, 16k).
SizeText = Annotated[ByteSize, BeforeValidator(_whole_size)]
#: A size of at least one byte.
Size = Annotated[SizeText, Field(ge=1)]
#: A positive count.
Count = Annotated[int, Field(ge=1)]


def seconds(default: float, minimum: float, description: str) -> Any:
    """A duration in seconds: finite, at least ``minimum``, at most `MAX_SECONDS`."""
    return Field(default, ge=minimum, le=MAX_SECONDS, allow_inf_nan=False,
                 description=description)


class SettingsError(ValueError):
    """A ``CONVPLAN_*`` variable that cannot be used; the message names it."""


#: The environment `from_env` reads instead of os.environ (a mapping given to it), if any.
_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("convplan_environ", default=None)


class _MappingSource(EnvSettingsSource):
    """The environment source, reading a given mapping instead of os.environ."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self._environ, self.case_sensitive, self.env_ignore_empty,
                              self.env_parse_none_str)


def _size_text(value: int) -> str:
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if value % size == 0:
            return f"{value // size}{unit}"
    return str(value)


class _Settings(BaseSettings):
    """What every group shares: the prefix, empty values read as unset, immutability."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, env_ignore_empty=True, frozen=True,
                                      extra="ignore", validate_default=True)

    @classmethod
    def settings_customise_sources(
            cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # arguments, then the environment (or the mapping given to `from_env`); no .env files
        # or secret folders: what configures the server is what its environment says
        environ = _ENVIRON.get()
        if environ is None:
            return init_settings, env_settings
        return init_settings, _MappingSource(settings_cls, environ)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **values: Any) -> Self:
        """The settings from ``env`` (default: os.environ), ``values`` overriding them;
        `SettingsError` naming every variable that is wrong."""
        token = _ENVIRON.set(env) if env is not None else None
        try:
            return cls(**values)
        except ValidationError as error:
            raise SettingsError(cls._explain(error)) from None
        finally:
            if token is not None:
                _ENVIRON.reset(token)

    @classmethod
    def _explain(cls, error: ValidationError) -> str:
        problems = []
        for e in error.errors():
            field = str(e["loc"][0]) if e["loc"] else ""
            name = env_name(field)
            secret = field in cls.model_fields and \
                cls.model_fields[field].annotation in (SecretStr, SecretStr | None)
            given = "" if secret else f"={e.get('input')!r}"
            hint = SIZE_HINT if e["type"] in SIZE_ERRORS else e["msg"]
            problems.append(f"{name}{given}: {hint}")
        return "; ".join(problems)

    @classmethod
    def variables(cls) -> dict[str, FieldInfo]:
        """The variables this group reads, by name."""
        return {env_name(field): info for field, info in cls.model_fields.items()}


def env_name(field: str) -> str:
    """The variable of a settings field: ``max_body`` -> ``CONVPLAN_MAX_BODY``."""
    return f"{PREFIX}{field.upper()}"


# -- the groups ------------------------------------------------------------------------------
def _cache_db() -> Path:
    # on Linux $XDG_CACHE_HOME/convplan, else ~/.cache/convplan (as before platformdirs)
    return Path(platformdirs.user_cache_dir("convplan", appauthor=False)) / "costs.sqlite"


class StoreSettings(_Settings):
    """The cost store (`profiles.store.default_db_path`), for the CLI and the service alike."""

    db: Path = Field(default_factory=_cache_db, description=(
        "the cost store (SQLite): measurements are a cache of this machine's speed"),
        json_schema_extra={"default_doc": "`~/.cache/convplan/costs.sqlite` (the user cache)"})


class BlasSettings(_Settings):
    """The OpenBLAS kernels. Declared here for the documentation and the check that every
    variable is declared; `kernels.blas` reads ``os.environ`` itself (kernels depend on NumPy
    only) before it loads the library, and must keep the same name and meaning."""

    blas_coretype: str = Field("auto", min_length=1, description=(
        "the OpenBLAS core type of convplan's BLAS: `auto` (SkylakeX on AVX-512 CPUs, else "
        "OpenBLAS's choice), `openblas` (its own choice, honouring `OPENBLAS_CORETYPE`) or a "
        "core type name"))
    blas_thread_timeout: int = Field(4, ge=4, le=30, description=(
        "how long an idle OpenBLAS worker spins before it sleeps, as OpenBLAS's "
        "`OPENBLAS_THREAD_TIMEOUT` (2**N cycles; OpenBLAS's own default is 28, about 0.1 s): "
        "a spinning worker takes the core the run's own element-wise work and other processes "
        "need (bench/blas_threads.py)"))


def _default_concurrency() -> int:
    return max(1, min(4, os.cpu_count() or 1))


class ServiceSettings(_Settings):
    """The HTTP service's limits (`convplan serve`); the fields are in the README's order."""

    max_body: Size = Field(ByteSize(64 * MiB), description=(
        "a request body (413; chunked ones too): ONNX uploads"))
    max_json_body: Size | None = Field(None, description=(
        "any other body, checked before it is parsed (a `/v1/run` input travels in it, as "
        "base64: raise this for inputs over ~3 MiB)"),
        json_schema_extra={"default_doc": "4 KiB a layer + 1 MiB (5 MiB)"})
    body_timeout: float = seconds(60.0, 0.1, "receiving a body (408 `body_timeout`)")
    max_layers: Count = Field(1000, description="layers of a network")
    max_tensor_bytes: Size = Field(ByteSize(GiB), description="one activation or input")
    max_weight_bytes: Size = Field(ByteSize(GiB), description=(
        "all weights (descriptions and ONNX files alike); weights plus all activations are "
        "bounded by the sum of the two"))
    max_time_limit: float = seconds(60.0, 0.01, "the solver's time limit")
    max_budget: float = seconds(2.0, 0.001, "measuring, per candidate")
    max_repeat: Count = Field(10, description="timed runs of `/v1/run`")
    request_timeout: float = seconds(120.0, 0.1, (
        "one heavy request, all in (504 `deadline_exceeded`; planning measures and solves "
        "within it)"))
    job_timeout: float = seconds(900.0, 0.1, "a profiling job")
    worker_memory: SizeText | None = Field(None, ge=0, description=(
        "a worker's address space (`off`: none); a request over it gets 422 `too_large`"),
        json_schema_extra={"default_doc": "2GiB + 64MiB a core + 2 tensors + the weights"})
    kill_grace: float = seconds(1.0, 0, (
        "between SIGTERM and SIGKILL of an overrunning worker"))
    concurrency: Count = Field(default_factory=_default_concurrency, description=(
        "worker processes (heavy requests served at once)"),
        json_schema_extra={"default_doc": "min(4, cores)"})
    session_cache: int = Field(2, ge=0, le=64, description=(
        "sessions each worker keeps for `/v1/run` (a network and plan loaded, prepared and "
        "allocated: a later run of the same network, plan, shapes and threads in that worker "
        "skips all of it); 0: none. They hold their weights and arena between requests, "
        "within the worker's memory: a request that runs out of it empties the cache and "
        "tries once more"))
    queue: int = Field(32, ge=0, description="requests waiting for a worker, then 503")
    queue_timeout: float = seconds(10.0, 0, (
        "waiting for a worker, then 503 with `Retry-After`"))
    retry_after: Count = Field(2, description="seconds a 503 asks the client to wait "
                                              "(`Retry-After`)",
                               json_schema_extra={"default_doc": "2 s"})
    max_jobs: Count = Field(64, description="the job table")
    max_pending_jobs: Count = Field(4, description="jobs queued or running")
    api_key: SecretStr | None = Field(None, description=(
        "with it, every route but `/healthz` and the docs needs the `X-API-Key` header"))

    @field_validator("worker_memory", mode="before")
    @classmethod
    def _no_limit(cls, value: Any) -> Any:
        """``off``, ``none`` and ``0`` mean no address-space limit (0)."""
        if isinstance(value, str) and value.strip().lower() in ("0", "none", "off"):
            return 0
        return value

    @property
    def json_body_limit(self) -> int:
        """`max_json_body`, by default 4 KiB a layer (a described layer takes 50 to 300 bytes
        of JSON) and 1 MiB for the options and a run's input (base64), within `max_body`."""
        if self.max_json_body is not None:
            return int(self.max_json_body)
        return min(int(self.max_body), self.max_layers * JSON_BYTES_PER_LAYER + MiB)

    @property
    def worker_memory_limit(self) -> int | None:
        """A worker's address space (None: no limit). By default a measured baseline with
        headroom (an idle worker maps about 0.2 GiB, one that planned and ran GoogLeNet with
        --check 0.75 GiB), the BLAS buffers of every core, and two of the largest tensors plus
        the largest weights a request may have."""
        if self.worker_memory is not None:
            return int(self.worker_memory) or None
        cores = os.cpu_count() or 1
        return 2 * GiB + 64 * MiB * cores + 2 * int(self.max_tensor_bytes) + \
            int(self.max_weight_bytes)

    @property
    def key(self) -> str | None:
        """The API key, or None when the service is open."""
        return self.api_key.get_secret_value() if self.api_key is not None else None


#: Every group, in the README's order.
GROUPS: tuple[type[_Settings], ...] = (StoreSettings, BlasSettings, ServiceSettings)


def variables() -> dict[str, FieldInfo]:
    """Every declared ``CONVPLAN_*`` variable, by name."""
    return {name: info for group in GROUPS for name, info in group.variables().items()}


def undeclared(env: Mapping[str, str] | None = None) -> list[str]:
    """The ``CONVPLAN_*`` names in ``env`` (default: os.environ) that no group declares: most
    likely misspelt, and otherwise ignored without a word."""
    env = os.environ if env is None else env
    known = set(variables())
    return sorted(k for k in env if k.upper().startswith(PREFIX) and k.upper() not in known)


# -- documentation ---------------------------------------------------------------------------
def _default_text(info: FieldInfo) -> str:
    extra = info.json_schema_extra
    if isinstance(extra, dict) and "default_doc" in extra:
        return str(extra["default_doc"])
    default = info.get_default(call_default_factory=False)
    if default is None:
        return "none"
    if isinstance(default, ByteSize):
        return _size_text(int(default))
    if isinstance(default, float):
        return f"{default:g} s"
    return f"`{default}`" if isinstance(default, str) else str(default)


def markdown_table() -> str:
    """The README's table of variables, from these declarations (tests/test_settings.py
    checks that the README holds exactly this)."""
    lines = ["| variable | default | what it sets |", "|---|---|---|"]
    for name, info in variables().items():
        lines.append(f"| `{name}` | {_default_text(info)} | {info.description} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
