//! PostgreSQL pools: each service keeps its tables in a schema of its own, so several services
//! can share one database and each applies its own migrations.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
pub use sqlx::migrate::Migrator;
use sqlx::migrate::{Migration, MigrationType};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::admin::ReadinessCheck;

/// How long one statement may run unless `DATABASE_URL` says otherwise: a query that the
/// database cannot answer in time fails (and frees its connection) instead of holding a pool
/// slot and a request for as long as PostgreSQL takes.
pub const DEFAULT_STATEMENT_TIMEOUT: &str = "5s";

/// A lazily connecting pool whose connections use `schema` (created by [`prepare`]). Every
/// connection has a `statement_timeout`: [`DEFAULT_STATEMENT_TIMEOUT`], or the one the URL's
/// `options` parameter sets (`?options=-c%20statement_timeout%3D10s`; `0` turns it off).
pub fn pool(url: &str, schema: &'static str, max: u32) -> Result<PgPool, sqlx::Error> {
    let opts = PgConnectOptions::from_str(url)?;
    let has_timeout = opts
        .get_options()
        .is_some_and(|o| o.contains("statement_timeout"));
    let mut opts = opts.options([("search_path", schema)]);
    if !has_timeout {
        opts = opts.options([("statement_timeout", DEFAULT_STATEMENT_TIMEOUT)]);
    }
    Ok(PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(3))
        .connect_lazy_with(opts))
}

/// A service's migrations compiled into its binary: `(version, description, SQL)` as sqlx reads
/// `<version>_<description>.sql` from a migrations folder (same checksums, so a database migrated
/// either way is the same to both). What `sqlx::migrate!` does, without sqlx's proc-macro crate,
/// which compiles a second sqlx, tokio and rustls for the host: about a tenth of a from-scratch
/// build. [`embedded_migrations!`] also makes the unit test that holds the list to the folder.
pub fn embedded(files: &[(i64, &'static str, &'static str)]) -> Migrator {
    use sqlx::SqlSafeStr as _;
    Migrator::with_migrations(
        files
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    description.into(),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    sql.starts_with("-- no-transaction"),
                )
            })
            .collect(),
    )
}

/// A service's `static` [`Migrator`] of the migrations in `migrations/` beside its Cargo.toml,
/// compiled in ([`embedded`]), and its unit test `migrations_are_the_folder`, which holds the
/// list to the folder ([`check_embedded`]). Each migration is `(version, description, file)`.
#[macro_export]
macro_rules! embedded_migrations {
    ($name:ident: $(($version:literal, $description:literal, $file:literal)),+ $(,)?) => {
        static $name: ::std::sync::LazyLock<$crate::db::Migrator> =
            ::std::sync::LazyLock::new(|| {
                $crate::db::embedded(&[$((
                    $version,
                    $description,
                    include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/", $file)),
                )),+])
            });

        #[cfg(test)]
        #[tokio::test]
        async fn migrations_are_the_folder() {
            let dir = ::std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
            assert_eq!($crate::db::check_embedded(&$name, &dir).await, Ok(()));
        }
    };
}

/// Whether `embedded` holds exactly the migrations of the folder `dir` (versions,
/// descriptions, kinds, checksums): the one thing [`embedded`] cannot check by itself.
pub async fn check_embedded(embedded: &Migrator, dir: &std::path::Path) -> Result<(), String> {
    let on_disk = Migrator::new(dir).await.map_err(|e| e.to_string())?;
    let key = |m: &Migration| {
        (
            m.version,
            m.description.to_string(),
            m.migration_type,
            m.checksum.to_vec(),
            m.no_tx,
        )
    };
    let want: Vec<_> = on_disk.iter().map(key).collect();
    let have: Vec<_> = embedded.iter().map(key).collect();
    if want == have {
        Ok(())
    } else {
        let names = |m: &Migrator| {
            m.iter()
                .map(|m| format!("{} {}", m.version, m.description))
                .collect::<Vec<_>>()
        };
        Err(format!(
            "the embedded migrations differ from {}: embedded {:?}, on disk {:?} (same names: a file changed)",
            dir.display(),
            names(embedded),
            names(&on_disk)
        ))
    }
}

/// Creates the schema and applies the migrations, on one connection without a statement
/// timeout (a migration building an index over a large table may take long; requests may not).
pub async fn prepare(
    pool: &PgPool,
    schema: &'static str,
    migrator: &Migrator,
) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SET statement_timeout = 0")
        .execute(&mut *conn)
        .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE SCHEMA IF NOT EXISTS {schema}"
    )))
    .execute(&mut *conn)
    .await?;
    let migrated = migrator.run(&mut *conn).await;
    // Back to the connection's own timeout before it returns to the pool.
    sqlx::query("RESET statement_timeout")
        .execute(&mut *conn)
        .await?;
    migrated?;
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

/// Maps a database failure to what a requester may see: `unavailable` when PostgreSQL cannot be
/// reached or is going away (retry later), `internal` for a failure of the query itself. The
/// detail goes to the log only.
pub fn db_error(e: sqlx::Error) -> chat_bus::api::ApiError {
    use chat_bus::api::ApiError;
    let internal = match &e {
        // SQLSTATE 08 (connection exception), 57P (operator intervention: shutting down),
        // 53 (insufficient resources) are outages; any other refusal is the query's own.
        sqlx::Error::Database(db) => !db
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P") || c.starts_with("53")),
        sqlx::Error::RowNotFound
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Encode(_)
        | sqlx::Error::Decode(_) => true,
        _ => false,
    };
    if internal {
        tracing::error!(error = %e, "database error");
        ApiError::internal()
    } else {
        tracing::warn!(error = %e, "postgres unavailable");
        ApiError::unavailable()
    }
}

/// A pool of `schema` (see [`pool`]) once its migrations are applied, waiting for PostgreSQL
/// as long as it is down (or until `shutdown`).
pub async fn migrated(
    url: &str,
    schema: &'static str,
    max: u32,
    migrator: &Migrator,
    shutdown: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<PgPool> {
    use anyhow::Context as _;
    let pool = pool(url, schema, max).context("DATABASE_URL")?;
    crate::retry::at_start("apply migrations", shutdown, || {
        prepare(&pool, schema, migrator)
    })
    .await?;
    Ok(pool)
}
