from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Share(_message.Message):
    __slots__ = ("version", "percent")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    version: str
    percent: float
    def __init__(self, version: _Optional[str] = ..., percent: _Optional[float] = ...) -> None: ...

class Policy(_message.Message):
    __slots__ = ("model", "has_policy", "stable", "weights", "shadows", "revision", "source", "updated_by", "updated_at", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    HAS_POLICY_FIELD_NUMBER: _ClassVar[int]
    STABLE_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    SHADOWS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    UPDATED_BY_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    has_policy: bool
    stable: str
    weights: _containers.RepeatedCompositeFieldContainer[Share]
    shadows: _containers.RepeatedCompositeFieldContainer[Share]
    revision: int
    source: str
    updated_by: str
    updated_at: str
    reason: str
    def __init__(self, model: _Optional[str] = ..., has_policy: _Optional[bool] = ..., stable: _Optional[str] = ..., weights: _Optional[_Iterable[_Union[Share, _Mapping]]] = ..., shadows: _Optional[_Iterable[_Union[Share, _Mapping]]] = ..., revision: _Optional[int] = ..., source: _Optional[str] = ..., updated_by: _Optional[str] = ..., updated_at: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class SetPolicyRequest(_message.Message):
    __slots__ = ("model", "weights", "shadows", "stable", "actor", "reason", "expected_revision", "dry_run")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    SHADOWS_FIELD_NUMBER: _ClassVar[int]
    STABLE_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_REVISION_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    model: str
    weights: _containers.RepeatedCompositeFieldContainer[Share]
    shadows: _containers.RepeatedCompositeFieldContainer[Share]
    stable: str
    actor: str
    reason: str
    expected_revision: int
    dry_run: bool
    def __init__(self, model: _Optional[str] = ..., weights: _Optional[_Iterable[_Union[Share, _Mapping]]] = ..., shadows: _Optional[_Iterable[_Union[Share, _Mapping]]] = ..., stable: _Optional[str] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ..., expected_revision: _Optional[int] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class GetPolicyRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class PolicyResponse(_message.Message):
    __slots__ = ("policy",)
    POLICY_FIELD_NUMBER: _ClassVar[int]
    policy: Policy
    def __init__(self, policy: _Optional[_Union[Policy, _Mapping]] = ...) -> None: ...

class ListPoliciesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListPoliciesResponse(_message.Message):
    __slots__ = ("policies",)
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    policies: _containers.RepeatedCompositeFieldContainer[Policy]
    def __init__(self, policies: _Optional[_Iterable[_Union[Policy, _Mapping]]] = ...) -> None: ...

class ClearPolicyRequest(_message.Message):
    __slots__ = ("model", "actor", "reason", "to_config")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TO_CONFIG_FIELD_NUMBER: _ClassVar[int]
    model: str
    actor: str
    reason: str
    to_config: bool
    def __init__(self, model: _Optional[str] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ..., to_config: _Optional[bool] = ...) -> None: ...

class Change(_message.Message):
    __slots__ = ("at", "model", "actor", "action", "before", "after", "revision", "reason")
    AT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    BEFORE_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    at: str
    model: str
    actor: str
    action: str
    before: str
    after: str
    revision: int
    reason: str
    def __init__(self, at: _Optional[str] = ..., model: _Optional[str] = ..., actor: _Optional[str] = ..., action: _Optional[str] = ..., before: _Optional[str] = ..., after: _Optional[str] = ..., revision: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class GetHistoryRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class GetHistoryResponse(_message.Message):
    __slots__ = ("changes",)
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    changes: _containers.RepeatedCompositeFieldContainer[Change]
    def __init__(self, changes: _Optional[_Iterable[_Union[Change, _Mapping]]] = ...) -> None: ...

class ShadowWindow(_message.Message):
    __slots__ = ("start_unix_s", "duration_s", "mirrored", "dropped", "completed", "errors", "timeouts", "mismatches", "error_rate", "class_rows", "agreement", "mean_abs_diff", "max_abs_diff", "mean_latency_diff_ms", "max_latency_diff_ms", "mean_shadow_latency_ms")
    START_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    MIRRORED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUTS_FIELD_NUMBER: _ClassVar[int]
    MISMATCHES_FIELD_NUMBER: _ClassVar[int]
    ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    CLASS_ROWS_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    MEAN_ABS_DIFF_FIELD_NUMBER: _ClassVar[int]
    MAX_ABS_DIFF_FIELD_NUMBER: _ClassVar[int]
    MEAN_LATENCY_DIFF_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_LATENCY_DIFF_MS_FIELD_NUMBER: _ClassVar[int]
    MEAN_SHADOW_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    start_unix_s: float
    duration_s: float
    mirrored: int
    dropped: int
    completed: int
    errors: int
    timeouts: int
    mismatches: int
    error_rate: float
    class_rows: int
    agreement: float
    mean_abs_diff: float
    max_abs_diff: float
    mean_latency_diff_ms: float
    max_latency_diff_ms: float
    mean_shadow_latency_ms: float
    def __init__(self, start_unix_s: _Optional[float] = ..., duration_s: _Optional[float] = ..., mirrored: _Optional[int] = ..., dropped: _Optional[int] = ..., completed: _Optional[int] = ..., errors: _Optional[int] = ..., timeouts: _Optional[int] = ..., mismatches: _Optional[int] = ..., error_rate: _Optional[float] = ..., class_rows: _Optional[int] = ..., agreement: _Optional[float] = ..., mean_abs_diff: _Optional[float] = ..., max_abs_diff: _Optional[float] = ..., mean_latency_diff_ms: _Optional[float] = ..., max_latency_diff_ms: _Optional[float] = ..., mean_shadow_latency_ms: _Optional[float] = ...) -> None: ...

class ShadowReport(_message.Message):
    __slots__ = ("model", "version", "mirror_percent", "window_s", "windows", "total", "queue_depth")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MIRROR_PERCENT_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    mirror_percent: float
    window_s: float
    windows: _containers.RepeatedCompositeFieldContainer[ShadowWindow]
    total: ShadowWindow
    queue_depth: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., mirror_percent: _Optional[float] = ..., window_s: _Optional[float] = ..., windows: _Optional[_Iterable[_Union[ShadowWindow, _Mapping]]] = ..., total: _Optional[_Union[ShadowWindow, _Mapping]] = ..., queue_depth: _Optional[int] = ...) -> None: ...

class GetShadowReportRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class GetShadowReportResponse(_message.Message):
    __slots__ = ("reports",)
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    reports: _containers.RepeatedCompositeFieldContainer[ShadowReport]
    def __init__(self, reports: _Optional[_Iterable[_Union[ShadowReport, _Mapping]]] = ...) -> None: ...
