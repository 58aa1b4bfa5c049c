//! A message's current state (protocol.md#ws-lifecycle) as a pure fold of the changes that target
//! it, in seq order. The archive writer keeps it in the message's row with it; history pages
//! fold again what the stream holds beyond the archive, so a page is right from PostgreSQL,
//! from the stream tail, or from both.

use chat_bus::event::EventKind;
use chat_proto::{MessageState, UserId};

/// One valid change of a message (an edit, delete or reaction event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub seq: u64,
    pub kind: EventKind,
    pub from: UserId,
    /// An edit's new body.
    pub body: String,
    /// A reaction's emoji and whether it is added.
    pub emoji: String,
    pub on: bool,
    pub ts: i64,
}

/// A message being folded: its body and state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Folded {
    pub body: String,
    pub state: MessageState,
}

impl Folded {
    /// The message as sent, before any change.
    pub fn new(seq: u64, body: String) -> Self {
        Folded {
            body,
            state: MessageState {
                version: seq,
                ..Default::default()
            },
        }
    }

    /// Applies one change, which must come after every change applied so far (its seq is
    /// higher). A change that changes nothing — anything after the delete, adding a reaction
    /// the user has, removing one they have not — leaves the state and `version` as they are.
    pub fn apply(&mut self, c: &Change) {
        if self.state.deleted || c.seq <= self.state.version {
            return;
        }
        match c.kind {
            EventKind::Message => return,
            EventKind::Edit => {
                self.body.clone_from(&c.body);
                self.state.edited = Some(c.ts);
            }
            EventKind::Delete => {
                self.body.clear();
                self.state.deleted = true;
                self.state.reactions.clear();
            }
            EventKind::Reaction => {
                // Past the bounds of protocol.md#ws-limits, an addition changes nothing.
                if c.on && !chat_proto::reaction_fits(&self.state.reactions, &c.from, &c.emoji) {
                    return;
                }
                let users = self.state.reactions.entry(c.emoji.clone()).or_default();
                let has = users.contains(&c.from);
                if c.on == has {
                    if users.is_empty() {
                        self.state.reactions.remove(&c.emoji);
                    }
                    return;
                }
                if c.on {
                    users.push(c.from.clone());
                } else {
                    users.retain(|u| *u != c.from);
                    if users.is_empty() {
                        self.state.reactions.remove(&c.emoji);
                    }
                }
            }
        }
        self.state.version = c.seq;
    }
}

/// Folds `changes` (any order; sorted here) over message `seq` as sent with `body`.
pub fn fold<'a>(seq: u64, body: String, changes: impl IntoIterator<Item = &'a Change>) -> Folded {
    let mut sorted: Vec<&Change> = changes.into_iter().collect();
    sorted.sort_by_key(|c| c.seq);
    let mut m = Folded::new(seq, body);
    for c in sorted {
        m.apply(c);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(u: &str) -> UserId {
        UserId::new(u).unwrap()
    }

    fn change(seq: u64, kind: EventKind, from: &str) -> Change {
        Change {
            seq,
            kind,
            from: user(from),
            body: String::new(),
            emoji: String::new(),
            on: true,
            ts: seq as i64 * 10,
        }
    }

    fn edit(seq: u64, body: &str) -> Change {
        Change {
            body: body.into(),
            ..change(seq, EventKind::Edit, "a")
        }
    }

    fn react(seq: u64, from: &str, emoji: &str, on: bool) -> Change {
        Change {
            emoji: emoji.into(),
            on,
            ..change(seq, EventKind::Reaction, from)
        }
    }

    #[test]
    fn an_unchanged_message_is_its_own_version() {
        let m = fold(5, "hi".into(), []);
        assert_eq!(m.body, "hi");
        assert_eq!(m.state.version, 5);
        assert_eq!(m.state.edited, None);
        assert!(!m.state.deleted);
    }

    #[test]
    fn edits_apply_in_seq_order_whatever_order_they_come_in() {
        let changes = [edit(9, "third"), edit(6, "second")];
        let m = fold(5, "first".into(), &changes);
        assert_eq!(m.body, "third");
        assert_eq!((m.state.version, m.state.edited), (9, Some(90)));
    }

    #[test]
    fn reactions_are_sets_in_reaction_order() {
        let changes = [
            react(6, "b", "👍", true),
            react(7, "c", "👍", true),
            react(8, "b", "👍", true),  // already there: changes nothing
            react(9, "d", "🎉", false), // absent: changes nothing
            react(10, "b", "👍", false),
            react(11, "b", "👍", true),
        ];
        let m = fold(5, "x".into(), &changes);
        assert_eq!(m.state.reactions["👍"], vec![user("c"), user("b")]);
        assert!(!m.state.reactions.contains_key("🎉"));
        assert_eq!(m.state.version, 11);
        let m = fold(5, "x".into(), &changes[..4]);
        assert_eq!(m.state.version, 7, "no-op changes do not move the version");
        let m = fold(
            5,
            "x".into(),
            &[react(6, "b", "👍", true), react(7, "b", "👍", false)],
        );
        assert!(m.state.reactions.is_empty());
    }

    #[test]
    fn reactions_past_the_bounds_change_nothing() {
        use chat_proto::{MAX_REACTION_EMOJI, MAX_REACTIONS};
        // One user adds as many distinct emoji as a message may hold, and one more.
        let mut changes: Vec<Change> = (0..=MAX_REACTION_EMOJI)
            .map(|i| react(6 + i as u64, "b", &format!("e{i}"), true))
            .collect();
        let m = fold(5, "x".into(), &changes);
        assert_eq!(m.state.reactions.len(), MAX_REACTION_EMOJI);
        assert!(
            !m.state
                .reactions
                .contains_key(&format!("e{MAX_REACTION_EMOJI}"))
        );
        assert_eq!(
            m.state.version,
            5 + MAX_REACTION_EMOJI as u64,
            "the refused one is no change"
        );
        // Removing one makes room for another; re-adding one already there still changes nothing.
        let next = 100;
        changes.push(react(next, "b", "e0", false));
        changes.push(react(next + 1, "c", "new", true));
        changes.push(react(next + 2, "b", "e1", true));
        let m = fold(5, "x".into(), &changes);
        assert!(m.state.reactions.contains_key("new") && !m.state.reactions.contains_key("e0"));
        assert_eq!(m.state.version, next + 1);
        // Many users on one emoji: at most MAX_REACTIONS in all.
        let crowd: Vec<Change> = (0..=MAX_REACTIONS)
            .map(|i| react(6 + i as u64, &format!("u{i}"), "👍", true))
            .collect();
        let m = fold(5, "x".into(), &crowd);
        assert_eq!(m.state.reactions["👍"].len(), MAX_REACTIONS);
    }

    #[test]
    fn a_delete_clears_body_and_reactions_and_ends_all_change() {
        let changes = [
            edit(6, "edited"),
            react(7, "b", "👍", true),
            change(8, EventKind::Delete, "a"),
            edit(9, "too late"),
            react(10, "c", "🎉", true),
        ];
        let m = fold(5, "x".into(), &changes);
        assert_eq!(m.body, "");
        assert!(m.state.deleted);
        assert!(m.state.reactions.is_empty());
        assert_eq!(m.state.version, 8);
        assert_eq!(m.state.edited, Some(60));
    }

    #[test]
    fn applying_a_change_twice_or_an_older_one_changes_nothing() {
        let mut m = fold(5, "x".into(), &[edit(7, "b")]);
        let before = m.clone();
        m.apply(&edit(7, "b"));
        m.apply(&edit(6, "older"));
        assert_eq!(m, before);
    }
}
