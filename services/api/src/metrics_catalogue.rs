//! chat-api's metrics, with the help text `/metrics` shows (docs/deploy.md#metrics).

use chat_runtime::metrics::Metric;

pub const CATALOGUE: &[Metric] = &[
    Metric::counter(
        "chat_api_requests_total",
        "HTTP API calls, by operation and outcome (ok or the error code).",
    )
    .labelled(&["op", "code"]),
    Metric::histogram(
        "chat_api_request_seconds",
        "Time to answer one HTTP API call, in seconds, by operation.",
    )
    .labelled(&["op"]),
    Metric::counter(
        "chat_api_auth_failures_total",
        "Calls refused for a missing, malformed, unknown or wrong key.",
    ),
    Metric::gauge(
        "chat_api_keys",
        "API keys known (the key bucket plus CHAT_API_KEYS_FILE).",
    ),
];
