from flipserve.probe import observed_from_prometheus, observed_window, parse_metrics

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


def _scrape(ok: int, errors: int, fast: int, requests_le_1s: int | None = None) -> str:
    """A server's /metrics: ``ok`` 200s and ``errors`` 500s; ``fast`` of them under 10 ms."""
    total = ok + errors
    slow = total if requests_le_1s is None else requests_le_1s
    return "\n".join(
        [
            f'flipserve_requests_total{{endpoint="/predict",status="200"}} {ok}',
            f'flipserve_requests_total{{endpoint="/predict",status="500"}} {errors}',
            f'flipserve_request_latency_seconds_bucket{{endpoint="/predict",le="0.01"}} {fast}',
            f'flipserve_request_latency_seconds_bucket{{endpoint="/predict",le="1.0"}} {slow}',
            f'flipserve_request_latency_seconds_bucket{{endpoint="/predict",le="+Inf"}} {total}',
        ]
    )


def test_the_window_is_the_difference_from_the_baseline_summed_over_pods() -> None:
    """A long clean history does not dilute the errors in the window; both pods count."""
    baseline = {
        "api-a#0": parse_metrics(_scrape(100_000, 0, 100_000)).counters,
        "api-b#0": parse_metrics(_scrape(50_000, 0, 50_000)).counters,
    }
    now = {
        "api-a#0": parse_metrics(_scrape(100_100, 0, 100_100)),  # +100 fine
        "api-b#0": parse_metrics(_scrape(50_070, 30, 50_000, 50_100)),  # +100, 30 errors, slow
    }
    m = observed_window(baseline, now)
    assert (m.requests, m.errors) == (200, 30)
    assert m.error_rate == 0.15  # cumulative, one pod: 30 / 50,100
    assert m.p99_latency_ms == 1000.0  # the 100 slow ones are half the window


def test_a_pod_that_restarted_or_appeared_counts_from_zero_and_a_gone_one_not_at_all() -> None:
    baseline = {
        "api-a#0": parse_metrics(_scrape(1000, 0, 1000)).counters,
        "api-gone#0": parse_metrics(_scrape(1000, 0, 1000)).counters,
    }
    now = {
        "api-a#1": parse_metrics(_scrape(10, 5, 15)),  # restarted: a new key
        "api-new#0": parse_metrics(_scrape(20, 0, 20)),  # a replacement pod
    }
    m = observed_window(baseline, now)
    assert (m.requests, m.errors) == (35, 5)


def test_a_counter_that_went_down_is_read_as_a_restart() -> None:
    """Same key, lower counters (a restart the key missed): what it counts now is the window."""
    base = parse_metrics(_scrape(1000, 0, 1000)).counters
    m = observed_window({"api-a#0": base}, {"api-a#0": parse_metrics(_scrape(8, 2, 10))})
    assert (m.requests, m.errors) == (10, 2)


def test_drift_in_the_window_is_the_pods_gauges_now() -> None:
    now = {
        "a#0": parse_metrics("flipserve_drift_p_value 0.4\nflipserve_drift 0"),
        "b#0": parse_metrics("flipserve_drift_p_value 0.001\nflipserve_drift 1"),
    }
    m = observed_window({}, now)
    assert m.drift and m.drift_p_value == 0.001
