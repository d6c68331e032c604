from flipserve.probe import observed_from_prometheus

METRICS = """# HELP flipserve_requests_total requests
flipserve_requests_total{endpoint="/predict",status="200"} 146
flipserve_requests_total{endpoint="/predict",status="503"} 4
flipserve_requests_total{endpoint="/v2/health/ready",status="200"} 50
flipserve_request_latency_seconds_bucket{le="0.01"} 100
flipserve_request_latency_seconds_bucket{le="0.1"} 197
flipserve_request_latency_seconds_bucket{le="0.5"} 199
flipserve_request_latency_seconds_bucket{le="+Inf"} 200
flipserve_drift_p_value 0.002
flipserve_drift 1
"""


def test_observed_metrics_sum_labelled_series_and_take_p99_from_buckets() -> None:
    m = observed_from_prometheus(METRICS)
    assert (m.requests, m.errors) == (200, 4)
    assert m.p99_latency_ms == 500.0
    assert m.drift and m.drift_p_value == 0.002


def test_no_traffic_means_no_p99() -> None:
    assert observed_from_prometheus("").p99_latency_ms is None
