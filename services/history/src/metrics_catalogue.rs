//! chat-history's metrics, with the help text `/metrics` shows (docs/deploy.md#metrics).

use chat_runtime::metrics::Metric;

pub const CATALOGUE: &[Metric] = &[
    Metric::counter(
        "chat_history_integration_relayed_total",
        "Publishes of integrations with an account of their own, by outcome (relayed, forbidden: a from not among the credential's bots, invalid, unavailable).",
    )
    .labelled(&["outcome"]),
    Metric::counter(
        "chat_history_room_quota_refusals_total",
        "Joins, creates and invites refused limit_exceeded by CHAT_MAX_ROOMS_PER_USER.",
    ),
    Metric::counter(
        "chat_history_archived_total",
        "Room events written to PostgreSQL.",
    ),
    Metric::counter(
        "chat_history_dead_letter_total",
        "Stream entries moved to the dead-letter stream CHAT_DLQ (invalid, or failing for good).",
    ),
    Metric::counter(
        "chat_history_invalid_entries_total",
        "Stream entries that are not valid events, by reason (never archived).",
    )
    .labelled(&["reason"]),
    Metric::counter(
        "chat_history_redeliveries_total",
        "Stream entries delivered again to the archive.",
    ),
    Metric::counter(
        "chat_history_write_errors_total",
        "Archive batches PostgreSQL refused or failed.",
    ),
    Metric::counter(
        "chat_history_writer_restarts_total",
        "Archive writer tasks restarted after they stopped.",
    ),
    Metric::counter(
        "chat_history_membership_unchecked_total",
        "Reads served without a membership check because PostgreSQL is down (public rooms only).",
    ),
    Metric::counter(
        "chat_history_pages_cut_to_size_total",
        "History pages cut short to stay under the page byte budget.",
    ),
    Metric::counter(
        "chat_history_scan_budget_exceeded_total",
        "Stream reads stopped at their scan budget.",
    ),
    Metric::counter(
        "chat_history_search_timeouts_total",
        "Searches stopped at PostgreSQL's statement timeout (answered unavailable).",
    ),
    Metric::counter(
        "chat_history_tail_too_long_total",
        "Pages answered unavailable because the room's stream tail above the archive was too long to fold into their state.",
    ),
    Metric::counter(
        "chat_history_stream_fallback_total",
        "History pages served from the stream because PostgreSQL is down.",
    ),
    Metric::counter(
        "chat_history_integration_deliveries_total",
        "Integration webhook deliveries the endpoint accepted (2xx), by endpoint.",
    )
    .labelled(&["endpoint"]),
    Metric::counter(
        "chat_history_integration_failures_total",
        "Integration webhook attempts that failed (retried with backoff, never dropped), by endpoint.",
    )
    .labelled(&["endpoint"]),
    Metric::gauge(
        "chat_history_integration_pending",
        "Integration events ordered and waiting for delivery, by endpoint.",
    )
    .labelled(&["endpoint"]),
    Metric::gauge(
        "chat_history_integration_unordered",
        "Integration events in the outbox waiting for the archive's ack floor to be ordered.",
    ),
    Metric::gauge(
        "chat_history_integration_oldest_seconds",
        "Age of the oldest integration event not delivered yet to every endpoint (0 when none).",
    ),
    Metric::histogram(
        "chat_history_batch_seconds",
        "Time to write one archive batch, in seconds.",
    ),
    Metric::histogram("chat_history_batch_size", "Events per archive batch."),
    Metric::histogram(
        "chat_history_page_seconds",
        "Time to answer one history page, in seconds.",
    ),
    Metric::histogram(
        "chat_history_search_seconds",
        "Time to answer one search, in seconds.",
    ),
    Metric::histogram(
        "chat_history_stream_bisect_probes",
        "Direct gets needed to find a page's start in the stream.",
    ),
];
