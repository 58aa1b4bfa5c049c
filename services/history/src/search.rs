//! Full-text search of the archive (CONTRACT §2 Search, §3 `chat.api.search`).
//!
//! The index is the `search` column of `messages` (migration 0005): a stored generated
//! `tsvector` of the body, written by PostgreSQL inside the row's own write, so an insert, an edit
//! (the body rewritten in place) and a delete (the body emptied, `deleted` set) re-index in the
//! same transaction and a search never sees a state the archive does not have.
//!
//! A search is three steps: [`parse`] the query language (pure: words, `"phrases"`,
//! `-exclusions`), let PostgreSQL normalize each term exactly as it normalized the bodies
//! (`phraseto_tsquery('simple', …)`: a term can turn out to hold no word at all, like `???`), and
//! run one statement that reads the memberships of the user *as they are now*. Searches use a
//! pool of their own, with a statement timeout, so a costly query never holds up the archive
//! writer or history pages.

use std::str::FromStr;
use std::time::Duration;

use chat_bus::api::{ApiError, MAX_QUERY_CHARS, SearchReply, SearchRequest, clamp_search_limit};
use chat_proto::{ChatMessage, RoomId, UserId};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use chat_runtime::db::db_error;

/// Most terms (words, phrases, exclusions) in one query: each is one lookup in the index.
pub const MAX_TERMS: usize = 32;

/// Longest a search statement may run before PostgreSQL cancels it (answered `unavailable`).
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(2);

/// Bytes of JSON the results of one reply may take, so that the reply (and the edge's
/// `search_results` frame, which adds the query and its envelope) stays below 1 MiB
/// (CONTRACT §2 Limits). Fewer results than `limit` then, and `has_more`.
pub const RESULTS_BUDGET: usize = 768 * 1024;

/// Connections of the search pool.
const POOL_SIZE: u32 = 8;

/// A query in the contract's language: every `include` term must match, no `exclude` term may.
/// A term is one word or a phrase (several words, matched adjacent and in order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedQuery {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

/// Parses a query: whitespace separates terms; `"…"` is a phrase (an unclosed quote runs to the
/// end); a `-` in front of a word or phrase excludes it. Terms without any letter or digit are
/// left out (a lone `-`, `""`, `???`). No term to include: `bad_request`, as are control
/// characters (whitespace aside), more than [`MAX_QUERY_CHARS`] characters or [`MAX_TERMS`] terms.
pub fn parse(query: &str) -> Result<ParsedQuery, ApiError> {
    if chat_proto::char_len(query) > MAX_QUERY_CHARS {
        return Err(ApiError::bad_request(format!(
            "query is longer than {MAX_QUERY_CHARS} characters"
        )));
    }
    if query.chars().any(|c| c.is_control() && !c.is_whitespace()) {
        return Err(ApiError::bad_request(
            "query must not contain control characters",
        ));
    }
    let mut parsed = ParsedQuery {
        include: Vec::new(),
        exclude: Vec::new(),
    };
    let mut terms = 0;
    let mut rest = query;
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            break;
        }
        let negated =
            rest.len() > 1 && rest.starts_with('-') && !rest[1..].starts_with(char::is_whitespace);
        if negated {
            rest = &rest[1..];
        }
        let text;
        if let Some(inner) = rest.strip_prefix('"') {
            let end = inner.find('"').unwrap_or(inner.len());
            text = &inner[..end];
            rest = inner.get(end + 1..).unwrap_or("");
        } else {
            let end = rest
                .find(|c: char| c.is_whitespace() || c == '"')
                .unwrap_or(rest.len());
            text = &rest[..end];
            rest = &rest[end..];
        }
        if !text.chars().any(char::is_alphanumeric) {
            continue;
        }
        terms += 1;
        if terms > MAX_TERMS {
            return Err(ApiError::bad_request(format!(
                "a query holds at most {MAX_TERMS} terms"
            )));
        }
        let words = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if negated {
            parsed.exclude.push(words);
        } else {
            parsed.include.push(words);
        }
    }
    if parsed.include.is_empty() {
        return Err(no_positive_term());
    }
    Ok(parsed)
}

fn no_positive_term() -> ApiError {
    ApiError::bad_request("the query has no word to search for")
}

/// The `tsquery` text of a parsed query, from each term's normalized form (`phraseto_tsquery`
/// output, in the order of `include` then `exclude`). Terms that normalized to nothing are
/// dropped; none left to include is `bad_request` (an exclusion alone would match everything).
pub fn tsquery_text(include: &[String], exclude: &[String]) -> Result<String, ApiError> {
    let mut parts: Vec<String> = include
        .iter()
        .filter(|q| !q.is_empty())
        .map(|q| format!("({q})"))
        .collect();
    if parts.is_empty() {
        return Err(no_positive_term());
    }
    parts.extend(
        exclude
            .iter()
            .filter(|q| !q.is_empty())
            .map(|q| format!("!({q})")),
    );
    Ok(parts.join(" & "))
}

/// Answers searches.
#[derive(Clone)]
pub struct Search {
    pool: PgPool,
    epoch_id: i32,
}

/// room, seq, sender, body as sent, client_id, ts, prev_seq, reply_to, thread.
type Row = (
    String,
    i64,
    String,
    String,
    String,
    i64,
    i64,
    Option<i64>,
    Option<i64>,
);

impl Search {
    /// A search service with its own lazily connecting pool on `url` (schema `schema`): a
    /// statement timeout, and plans made for each query's own terms (`force_custom_plan`: a
    /// generic plan cannot know whether a word is rare or common).
    pub fn new(url: &str, schema: &'static str, epoch_id: i32) -> Result<Search, sqlx::Error> {
        let timeout_ms = STATEMENT_TIMEOUT.as_millis().to_string();
        let opts = PgConnectOptions::from_str(url)?.options([
            ("search_path", schema),
            ("statement_timeout", timeout_ms.as_str()),
            ("plan_cache_mode", "force_custom_plan"),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy_with(opts);
        Ok(Search { pool, epoch_id })
    }

    /// One search (CONTRACT §2 `search`, §3 `chat.api.search`). With PostgreSQL unreachable or
    /// too slow: `unavailable`.
    pub async fn search(&self, req: SearchRequest) -> Result<SearchReply, ApiError> {
        let parsed = parse(&req.query)?;
        let limit = clamp_search_limit(req.limit) as usize;
        if let (Some(room), Some(user)) = (&req.room, &req.user)
            && !crate::rooms::is_member_of(&self.pool, room, user).await?
        {
            return Err(ApiError::forbidden("not a member of this room"));
        }
        let tsquery = self.normalize(&parsed).await?;
        let mut rows = self
            .matching(&tsquery, &req, limit + 1)
            .await
            .map_err(search_db_error)?;
        self.add_state(&mut rows).await.map_err(search_db_error)?;
        Ok(bounded(rows, limit))
    }

    /// Results carry their current state (CONTRACT §2 Search, Lifecycle), folded from their
    /// archived changes like a history page's; the body found is the current one.
    async fn add_state(&self, rows: &mut [ChatMessage]) -> Result<(), sqlx::Error> {
        let seqs: Vec<i64> = rows.iter().map(|m| m.seq as i64).collect();
        let roots: Vec<i64> = rows
            .iter()
            .filter(|m| m.thread.is_none())
            .map(|m| m.seq as i64)
            .collect();
        if seqs.is_empty() {
            return Ok(());
        }
        let known =
            crate::query::archived_state(&self.pool, self.epoch_id, &seqs, &roots, None).await?;
        for m in rows.iter_mut() {
            crate::query::set_state(m, &known);
        }
        Ok(())
    }

    /// Each term as PostgreSQL normalizes it for the `simple` configuration (what `to_tsvector`
    /// did to the bodies), assembled into one tsquery.
    async fn normalize(&self, parsed: &ParsedQuery) -> Result<String, ApiError> {
        let terms: Vec<&str> = parsed
            .include
            .iter()
            .chain(&parsed.exclude)
            .map(String::as_str)
            .collect();
        let normalized: Vec<String> = sqlx::query_scalar(
            "SELECT phraseto_tsquery('simple', t)::text
             FROM unnest($1::text[]) WITH ORDINALITY AS u(t, i) ORDER BY i",
        )
        .bind(&terms)
        .fetch_all(&self.pool)
        .await
        .map_err(search_db_error)?;
        let (include, exclude) = normalized.split_at(parsed.include.len().min(normalized.len()));
        tsquery_text(include, exclude)
    }

    /// The memberships are read by the statement itself (one snapshot with the messages), as an
    /// array of rooms rather than a semi-join: PostgreSQL then ANDs the bitmap of the text index
    /// with that of the rooms' index, where a semi-join let it walk all of the user's rooms
    /// whenever it misjudged a phrase or an exclusion (measured on 200,000 rows: 57 → 11 ms for a
    /// phrase of two common words, 71 → 13 ms for a word minus a common one).
    async fn matching(
        &self,
        tsquery: &str,
        req: &SearchRequest,
        n: usize,
    ) -> Result<Vec<ChatMessage>, sqlx::Error> {
        let before = req
            .before
            .map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT m.room, m.seq, m.sender, COALESCE(m.sent_body, m.body), m.client_id, m.ts,
                    COALESCE((SELECT max(p.seq) FROM messages p
                              WHERE p.epoch_id = m.epoch_id AND p.room = m.room AND p.seq < m.seq), 0),
                    m.reply_to, m.thread
             FROM messages m
             WHERE m.epoch_id = $1
               AND m.search @@ $2::tsquery
               AND NOT m.deleted
               AND m.kind = 'message'
               AND m.seq < $3
               AND ($4::text IS NULL OR m.room = $4)
               AND ($5::text IS NULL OR m.room = ANY(ARRAY(
                     SELECT ms.room FROM memberships ms WHERE ms.user_id = $5)))
             ORDER BY m.seq DESC
             LIMIT $6",
        )
        .bind(self.epoch_id)
        .bind(tsquery)
        .bind(before)
        .bind(req.room.as_ref().map(RoomId::as_str))
        .bind(req.user.as_ref().map(UserId::as_str))
        .bind(n as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().filter_map(row_to_message).collect())
    }
}

/// Like history's mapping, but a statement PostgreSQL cancelled (`query_canceled`: the statement
/// timeout) is `unavailable` (retry later), not our `internal` fault.
fn search_db_error(e: sqlx::Error) -> ApiError {
    match &e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("57014") => {
            metrics::counter!("chat_history_search_timeouts_total").increment(1);
            tracing::warn!(error = %e, "search cancelled");
            ApiError::unavailable()
        }
        _ => db_error(e),
    }
}

/// At most `limit` results, and no more than [`RESULTS_BUDGET`] bytes of them (`has_more` then).
/// A single result too big for the budget on its own (only a bot, bypassing the edge's
/// `max_body`, can publish one) comes with its body cut to fit, so paging always moves on.
pub fn bounded(mut rows: Vec<ChatMessage>, limit: usize) -> SearchReply {
    let mut has_more = rows.len() > limit;
    rows.truncate(limit);
    let mut used = 0usize;
    let mut keep = 0usize;
    for (i, m) in rows.iter_mut().enumerate() {
        let size = json_len(m) + 1;
        if used + size > RESULTS_BUDGET {
            if i == 0 {
                cut_to_fit(m, RESULTS_BUDGET);
                keep = 1;
            }
            break;
        }
        used += size;
        keep += 1;
    }
    has_more |= keep < rows.len();
    rows.truncate(keep);
    SearchReply {
        results: rows,
        has_more,
    }
}

fn json_len(m: &ChatMessage) -> usize {
    serde_json::to_vec(m).map_or(usize::MAX / 2, |v| v.len())
}

/// Shortens `m.body` (on a character boundary) so that `m` serializes within `budget` bytes:
/// one pass, counting what each character takes in JSON.
fn cut_to_fit(m: &mut ChatMessage, budget: usize) {
    let body = std::mem::take(&mut m.body);
    let room_for_body = budget.saturating_sub(json_len(m));
    let mut used = 0usize;
    let mut end = 0usize;
    for (at, c) in body.char_indices() {
        used += json_char_len(c);
        if used > room_for_body {
            break;
        }
        end = at + c.len_utf8();
    }
    m.body = body;
    m.body.truncate(end);
}

/// Bytes `c` takes inside a JSON string as serde_json writes it.
fn json_char_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if c < ' ' => 6,
        c => c.len_utf8(),
    }
}

fn row_to_message(
    (room, seq, sender, body, client_id, ts, prev, reply_to, thread): Row,
) -> Option<ChatMessage> {
    Some(ChatMessage {
        reply_to: reply_to.map(|r| r as u64),
        thread: thread.map(|t| t as u64),
        ..ChatMessage::new(
            RoomId::new(room).ok()?,
            seq as u64,
            prev as u64,
            UserId::new(sender).ok()?,
            body,
            client_id,
            ts,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_proto::ErrorCode;

    fn q(s: &str) -> (Vec<String>, Vec<String>) {
        let p = parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"));
        (p.include, p.exclude)
    }

    fn v(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    fn bad(s: &str) -> bool {
        parse(s).is_err_and(|e| e.code == ErrorCode::BadRequest)
    }

    #[test]
    fn words_phrases_and_exclusions() {
        assert_eq!(q("deploy"), (v(&["deploy"]), v(&[])));
        assert_eq!(q("  Deploy   Friday "), (v(&["Deploy", "Friday"]), v(&[])));
        assert_eq!(
            q(r#"deploy "release notes" -draft"#),
            (v(&["deploy", "release notes"]), v(&["draft"]))
        );
        assert_eq!(
            q(r#"notes -"first  draft" x"#),
            (v(&["notes", "x"]), v(&["first draft"]))
        );
        // An unclosed quote runs to the end; a quote ends a word.
        assert_eq!(q(r#"a "b c"#), (v(&["a", "b c"]), v(&[])));
        assert_eq!(q(r#"a"b c""#), (v(&["a", "b c"]), v(&[])));
        // A hyphen inside a word is part of it; a lone one is nothing.
        assert_eq!(q("well-known - x"), (v(&["well-known", "x"]), v(&[])));
        assert_eq!(q("x --y"), (v(&["x"]), v(&["-y"])));
        assert_eq!(q("naïve 日本"), (v(&["naïve", "日本"]), v(&[])));
    }

    #[test]
    fn a_query_without_a_positive_term_is_a_bad_request() {
        for s in [
            "", "   ", "-draft", "-a -b", "\"\"", "-", "???", "- ?", "-\"a b\"", "\t\n",
        ] {
            assert!(bad(s), "{s:?} should be refused");
        }
        assert!(!bad("? x"));
    }

    #[test]
    fn hostile_queries_are_refused() {
        assert!(bad("a\u{0}b"));
        assert!(bad("a\u{7}"));
        assert!(!bad("a\tb\nc"));
        assert!(bad(&"x".repeat(MAX_QUERY_CHARS + 1)));
        assert!(!bad(&"é".repeat(MAX_QUERY_CHARS)));
        let many = (0..=MAX_TERMS).map(|i| format!("w{i}")).collect::<Vec<_>>();
        assert!(bad(&many.join(" ")));
        assert!(!bad(&many[..MAX_TERMS].join(" ")));
    }

    #[test]
    fn tsquery_needs_a_normalized_positive_term() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            tsquery_text(&s(&["'a'", "'b' <-> 'c'"]), &s(&["'d'"])).unwrap(),
            "('a') & ('b' <-> 'c') & !('d')"
        );
        // A term the parser keeps but PostgreSQL finds no word in normalizes to "".
        assert_eq!(tsquery_text(&s(&["", "'x'"]), &s(&[""])).unwrap(), "('x')");
        let e = tsquery_text(&s(&[""]), &s(&["'d'"])).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
    }

    #[test]
    fn json_char_len_is_what_serde_json_writes() {
        for c in (0u32..0x300)
            .filter_map(char::from_u32)
            .chain(['😀', '日', '\u{2028}'])
        {
            let quoted = serde_json::to_string(&c.to_string()).unwrap();
            assert_eq!(json_char_len(c), quoted.len() - 2, "{c:?}");
        }
    }

    fn msg(seq: u64, body: String) -> ChatMessage {
        ChatMessage::new(
            RoomId::new("r").unwrap(),
            seq,
            0,
            UserId::new("a").unwrap(),
            body,
            "c".into(),
            1,
        )
    }

    #[test]
    fn results_are_bounded_in_count_and_bytes() {
        let rows: Vec<_> = (0..5).map(|i| msg(10 - i, "x".into())).collect();
        let r = bounded(rows.clone(), 3);
        assert_eq!((r.results.len(), r.has_more), (3, true));
        let r = bounded(rows, 5);
        assert_eq!((r.results.len(), r.has_more), (5, false));

        // 50 bodies of 60,000 bytes: far more than one frame holds.
        let big: Vec<_> = (0..50).map(|i| msg(100 - i, "é".repeat(30_000))).collect();
        let r = bounded(big, 50);
        assert!(r.has_more);
        assert!(!r.results.is_empty() && r.results.len() < 50);
        let bytes = serde_json::to_vec(&r).unwrap().len();
        assert!(bytes <= RESULTS_BUDGET + 64, "{bytes}");
        assert!(r.results.iter().all(|m| m.body.chars().count() == 30_000));

        // One body larger than the budget alone (control characters take 6 bytes of JSON).
        let huge = vec![msg(7, "\u{1}".repeat(300_000)), msg(6, "y".into())];
        let r = bounded(huge, 20);
        assert_eq!((r.results.len(), r.has_more), (1, true));
        assert_eq!(r.results[0].seq, 7);
        assert!(serde_json::to_vec(&r.results[0]).unwrap().len() <= RESULTS_BUDGET);
        let r = bounded(vec![msg(7, "z".repeat(RESULTS_BUDGET))], 20);
        assert_eq!((r.results.len(), r.has_more), (1, false));
        assert!(serde_json::to_vec(&r.results[0]).unwrap().len() <= RESULTS_BUDGET);
    }
}
