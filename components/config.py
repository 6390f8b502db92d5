"""One configuration for every step, in layers: packaged defaults, a user file, KEY=VALUE overrides."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from components.dataset import DatasetSchema, resolve_dataset
from components.errors import RecsysError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULTS_PATH = Path(__file__).with_name("defaults.yaml")
CONFIG_ENV = "RECSYS_CONFIG"  # a config file path every process of a run picks up


class ConfigError(RecsysError, ValueError):
    """The configuration cannot be used; the message says which key and why."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Paths(_Section):
    data_dir: Path
    artifacts_dir: Path
    pipeline_root: Path


class Data(_Section):
    source: Literal["movielens", "files"]
    interactions_path: Path | None = None
    users_path: Path | None = None
    items_path: Path | None = None
    movielens_wheel: str
    id_maps_dir: Path | None = None

    @model_validator(mode="after")
    def _files_need_paths(self) -> Data:
        if self.source == "files" and not all([self.interactions_path, self.users_path, self.items_path]):
            raise ValueError("data.source=files needs data.interactions_path, data.users_path and data.items_path")
        return self


class Validation(_Section):
    min_interactions: int = Field(ge=1)
    min_users: int = Field(ge=1)
    min_items: int = Field(ge=1)
    min_interactions_per_user: int = Field(ge=1)
    max_future_skew_seconds: int = Field(ge=0)
    sample_rows: int | None = Field(default=1_000_000, ge=1)


class Features(_Section):
    repo_path: Path = Field(description="the Feast repository (project code: a relative path is anchored at the "
                            "project root, not the working directory)")
    data_dir: Path | None = None
    online_store: Literal["sqlite", "redis"]
    redis_connection: str
    redis_password_env: str = Field(default="RECSYS_REDIS_PASSWORD", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    last_n_items: int = Field(ge=1, le=200)
    engine: Literal["duckdb", "spark"] = "duckdb"
    spark_master: str = "local[1]"
    duckdb_memory_limit: str = "4GB"
    popularity_windows_days: list[int]

    @field_validator("repo_path")
    @classmethod
    def _anchored(cls, value: Path) -> Path:
        return value if value.is_absolute() else PROJECT_ROOT / value

    @field_validator("redis_connection")
    @classmethod
    def _no_password(cls, value: str) -> str:
        if any(part.split("=", 1)[0].strip().lower() == "password" for part in value.split(",") if "=" in part):
            raise ValueError("features.redis_connection holds a password: remove it and put the password in the "
                             "environment variable named by features.redis_password_env (default "
                             "RECSYS_REDIS_PASSWORD)")
        return value


class Model(_Section):
    text_encoder: Literal["all-MiniLM-L6-v2", "wordllama-l2-256"] = Field(
        default="wordllama-l2-256", description="the shipped text encoder (its weights come with a pinned package): "
        "all-MiniLM-L6-v2 (a 6-layer transformer) | wordllama-l2-256 (a static token-embedding table)")
    encoder_dir: Path | None = Field(default=None, description="a folder holding another text encoder; when set, it "
                                     "replaces text_encoder")
    encoder_workers: int = Field(default=1, ge=0, le=256)
    encoder_tuning: Literal["frozen", "adapter", "lora", "full"] = "frozen"
    fine_tune_encoder: bool = Field(default=False, description="the earlier switch: true = encoder_tuning full; "
                                    "after validation it says whether encoder_tuning is full (the GPU path)")
    encoder_learning_rate: float = Field(default=2e-5, gt=0.0)
    adapter_hidden: int = Field(default=64, ge=1, le=4096)
    lora_layers: int = Field(default=1, ge=1, le=48)
    lora_rank: int = Field(default=8, ge=1, le=256)
    lora_alpha: float = Field(default=16.0, gt=0.0)
    lora_learning_rate: float = Field(default=5e-4, gt=0.0)
    encoder_items_per_step: int | None = Field(default=None, ge=1)
    embedding_dim: int = Field(ge=4, le=1024)
    max_seq_len: int = Field(ge=1, le=512)
    user_layers: int = Field(ge=0, le=12)
    user_heads: int = Field(ge=1, le=16)
    dropout: float = Field(ge=0.0, lt=1.0)
    id_dropout: float = Field(ge=0.0, le=1.0)
    item_representation: Literal["text_and_id", "text_only", "id_only"] = "text_and_id"
    temperature: float = Field(gt=0.0)
    learn_temperature: bool = False
    loss: Literal["auto", "full_softmax", "sampled_softmax", "in_batch"] = "in_batch"
    full_softmax_max_items: int = Field(default=100_000, ge=1)
    batch_rows_min_items: int = Field(default=20_000, ge=1)
    sampled_negatives: int = Field(default=2048, ge=1)
    logq_correction: bool
    hard_negatives: int = Field(ge=0)
    ensemble_members: int = Field(default=1, ge=1, le=16)
    ensemble_max_items: int = Field(default=20_000, ge=1)

    @property
    def encoder_source(self) -> str | Path:
        """What the text encoder is loaded from: `encoder_dir` when set, else the shipped `text_encoder`'s name."""
        return self.encoder_dir or self.text_encoder

    @model_validator(mode="after")
    def _tuning_fits_the_encoder(self) -> Model:
        if self.encoder_tuning == "lora" and self.reads_the_token_table:
            raise ValueError(f"model.encoder_tuning=lora tunes a transformer's top layers, but model.text_encoder="
                             f"{self.text_encoder} is a static token table with no layers: use encoder_tuning "
                             "frozen, adapter or full (full tunes the table)")
        return self

    @property
    def reads_the_token_table(self) -> bool:
        """The shipped static token table is the encoder (a folder given as encoder_dir is taken as a transformer)."""
        return self.encoder_dir is None and self.text_encoder == "wordllama-l2-256"

    @property
    def needs_gpu(self) -> bool:
        """Training tunes a transformer's every weight (encoder_tuning full): the GPU path. Tuning the token table
        is a lookup's gradient and runs on the CPU."""
        return self.fine_tune_encoder and not self.reads_the_token_table

    @property
    def tunes_encoder_weights(self) -> bool:
        """Training changes the text encoder's own weights (lora or full), not only what sits on its vectors."""
        return self.encoder_tuning in ("lora", "full")

    @model_validator(mode="before")
    @classmethod
    def _fine_tune_alias(cls, data: Any) -> Any:
        """`fine_tune_encoder: true` (the earlier key) means `encoder_tuning: full`; afterwards the flag mirrors it."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        tuning = data.get("encoder_tuning", "frozen")
        if str(data.get("fine_tune_encoder")).lower() in ("true", "1", "yes", "on"):
            if tuning not in ("frozen", "full"):
                raise ValueError(f"fine_tune_encoder=true (= encoder_tuning full) contradicts encoder_tuning={tuning}")
            tuning = data["encoder_tuning"] = "full"
        data["fine_tune_encoder"] = tuning == "full"
        return data


class Train(_Section):
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=2)
    learning_rate: float = Field(gt=0.0)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    warmup_epochs: int = Field(default=0, ge=0)
    refit_on_validation: bool = False
    weight_decay: float = Field(ge=0.0)
    weight_average_epochs: float = Field(default=0.0, ge=0.0)
    sparse_id_gradients: bool = True
    patience: int = Field(ge=1)
    seed: int
    device: Literal["auto", "cpu", "cuda"]
    num_threads: int = Field(ge=1)
    max_minutes: float = Field(gt=0.0)
    validation_max_users: int | None = Field(default=5000, ge=1)
    member_processes: int = Field(default=0, ge=0, le=64)


class SASRecSettings(_Section):
    """The SASRec baseline (full-softmax cross-entropy over the catalogue, early stopping on validation)."""

    enabled: bool
    max_seq_len: int = Field(ge=1, le=1024)
    embedding_dim: int = Field(ge=4, le=1024)
    blocks: int = Field(ge=1, le=12)
    heads: int = Field(ge=1, le=16)
    dropout: float = Field(ge=0.0, lt=1.0)
    epochs: int = Field(ge=1)
    patience: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    learning_rate: float = Field(gt=0.0)
    max_minutes: float = Field(gt=0.0)

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> SASRecSettings:
        if self.embedding_dim % self.heads:
            raise ValueError(f"embedding_dim={self.embedding_dim} must be divisible by heads={self.heads}")
        return self


class ALSSettings(_Section):
    """The ALS baseline from `implicit`: every combination of the grids is fitted and the best kept on validation."""

    enabled: bool
    factors: list[int] = Field(min_length=1)
    regularization: list[float] = Field(min_length=1)
    iterations: list[int] = Field(min_length=1)
    alpha: list[float] = Field(min_length=1)

    @model_validator(mode="after")
    def _positive_grids(self) -> ALSSettings:
        for name in ("factors", "regularization", "iterations", "alpha"):
            if any(v <= 0 for v in getattr(self, name)):
                raise ValueError(f"als.{name} values must be > 0, got {getattr(self, name)}")
        return self


class Evaluate(_Section):
    ks: list[int]
    bootstrap_samples: int = Field(ge=10)
    cold_start_items: int = Field(ge=0)
    cold_validation_items: int | None = Field(ge=0)
    gate_metric: str
    gate_min_improvement: float
    knn_neighbours: list[int] = Field(min_length=1)
    ease_lambdas: list[float] = Field(min_length=1)
    ease_max_items: int = Field(default=20_000, ge=1)
    max_users: int | None = Field(default=None, ge=1)
    sasrec: SASRecSettings
    als: ALSSettings

    @property
    def cold_validation_count(self) -> int:
        """Items held out to tune new-item scoring: `cold_validation_items`, by default as many as the report's."""
        return self.cold_start_items if self.cold_validation_items is None else self.cold_validation_items


class Compress(_Section):
    ndcg_tolerance: float = Field(ge=0.0, lt=1.0)
    prune_amount: float = Field(ge=0.0, lt=1.0)
    distill_layers: int = Field(ge=1, le=6)
    variants: list[Literal["fp32", "int8", "pruned", "distilled"]] = Field(min_length=1)
    distill_epochs: int = Field(ge=1)
    distill_batch_size: int = Field(ge=2)
    distill_learning_rate: float = Field(gt=0.0)
    latency_repeats: int = Field(ge=1)
    gate_latency: Literal["bundle", "user_tower", "text_encoder"]
    reencode_max_items: int = Field(ge=0)
    encoder_check_items: int = Field(ge=10)
    min_text_cosine: float = Field(ge=-1.0, le=1.0)


ASYMMETRIC_JWT_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")


class Jwt(_Section):
    """OIDC access tokens the API accepts (off while jwks_url is null)."""

    jwks_url: str | None = None
    issuer: str | None = None
    audience: str | None = None
    algorithms: list[str] = Field(min_length=1)
    leeway_s: float = Field(ge=0.0, le=300.0)
    jwks_cache_s: float = Field(gt=0.0)

    @model_validator(mode="after")
    def _complete_and_asymmetric(self) -> Jwt:
        bad = [a for a in self.algorithms if a not in ASYMMETRIC_JWT_ALGORITHMS]
        if bad:
            raise ValueError(f"algorithms: {bad} not allowed; JWTs are verified with a public key: "
                             f"{', '.join(ASYMMETRIC_JWT_ALGORITHMS)}")
        if self.jwks_url:
            if not self.jwks_url.startswith(("https://", "http://")):
                raise ValueError(f"jwks_url must be an http(s) URL, got {self.jwks_url!r}")
            missing = [name for name in ("issuer", "audience") if not getattr(self, name)]
            if missing:
                raise ValueError(f"jwks_url is set: {' and '.join(missing)} must be set too")
        return self


class Auth(_Section):
    """Who may call the API: bearer API keys (hashes in api_keys_file) and JWTs, with scopes."""

    enabled: bool
    api_keys_file: Path | None = None
    jwt: Jwt


class Serving(_Section):
    host: str
    triton_http_port: int = Field(ge=1, le=65535)
    triton_grpc_port: int = Field(ge=1, le=65535)
    triton_metrics_port: int = Field(ge=1, le=65535)
    model_repository: Path
    api_port: int = Field(ge=1, le=65535)
    api_workers: int = Field(ge=1, le=64)
    request_threads: int = Field(ge=1, le=64)
    request_batch: int = Field(ge=1, le=1024)
    pin_workers: bool
    trace_requests: bool
    top_k: int = Field(ge=1, le=1000)
    request_log: Path | str  # an SQLite file, or a postgresql:// URL (no password in it) when replicas share it
    request_log_retention_days: float = Field(gt=0.0)
    grpc_timeout_s: float = Field(gt=0.0)
    grpc_retries: int = Field(ge=0, le=10)
    triton_build_dir: Path
    triton_log_file: Path
    triton_start_timeout_s: float = Field(gt=0.0)
    max_batch_size: int = Field(ge=1, le=4096)
    max_queue_delay_us: int = Field(ge=0)
    graph_max_queue_delay_us: int = Field(ge=0)
    tower_instances: int = Field(ge=1, le=64)
    ann_min_items: int = Field(ge=0)
    ann_max_ef_search: int = Field(ge=1, le=10_000)
    ann_target_recall: float = Field(gt=0.0, le=1.0)
    retrieval_layout: Literal["steps", "graph"]
    max_body_bytes: int = Field(ge=1024, le=16 * 2**20)
    request_timeout_s: float = Field(gt=0.0, le=300.0)
    event_max_age_days: float = Field(gt=0.0)
    event_max_ahead_s: float = Field(ge=0.0)
    auth: Auth

    @field_validator("request_log", mode="after")
    @classmethod
    def _log_target(cls, value: Path | str) -> Path | str:
        """A postgresql:// URL stays a string (and must not carry a password); anything else is a path."""
        text = str(value)
        if not text.startswith(("postgresql://", "postgres://")):
            return Path(value)
        parts = urlsplit(text)
        if parts.password is not None or "password=" in parts.query:
            raise ValueError("the PostgreSQL URL carries a password: remove it and set RECSYS_REQUEST_LOG_PASSWORD "
                             "(or PGPASSWORD) in the environment instead")
        return text

    @model_validator(mode="after")
    def _workers_share_the_log(self) -> Serving:
        """Several API worker processes need a request log they all write and read (the popularity priors count
        every worker's interactions from it): PostgreSQL, not the single-writer SQLite file."""
        if self.api_workers > 1 and not isinstance(self.request_log, str):
            raise ValueError(f"api_workers={self.api_workers} needs a request log the workers share: set "
                             f"serving.request_log to a postgresql:// URL (the SQLite file {self.request_log} has "
                             f"one writer process), or api_workers=1")
        return self


class Monitoring(_Section):
    reports_dir: Path
    window_hours: float = Field(gt=0.0)
    quality_horizon_hours: float = Field(gt=0.0)
    quality_k: int = Field(ge=1, le=1000)
    min_requests: int = Field(ge=1)
    min_group_size: int = Field(ge=1)
    drift_num_method: str
    drift_cat_method: str
    drift_threshold: float = Field(gt=0.0)
    min_drift_rows: int = Field(ge=2)
    embedding_auc_threshold: float = Field(gt=0.5, le=1.0)
    embedding_max_rows: int = Field(ge=10)
    long_tail_head_fraction: float = Field(gt=0.0, lt=1.0)
    drift_share_threshold: float = Field(gt=0.0, le=1.0)
    quality_drop_threshold: float = Field(gt=0.0, le=1.0)
    fairness_ratio_threshold: float = Field(ge=0.0, le=1.0)
    signal_persistence_runs: int = Field(ge=1)
    cooldown_hours: float = Field(ge=0.0)
    retrain_timeout_hours: float = Field(gt=0.0)
    retrain_heartbeat_timeout_s: float = Field(gt=0.0)
    state_path: Path
    workspace_dir: Path | None = None
    workspace_project: str | None = Field(default=None, min_length=1)
    ui_port: int = Field(ge=1, le=65535)


class Kfp(_Section):
    image: str
    gpu_image: str
    host: str | None = None
    experiment: str


class FairnessMitigation(_Section):
    """Group-aware re-scoring chosen on validation (components.fairness_mitigation)."""

    enabled: bool
    attribute: str | None = None
    priors: list[Literal["popularity", "group_popularity"]] = Field(min_length=1)
    weights: list[float] = Field(min_length=1)
    max_overall_loss: float = Field(ge=0.0, lt=1.0)

    @field_validator("weights")
    @classmethod
    def _non_negative(cls, value: list[float]) -> list[float]:
        if any(w < 0 for w in value):
            raise ValueError("trust.fairness.weights must be >= 0")
        return value


class Defence(_Section):
    """Fake-account detection before training (components.shilling_defence)."""

    enabled: bool
    burst_window_s: float = Field(gt=0.0)
    candidate_z: float
    min_group: int = Field(ge=2)
    alpha: float = Field(gt=0.0, lt=1.0)
    min_shared_items: int = Field(ge=1)


class Trust(_Section):
    """Diversity on request, fairness mitigation, and the fake-account defence and alarm."""

    diversity: float = Field(ge=0.0, le=1.0)
    fairness: FairnessMitigation
    defence: Defence
    alarm_min_accounts: int = Field(ge=1)


class Config(_Section):
    paths: Paths
    dataset: DatasetSchema
    data: Data
    validation: Validation
    features: Features
    model: Model
    train: Train
    evaluate: Evaluate
    compress: Compress
    serving: Serving
    monitoring: Monitoring
    trust: Trust
    kfp: Kfp

    def dump(self) -> dict[str, Any]:
        """Plain-YAML-able dict (paths as strings)."""
        return self.model_dump(mode="json")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise ConfigError(f"config file not found: {path}") from err
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping, got {type(data).__name__}")
    return data


FREE_SECTIONS = {"dataset"}  # declared by the user; checked by their own model, not against the defaults' keys


def _merge(base: dict[str, Any], top: dict[str, Any], where: str = "", strict: bool = True) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if key not in base:
            if strict:
                raise ConfigError(f"unknown config key '{where}{key}'")
            out[key] = value
            continue
        if not strict and isinstance(base[key], dict) and isinstance(value, dict):
            out[key] = _merge(base[key], value, f"{where}{key}.", strict=False)
        elif isinstance(base[key], dict) and where + key in FREE_SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{where}{key}' is a section; give it a mapping")
            out[key] = _merge(base[key], value, f"{where}{key}.", strict=False)
        elif isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{where}{key}' is a section; give it a mapping")
            out[key] = _merge(base[key], value, f"{where}{key}.")
        else:
            out[key] = value
    return out


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn ["train.epochs=2", "model.fine_tune_encoder=true"] into a nested dict (values parsed as YAML)."""
    nested: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{pair}' must look like section.key=value")
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    return nested


_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")
_QUERY_PASSWORD = re.compile(r"(password=)[^&\s]*", re.IGNORECASE)


def _redacted(value: Any) -> Any:
    """A rejected value as an error message may show it: passwords in URLs replaced by ***."""
    if not isinstance(value, str):
        return value
    return _QUERY_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1***@", value))


def _problems(err: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']} (got {_redacted(e.get('input'))!r})"
                     for e in err.errors())


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the file at `path` (or $RECSYS_CONFIG), then KEY=VALUE overrides; validated."""
    data = _read_yaml(DEFAULTS_PATH)
    path = path or os.environ.get(CONFIG_ENV) or None
    if path:
        data = _merge(data, _read_yaml(Path(path)))
    if overrides:
        data = _merge(data, parse_overrides(overrides))
    try:
        data["dataset"] = resolve_dataset(data.get("dataset") or {})
    except ValueError as err:
        raise ConfigError(f"dataset: {err}") from err
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"invalid configuration: {_problems(err)}") from err


def absolute_paths(config: Config, base: str | Path | None = None) -> Config:
    """A copy whose relative paths are anchored at `base` (default: cwd), for subprocesses and pipelines."""
    base = Path(base or Path.cwd()).resolve()
    data = config.dump()
    for section in Config.model_fields:
        model = getattr(config, section)
        for name in type(model).model_fields:
            value = getattr(model, name)
            if isinstance(value, Path) and not value.is_absolute():
                data[section][name] = str(base / value)
    return Config.model_validate(data)


def config_from_text(text: str) -> Config:
    """The config a pipeline passes to its components as YAML text (merged over the defaults)."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config text is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError("config text must hold a mapping")
    merged = _merge(_read_yaml(DEFAULTS_PATH), data)
    try:
        merged["dataset"] = resolve_dataset(merged.get("dataset") or {})
    except ValueError as err:
        raise ConfigError(f"dataset: {err}") from err
    try:
        return Config.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(f"invalid configuration: {_problems(err)}") from err


def resolved(config: Config) -> dict[str, Any]:
    """The config as a mapping that reloads to itself: its dataset is marked complete (`preset: null`), so
    merging it over the defaults does not merge the default preset into it."""
    data = config.dump()
    data["dataset"] = {"preset": None, **data["dataset"]}
    return data


def config_to_text(config: Config) -> str:
    """The full resolved config as one line of JSON (valid YAML): KFP copies parameter defaults into a
    comment header of the compiled file, which a multi-line value would break."""
    return json.dumps(resolved(config))


def write_config(config: Config, path: str | Path) -> Path:
    """Write the full resolved config, so a subprocess can load exactly the same one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(resolved(config), sort_keys=False), encoding="utf-8")
    return path
