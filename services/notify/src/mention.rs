//! Who a message notifies (protocol.md#ws): `@id` mentions of room members and the other member of
//! a DM. Pure functions, so that every rule is unit-tested without a server.
//!
//! A mention is `@` followed by an id (`[A-Za-z0-9_-]{1,64}`), where the `@` is at the start of
//! the body or follows a character that is neither an id character, `@` nor `.` (so `a@b.c` is
//! an email, not a mention), and lies outside Markdown code spans: a run of n backticks opens a
//! span that the next run of exactly n backticks closes; an unclosed run is literal text.

use std::collections::BTreeSet;

use chat_proto::{NotificationKind, RoomKind, UserId, prefix_chars};

/// Longest preview of a notification, in characters.
pub const PREVIEW_CHARS: usize = 140;

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// The ids mentioned in `body`, deduplicated, in order of first appearance. Whether they are
/// members is decided by the caller.
pub fn mentions(body: &str) -> Vec<String> {
    let chars: Vec<char> = body.chars().collect();
    let mut found: Vec<String> = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '`' {
            let run = backtick_run(&chars, i);
            match closing_run(&chars, i + run, run) {
                // Skip the whole code span, closing run included.
                Some(close) => i = close + run,
                // An unclosed run is literal: go on after it.
                None => i += run,
            }
            continue;
        }
        if c == '@' && (i == 0 || may_precede(chars[i - 1])) {
            let start = i + 1;
            let mut end = start;
            while end < chars.len() && is_id_char(chars[end]) {
                end += 1;
            }
            let len = end - start;
            if (1..=64).contains(&len) {
                let id: String = chars[start..end].iter().collect();
                if !found.contains(&id) {
                    found.push(id);
                }
            }
            i = end.max(i + 1);
            continue;
        }
        i += 1;
    }
    found
}

/// May this character come right before the `@` of a mention?
fn may_precede(c: char) -> bool {
    !(is_id_char(c) || c == '@' || c == '.')
}

/// Length of the run of backticks starting at `i`.
fn backtick_run(chars: &[char], i: usize) -> usize {
    chars[i..].iter().take_while(|&&c| c == '`').count()
}

/// Start of the next run of exactly `n` backticks at or after `from`.
fn closing_run(chars: &[char], from: usize, n: usize) -> Option<usize> {
    let mut j = from;
    while j < chars.len() {
        if chars[j] == '`' {
            let run = backtick_run(chars, j);
            if run == n {
                return Some(j);
            }
            j += run;
        } else {
            j += 1;
        }
    }
    None
}

/// A notification to create for one recipient of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub user: UserId,
    pub kind: NotificationKind,
}

/// Who a message of `sender` in a room of `kind` with `members` notifies, and how: in a DM the
/// other member gets one `dm` notification; elsewhere each mentioned member other than the sender
/// gets one `mention`. At most one notification per user per message.
pub fn plan(kind: RoomKind, members: &[UserId], sender: &UserId, body: &str) -> Vec<Planned> {
    if kind == RoomKind::Dm {
        return members
            .iter()
            .filter(|m| *m != sender)
            .map(|m| Planned {
                user: m.clone(),
                kind: NotificationKind::Dm,
            })
            .take(1)
            .collect();
    }
    // No per-member work for a message that mentions nobody (the common case).
    let named = mentions(body);
    if named.is_empty() {
        return Vec::new();
    }
    let members: BTreeSet<&str> = members.iter().map(UserId::as_str).collect();
    named
        .into_iter()
        .filter(|id| id != sender.as_str() && members.contains(id.as_str()))
        .filter_map(|id| UserId::new(id).ok())
        .map(|user| Planned {
            user,
            kind: NotificationKind::Mention,
        })
        .collect()
}

/// Mentioned ids that are not in `members` (a hint that the member list may be stale).
pub fn unknown_mentions(members: &[UserId], sender: &UserId, body: &str) -> bool {
    mentions(body)
        .iter()
        .any(|id| id != sender.as_str() && !members.iter().any(|m| m.as_str() == id))
}

/// The preview of a body: its first 140 characters.
pub fn preview(body: &str) -> String {
    prefix_chars(body, PREVIEW_CHARS).to_owned()
}

/// The id of the notification of message `seq` for `user`: deterministic, so that a redelivered
/// event finds the notification it made the first time instead of making a second one.
/// [`plan`] plus the `reply` notifications of a message with `reply_to` or in a thread
/// (protocol.md#ws-notifications, v1.1): each author of a message it answers (`answered`: the quoted
/// message's, the thread root's) who is a member, is not the sender and gets no `mention` or
/// `dm` for it. Still at most one notification per user per message.
pub fn plan_with_replies(
    kind: RoomKind,
    members: &[UserId],
    sender: &UserId,
    body: &str,
    answered: &[UserId],
) -> Vec<Planned> {
    let mut planned = plan(kind, members, sender, body);
    for author in answered {
        if author != sender
            && members.contains(author)
            && !planned.iter().any(|p| p.user == *author)
        {
            planned.push(Planned {
                user: author.clone(),
                kind: NotificationKind::Reply,
            });
        }
    }
    planned
}

pub fn message_notification_id(seq: u64, user: &UserId) -> String {
    format!("m{seq}.{user}")
}

/// The id of the invite notification of `user` into `room` (seq is the room's last seq then).
/// `.` is not an id character, so the parts cannot run into each other.
pub fn invite_notification_id(room: &str, user: &UserId, seq: u64) -> String {
    format!("i{seq}.{room}.{user}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> UserId {
        UserId::new(s).unwrap()
    }

    fn ids(body: &str) -> Vec<String> {
        mentions(body)
    }

    #[test]
    fn plain_mentions() {
        assert_eq!(ids("@bob hi"), ["bob"]);
        assert_eq!(ids("hi @bob"), ["bob"]);
        assert_eq!(ids("hi @bob, @carol!"), ["bob", "carol"]);
        assert_eq!(ids("(@bob)"), ["bob"]);
        assert_eq!(ids("@bob: look"), ["bob"]);
        assert_eq!(ids("@bob."), ["bob"]);
        assert_eq!(ids("@bob's idea"), ["bob"]);
        assert_eq!(ids("@a_b-c9 x"), ["a_b-c9"]);
        assert_eq!(ids("line\n@bob"), ["bob"]);
        assert_eq!(ids("tab\t@bob"), ["bob"]);
        assert_eq!(ids("ünïcode→@bob"), ["bob"]);
    }

    #[test]
    fn repeated_mentions_count_once() {
        assert_eq!(ids("@bob @bob @carol @bob"), ["bob", "carol"]);
    }

    #[test]
    fn emails_and_glued_at_signs_are_not_mentions() {
        assert!(ids("mail a@b.c").is_empty());
        assert!(ids("bob@example.com").is_empty());
        assert!(ids("x.@bob").is_empty());
        assert!(ids("@@bob").is_empty());
        assert!(ids("a_@bob").is_empty());
        assert!(ids("a-@bob").is_empty());
        assert!(ids("9@bob").is_empty());
    }

    #[test]
    fn lone_or_invalid_at_signs() {
        assert!(ids("@").is_empty());
        assert!(ids("@ bob").is_empty());
        assert!(ids("@.bob").is_empty());
        assert!(ids("").is_empty());
        assert!(ids(&format!("@{}", "a".repeat(65))).is_empty());
        assert_eq!(ids(&format!("@{}", "a".repeat(64))), ["a".repeat(64)]);
    }

    #[test]
    fn code_spans_hide_mentions() {
        assert!(ids("`@bob`").is_empty());
        assert!(ids("see `x @bob y` here").is_empty());
        assert!(ids("``a ` @bob``").is_empty());
        assert!(ids("```\n@bob\n```").is_empty());
        assert_eq!(ids("`code` @bob"), ["bob"]);
        assert_eq!(ids("`@carol` and @bob"), ["bob"]);
    }

    #[test]
    fn unclosed_backticks_are_literal() {
        assert_eq!(ids("`@bob"), ["bob"]);
        assert_eq!(ids("it's `x @bob"), ["bob"]);
        // A run of two is not closed by a run of one.
        assert_eq!(ids("``x` @bob"), ["bob"]);
        // After a closed span, text is live again.
        assert_eq!(ids("`a` `@c` @bob `"), ["bob"]);
    }

    #[test]
    fn plan_mentions_members_but_not_the_sender_or_strangers() {
        let members = [u("alice"), u("bob"), u("carol")];
        let p = plan(
            RoomKind::Public,
            &members,
            &u("alice"),
            "@alice @bob @dave @carol @bob a@b.c",
        );
        assert_eq!(
            p,
            vec![
                Planned {
                    user: u("bob"),
                    kind: NotificationKind::Mention
                },
                Planned {
                    user: u("carol"),
                    kind: NotificationKind::Mention
                },
            ]
        );
        assert!(plan(RoomKind::Private, &members, &u("alice"), "no one").is_empty());
        assert!(unknown_mentions(&members, &u("alice"), "hi @dave"));
        assert!(!unknown_mentions(&members, &u("alice"), "hi @bob @alice"));
    }

    #[test]
    fn a_dm_notifies_the_other_member_once() {
        let members = [u("alice"), u("bob")];
        let p = plan(RoomKind::Dm, &members, &u("alice"), "@bob hi @bob");
        assert_eq!(
            p,
            vec![Planned {
                user: u("bob"),
                kind: NotificationKind::Dm
            }]
        );
        let p = plan(RoomKind::Dm, &members, &u("bob"), "plain");
        assert_eq!(p[0].user, u("alice"));
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn previews_count_characters() {
        let body = "é".repeat(200);
        assert_eq!(preview(&body).chars().count(), 140);
        assert_eq!(preview("short"), "short");
    }

    #[test]
    fn ids_are_deterministic() {
        assert_eq!(message_notification_id(42, &u("bob")), "m42.bob");
        assert_ne!(
            message_notification_id(42, &u("bob")),
            message_notification_id(42, &u("bo"))
        );
    }

    #[test]
    fn replies_notify_the_answered_author_once_and_never_the_sender() {
        let u = |s: &str| UserId::new(s).unwrap();
        let members = [u("alice"), u("bob"), u("carol")];
        let kinds = |p: Vec<Planned>| {
            p.into_iter()
                .map(|p| (p.user.as_str().to_owned(), p.kind))
                .collect::<Vec<_>>()
        };
        let p = plan_with_replies(RoomKind::Public, &members, &u("bob"), "ok", &[u("alice")]);
        assert_eq!(
            kinds(p),
            vec![("alice".to_owned(), NotificationKind::Reply)]
        );
        // Mentioned too: the mention is the one notification.
        let p = plan_with_replies(
            RoomKind::Public,
            &members,
            &u("bob"),
            "@alice ok",
            &[u("alice")],
        );
        assert_eq!(
            kinds(p),
            vec![("alice".to_owned(), NotificationKind::Mention)]
        );
        // One's own message, a quoted and thread author who are the same, a non-member.
        let p = plan_with_replies(RoomKind::Public, &members, &u("bob"), "x", &[u("bob")]);
        assert!(p.is_empty());
        let p = plan_with_replies(
            RoomKind::Public,
            &members,
            &u("bob"),
            "x",
            &[u("carol"), u("carol"), u("dave")],
        );
        assert_eq!(
            kinds(p),
            vec![("carol".to_owned(), NotificationKind::Reply)]
        );
        // In a DM the other member gets the dm notification, never a second one.
        let dm = [u("alice"), u("bob")];
        let p = plan_with_replies(RoomKind::Dm, &dm, &u("bob"), "x", &[u("alice")]);
        assert_eq!(kinds(p), vec![("alice".to_owned(), NotificationKind::Dm)]);
    }
}
