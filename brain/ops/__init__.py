"""Operations: Prometheus metrics, night jobs, reports, alerts and Ray hosting."""
