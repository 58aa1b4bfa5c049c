//! PostgreSQL pools: each service keeps its tables in a schema of its own, so several services
//! can share one database and each applies its own migrations.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::admin::ReadinessCheck;

/// A lazily connecting pool whose connections use `schema` (created by [`prepare`]).
pub fn pool(url: &str, schema: &'static str, max: u32) -> Result<PgPool, sqlx::Error> {
    let opts = PgConnectOptions::from_str(url)?.options([("search_path", schema)]);
    Ok(PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(3))
        .connect_lazy_with(opts))
}

/// Creates the schema and applies the migrations.
pub async fn prepare(
    pool: &PgPool,
    schema: &'static str,
    migrator: &sqlx::migrate::Migrator,
) -> Result<(), sqlx::Error> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE SCHEMA IF NOT EXISTS {schema}"
    )))
    .execute(pool)
    .await?;
    migrator.run(pool).await?;
    Ok(())
}

/// A readiness check that passes while PostgreSQL answers `SELECT 1`.
pub fn ready(pool: PgPool) -> ReadinessCheck {
    Arc::new(move || {
        let pool = pool.clone();
        Box::pin(async move {
            match tokio::time::timeout(
                Duration::from_secs(2),
                sqlx::query("SELECT 1").execute(&pool),
            )
            .await
            {
                Ok(Ok(_)) => Ok(()),
                _ => Err("postgres unreachable".into()),
            }
        })
    })
}

/// Both checks must pass.
pub fn all(checks: Vec<ReadinessCheck>) -> ReadinessCheck {
    Arc::new(move || {
        let futs: Vec<_> = checks.iter().map(|c| c()).collect();
        Box::pin(async move {
            for f in futs {
                f.await?;
            }
            Ok(())
        })
    })
}
