"""Monitoring: the GPU exporter (NVML on :9835); Prometheus, alert rules and dashboards come later."""
