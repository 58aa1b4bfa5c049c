//! chat-notify's metrics, with the help text `/metrics` shows (docs/deploy.md#metrics).

use chat_runtime::metrics::Metric;

pub const CATALOGUE: &[Metric] = &[
    Metric::gauge(
        "chat_notify_member_cache_entries",
        "Rooms whose member list is cached (at most NOTIFY_MEMBERS_CACHE_MAX).",
    ),
    Metric::counter("chat_notify_events_total", "Room events processed."),
    Metric::counter(
        "chat_notify_errors_total",
        "Batches that failed and will be redelivered.",
    ),
    Metric::counter(
        "chat_notify_redeliveries_total",
        "Room events delivered again to notify.",
    ),
    Metric::counter(
        "chat_notify_notifications_total",
        "Notifications stored, by kind.",
    )
    .labelled(&["kind"]),
    Metric::counter(
        "chat_notify_state_stale_total",
        "Cached room state found stale and read again.",
    ),
    Metric::counter(
        "chat_notify_unread_from_stream_total",
        "Stream entries read to make unread counts exact above notify's ack floor.",
    ),
    Metric::counter(
        "chat_notify_unread_inexact_total",
        "Unread counts answered without the stream tail (notify far behind).",
    ),
    Metric::counter(
        "chat_notify_webhook_deliveries_total",
        "Webhook deliveries that succeeded.",
    ),
    Metric::counter(
        "chat_notify_webhook_failures_total",
        "Webhook delivery attempts that failed.",
    ),
    Metric::counter(
        "chat_notify_webhook_dropped_total",
        "Webhook deliveries given up after their last retry.",
    ),
    Metric::counter(
        "chat_notify_webhook_skipped_total",
        "Push webhooks not sent because the user was online when it was due.",
    ),
    Metric::histogram(
        "chat_notify_batch_seconds",
        "Time to process one batch, in seconds.",
    ),
    Metric::histogram("chat_notify_batch_size", "Events per batch."),
];
