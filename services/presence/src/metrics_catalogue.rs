//! chat-presence's metrics, with the help text `/metrics` shows (docs/deploy.md#metrics).

use chat_runtime::metrics::Metric;

pub const CATALOGUE: &[Metric] = &[
    Metric::counter(
        "chat_presence_events_total",
        "Presence events applied, by kind.",
    )
    .labelled(&["kind"]),
    Metric::counter(
        "chat_presence_changes_total",
        "Users whose online status changed.",
    ),
    Metric::counter(
        "chat_presence_cas_conflicts_total",
        "Compare-and-set conflicts on a user's record (retried).",
    ),
    Metric::counter(
        "chat_presence_dead_edges_total",
        "Edges declared dead after missing their heartbeats (their sessions' users set offline).",
    ),
    Metric::counter(
        "chat_presence_fanout_skipped_total",
        "Room presence announcements skipped because the room is larger than PRESENCE_MAX_ROOM_FANOUT.",
    ),
    Metric::counter(
        "chat_presence_snapshots_truncated_total",
        "Presence snapshots cut at their maximum size.",
    ),
    Metric::counter("chat_presence_sweeps_total", "Sweeps for dead edges."),
];
