from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetDriftReportRequest(_message.Message):
    __slots__ = ("model", "version", "include_history")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_HISTORY_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    include_history: bool
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., include_history: _Optional[bool] = ...) -> None: ...

class Statistic(_message.Message):
    __slots__ = ("name", "value", "warn_threshold", "alert_threshold", "status", "p_value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    WARN_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    ALERT_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    P_VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: float
    warn_threshold: float
    alert_threshold: float
    status: str
    p_value: float
    def __init__(self, name: _Optional[str] = ..., value: _Optional[float] = ..., warn_threshold: _Optional[float] = ..., alert_threshold: _Optional[float] = ..., status: _Optional[str] = ..., p_value: _Optional[float] = ...) -> None: ...

class FeatureReport(_message.Message):
    __slots__ = ("feature", "side", "kind", "derive", "values", "status", "statistics")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    SIDE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DERIVE_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STATISTICS_FIELD_NUMBER: _ClassVar[int]
    feature: str
    side: str
    kind: str
    derive: str
    values: int
    status: str
    statistics: _containers.RepeatedCompositeFieldContainer[Statistic]
    def __init__(self, feature: _Optional[str] = ..., side: _Optional[str] = ..., kind: _Optional[str] = ..., derive: _Optional[str] = ..., values: _Optional[int] = ..., status: _Optional[str] = ..., statistics: _Optional[_Iterable[_Union[Statistic, _Mapping]]] = ...) -> None: ...

class Window(_message.Message):
    __slots__ = ("kind", "index", "start_unix_s", "end_unix_s", "requests", "rows", "schema_violations", "dropped", "reference_rows", "status", "features", "statistics")
    KIND_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    START_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    END_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VIOLATIONS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_ROWS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    STATISTICS_FIELD_NUMBER: _ClassVar[int]
    kind: str
    index: int
    start_unix_s: float
    end_unix_s: float
    requests: int
    rows: int
    schema_violations: int
    dropped: int
    reference_rows: int
    status: str
    features: _containers.RepeatedCompositeFieldContainer[FeatureReport]
    statistics: _containers.RepeatedCompositeFieldContainer[Statistic]
    def __init__(self, kind: _Optional[str] = ..., index: _Optional[int] = ..., start_unix_s: _Optional[float] = ..., end_unix_s: _Optional[float] = ..., requests: _Optional[int] = ..., rows: _Optional[int] = ..., schema_violations: _Optional[int] = ..., dropped: _Optional[int] = ..., reference_rows: _Optional[int] = ..., status: _Optional[str] = ..., features: _Optional[_Iterable[_Union[FeatureReport, _Mapping]]] = ..., statistics: _Optional[_Iterable[_Union[Statistic, _Mapping]]] = ...) -> None: ...

class Alert(_message.Message):
    __slots__ = ("model", "version", "feature", "statistic", "value", "threshold", "window", "raised_unix_s", "windows")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    STATISTIC_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    RAISED_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    feature: str
    statistic: str
    value: float
    threshold: float
    window: str
    raised_unix_s: float
    windows: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., feature: _Optional[str] = ..., statistic: _Optional[str] = ..., value: _Optional[float] = ..., threshold: _Optional[float] = ..., window: _Optional[str] = ..., raised_unix_s: _Optional[float] = ..., windows: _Optional[int] = ...) -> None: ...

class VersionReport(_message.Message):
    __slots__ = ("model", "version", "has_reference", "profile_path", "kernel", "window_requests", "window_s", "alert_window", "requests_total", "rows_total", "schema_violations_total", "dropped_total", "errors_total", "open_count_requests", "open_time_requests", "status", "windows", "alerts", "history")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HAS_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    PROFILE_PATH_FIELD_NUMBER: _ClassVar[int]
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    WINDOW_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    ALERT_WINDOW_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ROWS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VIOLATIONS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    DROPPED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ERRORS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    OPEN_COUNT_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    OPEN_TIME_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    has_reference: bool
    profile_path: str
    kernel: str
    window_requests: int
    window_s: float
    alert_window: str
    requests_total: int
    rows_total: int
    schema_violations_total: int
    dropped_total: int
    errors_total: int
    open_count_requests: int
    open_time_requests: int
    status: str
    windows: _containers.RepeatedCompositeFieldContainer[Window]
    alerts: _containers.RepeatedCompositeFieldContainer[Alert]
    history: _containers.RepeatedCompositeFieldContainer[Window]
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., has_reference: _Optional[bool] = ..., profile_path: _Optional[str] = ..., kernel: _Optional[str] = ..., window_requests: _Optional[int] = ..., window_s: _Optional[float] = ..., alert_window: _Optional[str] = ..., requests_total: _Optional[int] = ..., rows_total: _Optional[int] = ..., schema_violations_total: _Optional[int] = ..., dropped_total: _Optional[int] = ..., errors_total: _Optional[int] = ..., open_count_requests: _Optional[int] = ..., open_time_requests: _Optional[int] = ..., status: _Optional[str] = ..., windows: _Optional[_Iterable[_Union[Window, _Mapping]]] = ..., alerts: _Optional[_Iterable[_Union[Alert, _Mapping]]] = ..., history: _Optional[_Iterable[_Union[Window, _Mapping]]] = ...) -> None: ...

class GetDriftReportResponse(_message.Message):
    __slots__ = ("versions",)
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[VersionReport]
    def __init__(self, versions: _Optional[_Iterable[_Union[VersionReport, _Mapping]]] = ...) -> None: ...

class ListAlertsRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class ListAlertsResponse(_message.Message):
    __slots__ = ("alerts",)
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    alerts: _containers.RepeatedCompositeFieldContainer[Alert]
    def __init__(self, alerts: _Optional[_Iterable[_Union[Alert, _Mapping]]] = ...) -> None: ...
