//! Full-text search of the archive (protocol.md#ws-search, #nats `chat.api.search`).
//!
//! The index is the `search` column of `messages` (migrations 0005, 0007): a stored generated
//! `tsvector` of the body and, as one more lexeme, the room; written by PostgreSQL inside the
//! row's own write, so an insert, an edit (the body rewritten in place) and a delete (the body
//! emptied, `deleted` set) re-index in the same transaction and a search never sees a state the
//! archive does not have.
//!
//! A search is three steps: [`parse`] the query language (pure: words, `"phrases"`,
//! `-exclusions`), let PostgreSQL normalize each term exactly as it normalized the bodies
//! (`phraseto_tsquery('simple', …)`: a term can turn out to hold no word at all, like `???`), and
//! find the newest matches in one snapshot that reads the memberships of the user *as they are
//! now* ([`Search::matching`]). Searches use a pool of their own, with a statement timeout, so a
//! costly query never holds up the archive writer or history pages.

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
/// (protocol.md#ws-limits). Fewer results than `limit` then, and `has_more`.
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
    window: i64,
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
        Ok(Search {
            pool,
            epoch_id,
            window: DEFAULT_WINDOW,
        })
    }

    /// Reads the newest `window` rows by seq before asking the text index (see
    /// [`Search::matching`]).
    pub fn with_window(self, window: i64) -> Search {
        Search {
            window: window.max(1),
            ..self
        }
    }

    /// One search (protocol.md#ws `search`, §3 `chat.api.search`). With PostgreSQL unreachable or
    /// too slow: `unavailable`.
    pub async fn search(&self, req: SearchRequest) -> Result<SearchReply, ApiError> {
        let parsed = parse(&req.query)?;
        let limit = clamp_search_limit(req.limit) as usize;
        if let (Some(room), Some(user)) = (&req.room, &req.user)
            && !crate::rooms::is_member_of(&self.pool, room, user).await?
        {
            return Err(ApiError::forbidden("not a member of this room"));
        }
        let (include, exclude) = self.normalize(&parsed).await?;
        let tsquery = tsquery_text(&include, &exclude)?;
        if contradicts(&include, &exclude) {
            return Ok(SearchReply {
                results: Vec::new(),
                has_more: false,
            });
        }
        let mut rows = self
            .matching(&tsquery, &req, limit + 1)
            .await
            .map_err(search_db_error)?;
        self.add_state(&mut rows).await.map_err(search_db_error)?;
        Ok(bounded(rows, limit))
    }

    /// Results carry their current state (protocol.md#ws-search, Lifecycle), folded from their
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
    /// did to the bodies): the included terms, then the excluded ones.
    async fn normalize(
        &self,
        parsed: &ParsedQuery,
    ) -> Result<(Vec<String>, Vec<String>), ApiError> {
        let terms: Vec<&str> = parsed
            .include
            .iter()
            .chain(&parsed.exclude)
            .map(String::as_str)
            .collect();
        let mut normalized: Vec<String> = sqlx::query_scalar(
            "SELECT phraseto_tsquery('simple', t)::text
             FROM unnest($1::text[]) WITH ORDINALITY AS u(t, i) ORDER BY i",
        )
        .bind(&terms)
        .fetch_all(&self.pool)
        .await
        .map_err(search_db_error)?;
        let exclude = normalized.split_off(parsed.include.len().min(normalized.len()));
        Ok((normalized, exclude))
    }

    /// The newest `n` matches, in one snapshot (a read-only repeatable-read transaction: the
    /// memberships as they are now, the messages as archived now). Two ways to find them, each
    /// cheap where the other is not (measured on 1,000,000 messages, the user in 50 rooms, see
    /// docs/benchmarks.md "Search"):
    ///
    /// 1. the newest `window` rows of the epoch, read backwards by seq and filtered: a word in
    ///    many of the user's messages fills the page here; if it filled part of it, the window is
    ///    widened once, as far as the density seen says the rest needs (at most [`WIDEN_MAX`]);
    /// 2. below that window, the GIN index alone: the terms ∧ (one of the user's rooms), the
    ///    rooms being lexemes of the indexed text (migration 0007). Its cost follows the rarer of
    ///    the terms and the rooms, never the size of the archive; the planner is kept from
    ///    walking the primary key instead (a walk that a misjudged query, like a word minus
    ///    itself, took to the statement timeout).
    async fn matching(
        &self,
        tsquery: &str,
        req: &SearchRequest,
        n: usize,
    ) -> Result<Vec<ChatMessage>, sqlx::Error> {
        let before = req
            .before
            .map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await?;
        // The rooms searched; None: all (a trusted search).
        let rooms: Option<Vec<String>> = match (&req.user, &req.room) {
            (None, None) => None,
            (None, Some(room)) => Some(vec![room.as_str().to_owned()]),
            (Some(user), room) => Some(
                sqlx::query_scalar(
                    "SELECT room FROM memberships
                     WHERE user_id = $1 AND ($2::text IS NULL OR room = $2)",
                )
                .bind(user.as_str())
                .bind(room.as_ref().map(RoomId::as_str))
                .fetch_all(&mut *tx)
                .await?,
            ),
        };
        if rooms.as_ref().is_some_and(Vec::is_empty) {
            return Ok(Vec::new());
        }
        let mut found: Vec<i64> = Vec::with_capacity(n);
        let mut floor = before;
        let mut window = self.window;
        for widened in [false, true] {
            let (low, scanned, hits): (Option<i64>, i64, Vec<i64>) = sqlx::query_as(
                "SELECT min(w.seq), count(*),
                        COALESCE(array_agg(w.seq ORDER BY w.seq DESC) FILTER (WHERE w.hit), '{}')
                 FROM (SELECT seq, ($5::text[] IS NULL OR room = ANY($5)) AND NOT deleted
                                   AND kind = 'message' AND search @@ $4::tsquery AS hit
                       FROM messages WHERE epoch_id = $1 AND seq < $2
                       ORDER BY seq DESC LIMIT $3) w",
            )
            .bind(self.epoch_id)
            .bind(floor)
            .bind(window)
            .bind(tsquery)
            .bind(&rooms)
            .fetch_one(&mut *tx)
            .await?;
            let had = found.len();
            found.extend(hits.into_iter().take(n - had));
            // The page is full, or the window reached the first message of the epoch.
            if found.len() >= n || scanned < window {
                return fetch_rows(&mut tx, self.epoch_id, &found).await;
            }
            floor = low.unwrap_or(floor);
            let seen = found.len() as i64;
            if widened || (seen as usize) < DENSE_HITS {
                break;
            }
            // Rows the rest of the page should take at the density seen, and half again.
            let total_scanned = window;
            window = ((n as i64 - seen) * total_scanned / seen * 3 / 2).clamp(1, WIDEN_MAX);
        }
        let rest = (n - found.len()) as i64;
        let indexed = match &rooms {
            Some(rooms) if rooms.len() <= MAX_ROOM_TERMS => {
                format!("({tsquery}) & ({})", room_terms(rooms))
            }
            _ => tsquery.to_owned(),
        };
        let heap_rooms = rooms.filter(|r| r.len() > MAX_ROOM_TERMS);
        sqlx::query(
            "SELECT set_config('enable_indexscan', 'off', true),
                    set_config('enable_seqscan', 'off', true)",
        )
        .execute(&mut *tx)
        .await?;
        let older: Vec<i64> = sqlx::query_scalar(
            "SELECT seq FROM messages
             WHERE epoch_id = $1 AND search @@ $2::tsquery AND NOT deleted AND kind = 'message'
               AND seq < $3 AND ($4::text[] IS NULL OR room = ANY($4))
             ORDER BY seq DESC
             LIMIT $5",
        )
        .bind(self.epoch_id)
        .bind(&indexed)
        .bind(floor)
        .bind(&heap_rooms)
        .bind(rest)
        .fetch_all(&mut *tx)
        .await?;
        found.extend(older);
        fetch_rows(&mut tx, self.epoch_id, &found).await
    }
}

/// Newest rows of the epoch a search reads first by default (see [`Search::matching`]): about
/// 1 ms on a quiet machine.
pub const DEFAULT_WINDOW: i64 = 2000;

/// Most rows a widened window reads (the second look at the newest rows).
const WIDEN_MAX: i64 = 12_000;

/// Matches the first window must have found for a widening to be worth it: fewer, and the
/// terms are rare enough in the user's rooms for the index to be the cheaper way.
const DENSE_HITS: usize = 4;

/// Most rooms written into the indexed query as lexemes; a user in more rooms is searched with
/// the text index alone and the rooms checked on each row found (the query's cost grows with
/// its number of terms).
const MAX_ROOM_TERMS: usize = 1000;

/// The rooms as the tsquery alternative of their lexemes (migration 0007: a space, then the id).
fn room_terms(rooms: &[String]) -> String {
    let terms: Vec<String> = rooms
        .iter()
        .filter(|r| chat_proto::is_valid_id(r))
        .map(|r| format!("' {r}'"))
        .collect();
    if terms.is_empty() {
        // No valid room: a lexeme no row has (a lone space is never a room id).
        return "' '".to_owned();
    }
    terms.join(" | ")
}

/// The messages of `seqs` (newest first), read in the search's snapshot.
async fn fetch_rows(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    epoch_id: i32,
    seqs: &[i64],
) -> Result<Vec<ChatMessage>, sqlx::Error> {
    if seqs.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT m.room, m.seq, m.sender, COALESCE(m.sent_body, m.body), m.client_id, m.ts,
                COALESCE((SELECT max(p.seq) FROM messages p
                          WHERE p.epoch_id = m.epoch_id AND p.room = m.room AND p.seq < m.seq), 0),
                m.reply_to, m.thread
         FROM messages m
         WHERE m.epoch_id = $1 AND m.seq = ANY($2)
         ORDER BY m.seq DESC",
    )
    .bind(epoch_id)
    .bind(seqs)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().filter_map(row_to_message).collect())
}

/// Whether no message can match: an excluded term that an included one implies (the same
/// term, or one word of an included phrase: `deploy -deploy`, `"a b" -b`). Answered without
/// reading the archive; any such query would otherwise read every message the included
/// terms match and keep none.
pub fn contradicts(include: &[String], exclude: &[String]) -> bool {
    exclude.iter().filter(|e| !e.is_empty()).any(|e| {
        include.iter().any(|i| {
            i == e
                || lexemes(e)
                    .is_some_and(|x| x.len() == 1 && lexemes(i).is_some_and(|l| l.contains(&x[0])))
        })
    })
}

/// The lexemes of a normalized term (`'a' <-> 'b'`), all of which a match holds; None if it is
/// not of that form.
fn lexemes(term: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = term.trim();
    loop {
        let inner = rest.strip_prefix('\'')?;
        let mut lexeme = String::new();
        let mut chars = inner.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '\'') => {
                    if inner[i + 1..].starts_with('\'') {
                        lexeme.push('\'');
                        chars.next();
                    } else {
                        break i + 1;
                    }
                }
                (_, '\\') => lexeme.push(chars.next()?.1),
                (_, c) => lexeme.push(c),
            }
        };
        out.push(lexeme);
        rest = inner[end..].trim_start();
        if rest.is_empty() {
            return Some(out);
        }
        // Only phrase operators (`<->`, `<N>`) between lexemes.
        let op = rest.strip_prefix('<')?;
        let close = op.find('>')?;
        if !op[..close].chars().all(|c| c == '-' || c.is_ascii_digit()) {
            return None;
        }
        rest = op[close + 1..].trim_start();
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
    fn an_exclusion_an_included_term_implies_contradicts() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let c = |i: &[&str], e: &[&str]| contradicts(&s(i), &s(e));
        assert!(c(&["'a'"], &["'a'"]));
        assert!(c(&["'x'", "'a' <-> 'b'"], &["'b'"]));
        assert!(c(&["'a' <-> 'b'"], &["'a' <-> 'b'"]));
        assert!(c(&["'it''s'"], &["'it''s'"]));
        assert!(c(&["'well-known' <-> 'well' <-> 'known'"], &["'known'"]));
        assert!(!c(&["'a'"], &["'b'"]));
        assert!(!c(&["'a'"], &["'a' <-> 'b'"]));
        assert!(!c(&["'a' <-> 'b'"], &["'b' <-> 'a'"]));
        assert!(!c(&["'a'"], &[""]));
        assert_eq!(
            lexemes("'a' <-> 'it''s' <2> 'c'"),
            Some(s(&["a", "it's", "c"]))
        );
        assert_eq!(lexemes("'a' & 'b'"), None);
        assert_eq!(lexemes(""), None);
    }

    #[test]
    fn rooms_are_lexemes_no_word_can_be() {
        assert_eq!(
            room_terms(&["general".into(), "ops-2".into()]),
            "' general' | ' ops-2'"
        );
        assert_eq!(room_terms(&["bad room".into()]), "' '");
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
