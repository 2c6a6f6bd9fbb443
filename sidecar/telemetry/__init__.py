"""OpenTelemetry: traces, metrics and GPU/host sampling. Every instrument is declared once here."""
