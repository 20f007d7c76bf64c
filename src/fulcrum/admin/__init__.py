"""The control plane's HTTP side: admin API, metrics, dashboard, explain."""
