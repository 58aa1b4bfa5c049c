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
    room_terms_factor: f64,
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
            room_terms_factor: f64::from(DEFAULT_ROOM_TERMS_FACTOR),
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

    /// Writes the searched rooms into the text index's query unless the terms alone are
    /// estimated to match fewer than 1 / `factor` of those rooms' rows (see
    /// [`DEFAULT_ROOM_TERMS_FACTOR`]); 0: never (tests reach the other way so).
    pub fn with_room_terms_factor(self, factor: u32) -> Search {
        Search {
            room_terms_factor: f64::from(factor),
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
    /// 1. the newest messages of the searched rooms, read backwards by seq in spans (each room's
    ///    own `(epoch, room, seq)` range, so a span costs the rows of those rooms, not of the
    ///    epoch) and filtered: a term in many of them fills the page here. Each span is sized by
    ///    what the spans before it saw (rows per seq, matches per row); at most `window` rows
    ///    are read this way, and none past the point where the matches seen say the rest of the
    ///    page lies further back than that;
    /// 2. below the spans, the GIN index alone: the terms ∧ (one of the user's rooms), the
    ///    rooms being lexemes of the indexed text (migration 0007), or the terms alone and each
    ///    match's room checked when PostgreSQL estimates them much rarer than the rooms' rows
    ///    ([`index_plan`]; the spans read on instead when that is cheaper still). Its cost
    ///    follows the rarer of the terms and the rooms, never the size of the archive; the
    ///    planner is kept from walking the primary key instead (a walk that a misjudged query,
    ///    like a word minus itself, took to the statement timeout).
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
        let (first, last): (Option<i64>, Option<i64>) =
            sqlx::query_as("SELECT min(seq), max(seq) FROM messages WHERE epoch_id = $1")
                .bind(self.epoch_id)
                .fetch_one(&mut *tx)
                .await?;
        let (Some(first), Some(last)) = (first, last) else {
            return Ok(Vec::new());
        };
        let mut found: Vec<i64> = Vec::with_capacity(n);
        // Below `hi` nothing has been read yet.
        let mut hi = before.min(last.saturating_add(1));
        let mut plan = Spans::new(self.window);
        // The rooms' rows, estimated from the density the spans see (none seen: few), if the
        // index can be asked for them as lexemes; PostgreSQL's estimate of the terms' matches,
        // asked once, when the index is near.
        let room_rows = |plan: &Spans| {
            rooms
                .as_ref()
                .filter(|r| r.len() <= MAX_ROOM_TERMS)
                .map(|_| plan.rows_per_seq().unwrap_or(0.0) * (last - first + 1) as f64)
        };
        let mut matches: Option<f64> = None;
        loop {
            let span = match plan.next_span(n - found.len()) {
                Some(span) => span,
                None => {
                    // Past the budget, reading on still pays if it fills the page for less
                    // than the index would cost (once: the density seen is then confirmed).
                    let Some(need) = plan
                        .rows_to_fill(n - found.len())
                        .filter(|_| !plan.extended)
                    else {
                        break;
                    };
                    let m = estimated_matches(&mut tx, tsquery).await?;
                    matches = Some(m);
                    let (_, cost) = index_plan(m, room_rows(&plan), self.room_terms_factor);
                    if (need as f64) < cost {
                        plan.extend(need);
                        continue;
                    }
                    break;
                }
            };
            if hi <= first {
                return fetch_rows(&mut tx, self.epoch_id, &found).await;
            }
            let lo = hi.saturating_sub(span).max(first);
            let sql = if rooms.is_some() {
                "SELECT count(*), COALESCE(array_agg(m.seq ORDER BY m.seq DESC)
                     FILTER (WHERE NOT m.deleted AND m.kind = 'message'
                             AND m.search @@ $4::tsquery), '{}')
                 FROM unnest($5::text[]) AS r(room)
                 CROSS JOIN LATERAL (
                     SELECT seq, deleted, kind, search FROM messages
                     WHERE epoch_id = $1 AND room = r.room AND seq >= $2 AND seq < $3) m"
            } else {
                "SELECT count(*), COALESCE(array_agg(seq ORDER BY seq DESC)
                     FILTER (WHERE NOT deleted AND kind = 'message'
                             AND search @@ $4::tsquery), '{}')
                 FROM messages WHERE epoch_id = $1 AND seq >= $2 AND seq < $3"
            };
            let mut window = sqlx::query_as(sql)
                .bind(self.epoch_id)
                .bind(lo)
                .bind(hi)
                .bind(tsquery);
            if let Some(rooms) = &rooms {
                window = window.bind(rooms);
            }
            let (rows, hits): (i64, Vec<i64>) = window.fetch_one(&mut *tx).await?;
            let had = found.len();
            found.extend(hits.iter().copied().take(n - had));
            plan.saw(hi - lo, rows, hits.len() as i64);
            hi = lo;
            if found.len() >= n || hi <= first {
                return fetch_rows(&mut tx, self.epoch_id, &found).await;
            }
        }
        let rest = (n - found.len()) as i64;
        // The rooms in the index's query, or checked on each row it finds: whichever reads
        // less (see [`index_plan`]).
        let room_terms_pay = match room_rows(&plan) {
            Some(room_rows) => {
                let m = match matches {
                    Some(m) => m,
                    None => estimated_matches(&mut tx, tsquery).await?,
                };
                index_plan(m, Some(room_rows), self.room_terms_factor).0
            }
            None => false,
        };
        let (indexed, heap_rooms) = match rooms {
            Some(rooms) if room_terms_pay => {
                (format!("({tsquery}) & ({})", room_terms(&rooms)), None)
            }
            rooms => (tsquery.to_owned(), rooms),
        };
        sqlx::query(
            "SELECT set_config('enable_indexscan', 'off', true),
                    set_config('enable_seqscan', 'off', true)",
        )
        .execute(&mut *tx)
        .await?;
        // `IS TRUE` keeps the rooms a filter on the rows the text index finds: as an index
        // condition the planner would AND the bitmap of every message of those rooms with it,
        // the very cost that leaving the rooms out of the text query avoids.
        let older: Vec<i64> = sqlx::query_scalar(
            "SELECT seq FROM messages
             WHERE epoch_id = $1 AND search @@ $2::tsquery AND NOT deleted AND kind = 'message'
               AND seq < $3 AND ($4::text[] IS NULL OR (room = ANY($4)) IS TRUE)
             ORDER BY seq DESC
             LIMIT $5",
        )
        .bind(self.epoch_id)
        .bind(&indexed)
        .bind(hi)
        .bind(&heap_rooms)
        .bind(rest)
        .fetch_all(&mut *tx)
        .await?;
        found.extend(older);
        // Back to the server's settings for the rows: without index scans, each row's prev_seq
        // (the newest earlier seq of its room) became a bitmap scan of the room's every older
        // message (21 % of PostgreSQL's samples at 100 searches/s, docs/benchmarks.md).
        sqlx::query(
            "SELECT set_config(name, reset_val, true) FROM pg_settings
             WHERE name IN ('enable_indexscan', 'enable_seqscan')",
        )
        .execute(&mut *tx)
        .await?;
        fetch_rows(&mut tx, self.epoch_id, &found).await
    }
}

/// Most rows of the searched rooms a search reads newest first (in [`Spans`]) before it asks
/// the text index; `HISTORY_SEARCH_WINDOW`. About 1 µs a row on a quiet machine.
pub const DEFAULT_WINDOW: i64 = 8000;

/// Seqs of the epoch the first span covers (the rows it holds are those of the searched rooms).
const FIRST_SPAN: i64 = 2048;

/// Rows read without a match after which the terms count as rare: the index is then cheaper.
const PROBE_ROWS: i64 = 1000;

/// Most spans read before the index (a span sized from an empty one grows 16-fold).
const MAX_SPANS: usize = 6;

/// How far back the next span of [`Search::matching`] reaches: a pure plan from what the spans
/// before it read, so that the rows read stay within the budget and end where the matches seen
/// say the page is full, or early when the terms are too rare for reading rows to pay.
#[derive(Debug)]
struct Spans {
    /// Rows that may still be read.
    budget: i64,
    spans: usize,
    /// Seqs covered, rows read and matches among them, so far.
    seqs: i64,
    rows: i64,
    hits: i64,
    /// The last span's length in seqs.
    last: i64,
    /// Whether the budget was extended ([`Spans::extend`]), and the spans allowed.
    extended: bool,
    max_spans: usize,
}

impl Spans {
    fn new(budget: i64) -> Spans {
        Spans {
            budget: budget.max(1),
            spans: 0,
            seqs: 0,
            rows: 0,
            hits: 0,
            last: 0,
            extended: false,
            max_spans: MAX_SPANS,
        }
    }

    /// Rows the rest of the page (`missing` matches) takes at the density seen, and half again;
    /// None before any match.
    fn rows_to_fill(&self, missing: usize) -> Option<i64> {
        (self.hits > 0).then(|| (missing as i64).saturating_mul(self.rows) / self.hits * 3 / 2)
    }

    /// Allows `rows` more rows, and two more spans to read them in.
    fn extend(&mut self, rows: i64) {
        self.budget = self.budget.max(0) + rows.max(1);
        self.max_spans = self.spans + 2;
        self.extended = true;
    }

    /// Records a span read: its length in seqs, the rows it held and the matches among them.
    fn saw(&mut self, seqs: i64, rows: i64, hits: i64) {
        self.spans += 1;
        self.seqs += seqs;
        self.rows += rows;
        self.hits += hits;
        self.budget -= rows;
        self.last = seqs;
    }

    /// Rows of the searched rooms per seq of the epoch in what was read, if any was.
    fn rows_per_seq(&self) -> Option<f64> {
        (self.rows > 0 && self.seqs > 0).then(|| self.rows as f64 / self.seqs as f64)
    }

    /// The next span in seqs for `missing` more matches, or None: ask the index.
    fn next_span(&self, missing: usize) -> Option<i64> {
        if self.spans == 0 {
            // A quarter of the budget at most: room for spans sized by what this one sees.
            return Some((self.budget / 4).clamp(1, FIRST_SPAN));
        }
        if self.budget <= 0 || self.spans >= self.max_spans {
            return None;
        }
        if self.rows == 0 {
            // No row of these rooms yet: look 16 times further back.
            return Some(self.last.saturating_mul(16));
        }
        let rows = if self.hits == 0 {
            if self.rows >= PROBE_ROWS.min(self.budget + self.rows) {
                return None;
            }
            PROBE_ROWS - self.rows
        } else {
            match self.rows_to_fill(missing) {
                Some(need) if need <= self.budget => need,
                _ => return None,
            }
        };
        let rows = rows.clamp(1, self.budget);
        // Rows to seqs at the rate seen (rows per seq ≤ 1 when seqs are dense).
        Some((rows.saturating_mul(self.seqs) / self.rows).max(1))
    }
}

/// The rooms go into the index's query as lexemes unless the terms alone are estimated to match
/// fewer than 1 / this of the rows of those rooms (`HISTORY_SEARCH_ROOM_TERMS_FACTOR`): about
/// [`MATCH_ROW_COST`] / [`ROOM_ROW_COST`], what the two ways cost per row (see [`index_plan`]).
pub const DEFAULT_ROOM_TERMS_FACTOR: u32 = 10;

/// What the index costs per row of the searched rooms, when they are in its query and the
/// rarest term is more common than one room (GIN's scan is then driven by the rooms' posting
/// lists), relative to a row read in a span (~1 µs): 20-25 ms for 50 rooms of 1,000 messages
/// whatever the words (EXPLAIN ANALYZE on the benchmark's archive, docs/benchmarks.md "Search").
const ROOM_ROW_COST: f64 = 0.45;

/// What the index costs per row the terms match anywhere, when the rooms are checked on each
/// row, relative to a row read in a span: `w62 w4`, 1,738 rows, 10 ms (22 ms with the rooms);
/// `w3 -w1`, 119,708 rows, 127 ms (22 ms with them).
const MATCH_ROW_COST: f64 = 5.0;

/// How to ask the index for the terms' `matches` (PostgreSQL's estimate) when the searched rooms
/// hold `room_rows` rows (None: the rooms cannot be lexemes of the query): with the rooms as
/// lexemes or not, and what it is expected to cost in rows read in a span.
fn index_plan(matches: f64, room_rows: Option<f64>, factor: f64) -> (bool, f64) {
    match room_rows {
        Some(rows) if matches * factor > rows => (true, rows * ROOM_ROW_COST),
        _ => (false, matches * MATCH_ROW_COST),
    }
}

/// PostgreSQL's estimate of the rows `tsquery` matches in the whole archive (its planner's, from
/// the column's lexeme statistics): one planning, no execution. The top plan node's `rows=` of
/// EXPLAIN's text; unknown (the plan's text not as expected) counts as too many to leave the
/// rooms out.
pub async fn estimated_matches(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    tsquery: &str,
) -> Result<f64, sqlx::Error> {
    let plan: Vec<String> =
        sqlx::query_scalar("EXPLAIN SELECT 1 FROM messages WHERE search @@ $1::tsquery")
            .bind(tsquery)
            .fetch_all(&mut **tx)
            .await?;
    Ok(plan.first().and_then(|l| plan_rows(l)).unwrap_or(f64::MAX))
}

/// The `rows=N` estimate of one line of EXPLAIN's text output.
fn plan_rows(line: &str) -> Option<f64> {
    let (_, after) = line.split_once(" rows=")?;
    after
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

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
    fn plan_rows_reads_the_estimate_of_explains_text() {
        let line = "Bitmap Heap Scan on messages  (cost=40.62..5334.56 rows=1628 width=16)";
        assert_eq!(plan_rows(line), Some(1628.0));
        assert_eq!(
            plan_rows("Seq Scan on messages  (cost=0.00..1.01 rows=1 width=4)"),
            Some(1.0)
        );
        assert_eq!(plan_rows("Result  (cost=0.00..0.01 width=4)"), None);
        assert_eq!(plan_rows("  rows=x"), None);
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

    #[test]
    fn spans_read_as_far_as_the_density_seen_says_the_page_needs() {
        let mut plan = Spans::new(8192);
        assert_eq!(plan.next_span(21), Some(FIRST_SPAN));
        // 100 rows of the user's rooms in the first 2048 seqs, 7 matches: 14 more need
        // 14 * 100 / 7 * 1.5 = 300 rows, 6144 seqs at that rate.
        plan.saw(2048, 100, 7);
        assert_eq!(plan.next_span(14), Some(6144));
    }

    #[test]
    fn rare_terms_go_to_the_index_after_the_probe_or_when_the_budget_would_not_do() {
        let mut plan = Spans::new(8000);
        plan.saw(2048, 100, 0);
        // No match yet: read up to PROBE_ROWS rows in all.
        assert_eq!(plan.next_span(21), Some((PROBE_ROWS - 100) * 2048 / 100));
        plan.saw(18_432, 900, 0);
        assert_eq!(plan.next_span(21), None, "1000 rows, no match: the index");
        // One match in 1000 rows: 20 more would take 30,000 rows, over the budget.
        let mut plan = Spans::new(8000);
        plan.saw(20_480, 1000, 1);
        assert_eq!(plan.next_span(20), None);
    }

    #[test]
    fn an_extended_budget_reads_on_in_at_most_two_more_spans() {
        let mut plan = Spans::new(8000);
        plan.saw(20_480, 8000, 16);
        // 5 more at 500 rows a match, and half again: 3,750 rows, over the budget.
        assert_eq!(plan.next_span(5), None);
        assert_eq!(plan.rows_to_fill(5), Some(3750));
        plan.extend(3750);
        assert_eq!(plan.next_span(5), Some(3750 * 20_480 / 8000));
        // Fewer rows than expected in the first (1,000), one more match: the 2 still missing
        // take 1,588 rows, within the 2,750 left.
        plan.saw(2560, 1000, 1);
        assert!(plan.next_span(2).is_some(), "the second of two more spans");
        plan.saw(100, 10, 0);
        assert_eq!(plan.next_span(2), None, "two spans past the extension");
        assert_eq!(
            Spans::new(10).rows_to_fill(5),
            None,
            "no match seen: no estimate"
        );
    }

    #[test]
    fn the_index_is_asked_for_the_rooms_when_the_terms_are_not_much_rarer() {
        let f = f64::from(DEFAULT_ROOM_TERMS_FACTOR);
        // 50 rooms of 1,000 messages: words matching 1,738 rows anywhere go without the rooms.
        assert_eq!(
            index_plan(1738.0, Some(50_000.0), f),
            (false, 1738.0 * MATCH_ROW_COST)
        );
        assert_eq!(
            index_plan(119_070.0, Some(50_000.0), f),
            (true, 50_000.0 * ROOM_ROW_COST)
        );
        // The rooms cannot be lexemes (too many, a trusted search, or factor 0).
        assert!(!index_plan(119_070.0, None, f).0);
        assert!(!index_plan(119_070.0, Some(50_000.0), 0.0).0);
        // No row of the rooms seen: few rows, the rooms go in.
        assert!(index_plan(1.0, Some(0.0), f).0);
    }

    #[test]
    fn spans_stay_within_the_budget_and_grow_over_empty_ones() {
        let mut plan = Spans::new(40);
        assert_eq!(
            plan.next_span(20),
            Some(10),
            "a quarter of the budget first"
        );
        plan.saw(10, 10, 8);
        assert_eq!(plan.next_span(15), Some(27), "15 * 10 / 8 * 1.5 rows");
        plan.saw(27, 27, 2);
        assert_eq!(plan.next_span(5), None, "27 rows needed, 3 left");
        assert_eq!(Spans::new(3).next_span(20), Some(1));
        let mut plan = Spans::new(8000);
        plan.saw(2048, 0, 0);
        assert_eq!(
            plan.next_span(20),
            Some(2048 * 16),
            "no row of these rooms yet"
        );
        for _ in 1..MAX_SPANS {
            plan.saw(10, 0, 0);
        }
        assert_eq!(plan.next_span(20), None, "at most MAX_SPANS spans");
    }
}
