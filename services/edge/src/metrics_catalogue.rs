//! The edge's metrics, with the help text `/metrics` shows (docs/deploy.md#metrics).

use chat_runtime::metrics::Metric;

pub const CATALOGUE: &[Metric] = &[
    Metric::counter(
        "chat_edge_disconnects_total",
        "Sessions closed with 4001 on a disconnect request (chat-api, chatctl).",
    ),
    Metric::counter(
        "chat_edge_membership_reconciled_total",
        "Membership changes a session learned from reconciling with chat-history (a missed announcement).",
    ),
    Metric::gauge(
        "chat_edge_connections",
        "Authenticated WebSocket connections open now.",
    ),
    Metric::gauge(
        "chat_edge_max_connections",
        "CHAT_MAX_CONNECTIONS: the authenticated connections this edge admits.",
    ),
    Metric::gauge(
        "chat_edge_unauthenticated_connections",
        "Upgraded connections that have not authenticated yet (CHAT_MAX_UNAUTHENTICATED).",
    ),
    Metric::gauge(
        "chat_edge_rooms",
        "Rooms this edge is subscribed to for its sessions.",
    ),
    Metric::counter(
        "chat_edge_admission_refused_total",
        "Connections refused before a session started, by reason.",
    )
    .labelled(&["why"]),
    Metric::counter(
        "chat_edge_auth_failures_total",
        "Tokens refused (bad, expired or forged).",
    ),
    Metric::counter(
        "chat_edge_closes_total",
        "Sessions closed, by WebSocket close code.",
    )
    .labelled(&["code"]),
    Metric::counter(
        "chat_edge_errors_total",
        "error frames sent, by error code.",
    )
    .labelled(&["code"]),
    Metric::counter(
        "chat_edge_fanout_deliveries_total",
        "Room events written to sessions (one per recipient).",
    ),
    Metric::counter(
        "chat_edge_feed_gaps_total",
        "Gaps seen in a room's live feed (prev_seq not the last seq seen), each filled from the stream.",
    ),
    Metric::counter(
        "chat_edge_feed_gaps_unfilled_total",
        "Feed gaps that could not be filled from the stream; the sessions are told to recover.",
    ),
    Metric::counter(
        "chat_edge_feed_invalid_entries_total",
        "Stream entries of the live feed that are not valid events (skipped, never delivered).",
    ),
    Metric::counter(
        "chat_edge_frames_in_total",
        "Client frames received, by type.",
    )
    .labelled(&["type"]),
    Metric::counter("chat_edge_frames_out_total", "Server frames sent, by type.")
        .labelled(&["type"]),
    Metric::counter(
        "chat_edge_jwks_fetches_total",
        "JWKS fetches from the identity provider.",
    ),
    Metric::counter(
        "chat_edge_jwks_fetch_failures_total",
        "JWKS fetches that failed.",
    ),
    Metric::counter(
        "chat_edge_jwks_stale_refusals_total",
        "Tokens refused because the cached JWKS is older than its maximum age.",
    ),
    Metric::counter(
        "chat_edge_origin_refused_total",
        "Upgrades refused for an Origin not in CHAT_ALLOWED_ORIGINS.",
    ),
    Metric::counter(
        "chat_edge_rate_limited_total",
        "Client frames answered rate_limited.",
    ),
    Metric::counter(
        "chat_edge_session_panics_total",
        "Session tasks that panicked (closed with 1011; their state was cleaned up).",
    ),
    Metric::counter(
        "chat_edge_slow_consumers_total",
        "Sessions closed with 4008 because their outbound queue was full.",
    ),
    Metric::counter(
        "chat_edge_tls_handshake_failures_total",
        "TLS handshakes that failed.",
    ),
    Metric::histogram(
        "chat_edge_send_ack_seconds",
        "From a send frame's arrival to its JetStream acknowledgement, in seconds.",
    ),
];
