//! search-bench: search latency over a large archive, and what the search index costs the
//! archive writer (issue 14). On a whole stack in this process (nats-server, PostgreSQL,
//! chat-history; chat-notify is stopped so that it does not compete with the archive writer).
//!
//! ```sh
//! export CHAT_TEST_DATABASE_URL=$(scripts/pg-temp /tmp/pg-bench)
//! cargo run --release -p chat-tests --example search-bench -- [messages=1000000] [rooms=1000] \
//!     [user_rooms=50] [rate=100] [seconds=30] [archive_events=200000]
//! ```
//! (`scripts/bench search` runs it so.)
//!
//! 1. Load: `messages` rows straight into `history.messages` with one `INSERT … SELECT` over
//!    `generate_series` (the GIN index is dropped for the load and built afterwards), in `rooms`
//!    rooms, 10 members each; the user `bench` is a member of `user_rooms` of them, spread over
//!    the range. Bodies are 4 to 12 words drawn Zipf (s = 1) from 20,000 (`w0` is ~7% of all
//!    words and in ~40% of the bodies, `w10000` in ~80 bodies per million), seqs above 10^12 so
//!    the stream's own never meet them.
//! 2. Search: `rate` searches per second for `seconds`, open loop (each is sent at its planned
//!    time, whether the earlier ones have been answered or not; latency is measured from the
//!    planned time, so a stall is not hidden), through `chat.api.search` with `user: bench` over
//!    NATS to the chat-history of this process (not through chat-edge). Query mix ([`CLASSES`]):
//!    a common word (Zipf head), a rare word, two words, a two-word phrase, a word minus a common
//!    word, and one word limited to one of the user's rooms; p50/p99 per class and overall.
//! 3. Archive: with the archive writer stopped, `archive_events` messages are published to the
//!    stream; then a writer starts and the time until all are archived gives rows/s. With the
//!    index (generated column + GIN), without (both dropped), and with it again (rebuilt), in the
//!    same run; the ratio compares the mean of the two runs with the index to the one without.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_bus::api::{SearchReply, SearchRequest};
use chat_bus::event::RoomEvent;
use chat_bus::subjects;
use chat_proto::{RoomId, UserId};
use chat_tests::Stack;
use tokio::sync::Mutex;

const VOCABULARY: u64 = 20_000;
const SEQ_BASE: i64 = 1_000_000_000_000;

fn arg(n: usize, default: usize) -> usize {
    std::env::args()
        .nth(n)
        .and_then(|a| a.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// A small deterministic generator (xorshift), so runs search the same queries.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// A word with the bodies' distribution: Zipf (s = 1) over the vocabulary, rank
    /// `floor(VOCABULARY^u) - 1` (the continuous inverse of its CDF; what the SQL of the load
    /// computes too): `w0` is ~7% of all words, `w100` ~0.01%, `w10000` ~80 in a million bodies.
    fn word(&mut self) -> String {
        format!("w{}", self.rank(VOCABULARY))
    }
    fn rank(&mut self, below: u64) -> u64 {
        let r = ((self.unit() * (below as f64).ln()).exp() as u64).saturating_sub(1);
        r.min(below - 1)
    }
    /// A common word: the Zipf head (rank < 100), as often as the bodies have them.
    fn common(&mut self) -> String {
        format!("w{}", self.rank(100))
    }
    /// A rare word: uniform over ranks 5,000..VOCABULARY (a few dozen bodies each per million).
    fn rare(&mut self) -> String {
        format!("w{}", 5000 + self.next() % (VOCABULARY - 5000))
    }
}

/// The query mix: (class, share in percent). Words are drawn like the bodies' (Zipf) unless the
/// class says otherwise; "room-limited" passes `room` (one of the user's rooms).
const CLASSES: [(&str, u32); 6] = [
    ("common word", 25),
    ("rare word", 20),
    ("two words", 15),
    ("phrase", 15),
    ("exclusion", 15),
    ("room-limited", 10),
];

fn pick_class(rng: &mut Rng) -> Option<usize> {
    let mut x = (rng.next() % 100) as u32;
    for (i, c) in CLASSES.iter().enumerate() {
        if x < c.1 {
            return Some(i);
        }
        x -= c.1;
    }
    None
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let messages = arg(1, 1_000_000) as i64;
    let rooms = arg(2, 1000).max(1) as i64;
    let user_rooms = (arg(3, 50) as i64).min(rooms);
    let rate = arg(4, 100).max(1);
    let seconds = arg(5, 30).max(1);
    let archive_events = arg(6, 200_000);
    println!(
        "search-bench: {messages} messages in {rooms} rooms, a user in {user_rooms}; {rate} searches/s for {seconds} s; {archive_events} events archived per variant"
    );

    let mut stack = Stack::start_with(&[("HISTORY_ARCHIVE", "false")]).await;
    if let Some(notify) = stack.notifies.pop() {
        notify.shutdown().await;
    }
    let db = stack.db().await;
    let (epoch_id,): (i32,) = sqlx::query_as("SELECT max(id) FROM history.epochs")
        .fetch_one(&db)
        .await
        .expect("epoch");

    // 1. Load.
    let started = Instant::now();
    sqlx::query(
        "INSERT INTO history.rooms (id, kind, created_by, created_at)
         SELECT 'room-' || r, 'public', 'm0', 0 FROM generate_series(0, $1 - 1) r",
    )
    .bind(rooms)
    .execute(&db)
    .await
    .expect("rooms");
    sqlx::query(
        "INSERT INTO history.memberships (room, user_id, joined_at)
         SELECT 'room-' || r, 'm' || k, 0 FROM generate_series(0, $1 - 1) r, generate_series(0, 9) k",
    )
    .bind(rooms)
    .execute(&db)
    .await
    .expect("members");
    // The user's rooms spread over the whole range.
    sqlx::query(
        "INSERT INTO history.memberships (room, user_id, joined_at)
         SELECT 'room-' || (i * ($1 / $2)), 'bench', 0 FROM generate_series(0, $2 - 1) i",
    )
    .bind(rooms)
    .bind(user_rooms)
    .execute(&db)
    .await
    .expect("bench user");
    // SEARCH_INDEX_OPTS (e.g. "fastupdate = off"): storage options to try on the index before it
    // is built, to measure a setting before a migration makes it the default.
    if let Ok(opts) = std::env::var("SEARCH_INDEX_OPTS")
        && !opts.trim().is_empty()
    {
        println!("index options tried: {opts}");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER INDEX history.messages_search SET ({opts})"
        )))
        .execute(&db)
        .await
        .expect("SEARCH_INDEX_OPTS");
    }
    // The index as the migrations made it (storage options included), to build it back the same.
    let (index_def,): (String,) =
        sqlx::query_as("SELECT pg_get_indexdef('history.messages_search'::regclass)")
            .fetch_one(&db)
            .await
            .expect("the search index's definition");
    sqlx::query("DROP INDEX history.messages_search")
        .execute(&db)
        .await
        .expect("drop index for the load");
    sqlx::query("SET jit = off").execute(&db).await.ok();
    sqlx::query("SELECT setseed(0.42)")
        .execute(&db)
        .await
        .expect("seed");
    sqlx::query(
        "INSERT INTO history.messages (epoch_id, seq, room, sender, body, client_id, ts)
         SELECT $1, $2 + g, 'room-' || (g % $3), 'm' || (g % 10),
                (SELECT string_agg('w' || (floor(exp(random() * ln($4::float8)))::int - 1), ' ')
                 FROM generate_series(1, 4 + (g % 9)) w WHERE g > 0),
                'c' || g, 1764626400000 + g
         FROM generate_series(1, $5) g",
    )
    .bind(epoch_id)
    .bind(SEQ_BASE)
    .bind(rooms)
    .bind(VOCABULARY as i64)
    .bind(messages)
    .execute(&db)
    .await
    .expect("load messages");
    let loaded = started.elapsed();
    let t = Instant::now();
    sqlx::query("SET maintenance_work_mem = '256MB'")
        .execute(&db)
        .await
        .ok();
    sqlx::query(sqlx::AssertSqlSafe(index_def.clone()))
        .execute(&db)
        .await
        .expect("build the index");
    let indexed = t.elapsed();
    sqlx::query("ANALYZE history.messages")
        .execute(&db)
        .await
        .expect("analyze");
    let (size,): (String,) =
        sqlx::query_as("SELECT pg_size_pretty(pg_relation_size('history.messages_search'))")
            .fetch_one(&db)
            .await
            .expect("index size");
    println!(
        "load: {messages} rows in {:.1} s, GIN index built in {:.1} s ({size})",
        loaded.as_secs_f64(),
        indexed.as_secs_f64()
    );

    // SEARCH_BENCH_HOLD=1: wait for a line on stdin with the archive loaded, to look at a
    // query's plan by hand (`EXPLAIN ANALYZE`) on the same data.
    if std::env::var_os("SEARCH_BENCH_HOLD").is_some() {
        println!(
            "holding with the archive loaded: psql {} (schema history); Enter goes on",
            stack.db_url
        );
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    }

    // 2. Search at a fixed rate.
    let nats = stack.nats.client().await;
    let user = UserId::new("bench").expect("user id");
    let step = (rooms / user_rooms.max(1)).max(1);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let total = rate * seconds;
    // (class, latency, results, query) of each answered search.
    let answers = Arc::new(Mutex::new(
        Vec::<(usize, Duration, usize, String)>::with_capacity(total),
    ));
    let errors = Arc::new(Mutex::new(0usize));
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let planned = start + period * i as u32;
        let class = pick_class(&mut rng).unwrap_or(0);
        let mut room = None;
        let query = match CLASSES[class].0 {
            "common word" => rng.common(),
            "rare word" => rng.rare(),
            "two words" => format!("{} {}", rng.word(), rng.word()),
            "phrase" => format!("\"{} {}\"", rng.word(), rng.word()),
            "exclusion" => format!("{} -{}", rng.word(), rng.common()),
            _ => {
                let r = (rng.next() % user_rooms.max(1) as u64) as i64 * step;
                room = Some(RoomId::new(format!("room-{r}")).expect("room id"));
                rng.word()
            }
        };
        let req = SearchRequest {
            query,
            user: Some(user.clone()),
            room,
            limit: None,
            before: None,
        };
        let (nats, answers, errors) = (nats.clone(), answers.clone(), errors.clone());
        tokio::time::sleep_until(planned).await;
        tasks.push(tokio::spawn(async move {
            let reply: Result<SearchReply, _> = chat_bus::rpc::request_on(
                &nats,
                subjects::API_SEARCH,
                &req,
                Duration::from_secs(10),
            )
            .await;
            let took = planned.elapsed();
            match reply {
                Ok(r) => answers
                    .lock()
                    .await
                    .push((class, took, r.results.len(), req.query)),
                Err(e) => {
                    eprintln!("search {:?}: {e}", req.query);
                    *errors.lock().await += 1;
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let answers = answers.lock().await.clone();
    let errors = *errors.lock().await;
    let mut table = vec![format!(
        "| query class | share | searches | results (mean) | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|---|---|"
    )];
    let mut row = |name: &str, share: String, of: Vec<&(usize, Duration, usize, String)>| {
        let mut lat: Vec<Duration> = of.iter().map(|a| a.1).collect();
        lat.sort_unstable();
        let results = of.iter().map(|a| a.2).sum::<usize>() as f64 / of.len().max(1) as f64;
        table.push(format!(
            "| {name} | {share} | {} | {results:.1} | {:.2} | {:.2} | {:.2} |",
            of.len(),
            ms(percentile(&lat, 0.50)),
            ms(percentile(&lat, 0.99)),
            ms(percentile(&lat, 1.0)),
        ));
        (percentile(&lat, 0.50), percentile(&lat, 0.99))
    };
    for (c, (name, share)) in CLASSES.iter().enumerate() {
        row(
            name,
            format!("{share}%"),
            answers.iter().filter(|a| a.0 == c).collect(),
        );
    }
    let (p50, p99) = row("**all**", "100%".into(), answers.iter().collect());
    let search_table = table.join("\n");
    println!(
        "search: {} of {total} answered at {rate}/s for {seconds} s ({errors} errors); p50 {:.2} ms, p99 {:.2} ms (goal p99 <= 50 ms)\n{search_table}",
        answers.len(),
        ms(p50),
        ms(p99),
    );

    // The slowest searches, to look at by hand (SEARCH_BENCH_HOLD).
    let mut slowest: Vec<&(usize, Duration, usize, String)> = answers.iter().collect();
    slowest.sort_by_key(|a| std::cmp::Reverse(a.1));
    for a in slowest.iter().take(10) {
        println!(
            "  slow: {:.2} ms, {} results, {}: {:?}",
            ms(a.1),
            a.2,
            CLASSES[a.0].0,
            a.3
        );
    }

    // 3. Archive rows/s with the index, then without.
    let with = archive_rate(&mut stack, &db, "with", archive_events, rooms).await;
    // The column's expression as the migrations made it, to add it back the same.
    let (expression,): (String,) = sqlx::query_as(
        "SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d
         JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
         WHERE d.adrelid = 'history.messages'::regclass AND a.attname = 'search'",
    )
    .fetch_one(&db)
    .await
    .expect("the index column's expression");
    sqlx::query("ALTER TABLE history.messages DROP COLUMN search")
        .execute(&db)
        .await
        .expect("drop the index column");
    let without = archive_rate(&mut stack, &db, "without", archive_events, rooms).await;
    // With the index again (rebuilt, untimed), so that drift of a shared machine over the run
    // weighs on both sides: the ratio uses the mean of the two runs with the index.
    // The expression is the migrations' own, read back from the catalogue above.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE history.messages ADD COLUMN search tsvector
         GENERATED ALWAYS AS ({expression}) STORED"
    )))
    .execute(&db)
    .await
    .expect("add the index column again");
    sqlx::query(sqlx::AssertSqlSafe(index_def))
        .execute(&db)
        .await
        .expect("build the index again");
    let again = archive_rate(&mut stack, &db, "again-with", archive_events, rooms).await;
    let mean = (with + again) / 2.0;
    let ratio = mean / without;
    println!(
        "archive: {mean:.0} rows/s with the search index (mean of 2 runs), {without:.0} rows/s without: ratio {ratio:.2} (goal >= 0.80)"
    );

    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "\n## summary (markdown)\n\n\
         Archive: {messages} messages in {rooms} rooms (bodies of 4-12 words, Zipf s=1 over {VOCABULARY} words), \
         filled in {:.1} s + GIN index built in {:.1} s ({size}). \
         Searcher: a member of {user_rooms} rooms; `chat.api.search` with `user` over NATS to chat-history \
         (in the bench's process, {} build), open loop at {rate}/s for {seconds} s. \
         NATS: nats-server's default (lazy) fsync; it matters only to the archive runs' publishing, which is untimed.\n\n\
         {search_table}\n\n\
         | archive writer (stream -> PostgreSQL, {archive_events} rows per run) | rows/s |\n|---|---|\n\
         | with the search index (1st run) | {with:.0} |\n\
         | without it (column and GIN index dropped) | {without:.0} |\n\
         | with it again (rebuilt) | {again:.0} |\n\
         | **ratio** (mean of the two with / without) | **{ratio:.2}** |\n\n\
         Goals: search p99 {:.1} ms <= 50 ms at 100/s: {}; archive ratio {ratio:.2} >= 0.80: {}.",
        loaded.as_secs_f64(),
        indexed.as_secs_f64(),
        if cfg!(debug_assertions) {
            "DEBUG"
        } else {
            "release"
        },
        ms(p99),
        verdict(rate >= 100 && ms(p99) <= 50.0),
        verdict(ratio >= 0.8),
    );
}

/// Publishes `n` events to the stream while no writer runs, then starts one and returns the rows
/// per second it archived them at.
async fn archive_rate(
    stack: &mut Stack,
    db: &sqlx::PgPool,
    label: &str,
    n: usize,
    rooms: i64,
) -> f64 {
    let js = async_nats::jetstream::new(stack.nats.client().await);
    let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ label.len() as u64);
    let mut acks = std::collections::VecDeque::new();
    for i in 0..n {
        let room = RoomId::new(format!("room-{}", i as i64 % rooms)).expect("room id");
        let words = 4 + (i % 9);
        let body = (0..words).map(|_| rng.word()).collect::<Vec<_>>().join(" ");
        let event = RoomEvent::message(
            room.clone(),
            UserId::new("m1").expect("user id"),
            body,
            format!("{label}-{i}"),
            chat_bus::now_ms(),
        );
        let payload = serde_json::to_vec(&event).expect("json");
        let ack = js
            .publish(subjects::room_msg(&room), payload.into())
            .await
            .expect("publish");
        acks.push_back(ack);
        if acks.len() >= 512
            && let Some(a) = acks.pop_front()
        {
            a.await.expect("PubAck");
        }
    }
    for a in acks {
        a.await.expect("PubAck");
    }
    let stream = js.get_stream(subjects::STREAM).await.expect("CHAT stream");
    let last = stream
        .get_info()
        .await
        .expect("stream info")
        .state
        .last_sequence;
    let started = Instant::now();
    stack.add_history_with(&[("HISTORY_ARCHIVE", "true")]).await;
    // Done when the writer's consumer has acknowledged (= committed) everything up to `last`.
    loop {
        if let Ok(info) = stream.consumer_info(subjects::HISTORY_CONSUMER).await
            && info.ack_floor.stream_sequence >= last
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    let (rows,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM history.messages WHERE client_id LIKE $1")
            .bind(format!("{label}-%"))
            .fetch_one(db)
            .await
            .expect("count");
    assert_eq!(rows, n as i64, "every event archived once");
    if let Some(writer) = stack.histories.pop() {
        writer.shutdown().await;
    }
    let rate = n as f64 / took.as_secs_f64();
    println!(
        "archive ({label} the index): {n} rows in {:.2} s = {rate:.0} rows/s",
        took.as_secs_f64()
    );
    rate
}
