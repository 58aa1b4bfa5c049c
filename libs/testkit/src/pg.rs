//! A fresh PostgreSQL database per test, on the cluster named by `CHAT_TEST_DATABASE_URL`
//! (the test command, `scripts/test`, starts a throwaway cluster and sets it).

use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::Connection;

/// Creates an empty database and returns its URL.
pub async fn fresh_database() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let admin = std::env::var("CHAT_TEST_DATABASE_URL").expect(
        "CHAT_TEST_DATABASE_URL is not set: run the tests with scripts/test, which starts a throwaway PostgreSQL",
    );
    let name = format!(
        "chat_test_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        rand::random::<u32>()
    );
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("connect to the test PostgreSQL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let _ = conn.close().await;
    match admin.rfind('/') {
        Some(idx) if !admin[idx + 1..].contains('@') => {
            let (base, rest) = admin.split_at(idx + 1);
            let query = rest.find('?').map(|q| &rest[q..]).unwrap_or("");
            format!("{base}{name}{query}")
        }
        _ => format!("{}/{name}", admin.trim_end_matches('/')),
    }
}
